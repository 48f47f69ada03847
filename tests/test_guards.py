"DivergenceGuard on healthy runs that fastai lets run (issues #10, #11): each test failed with the guard before the fix"
import contextlib, io, math, os
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
torch.set_num_threads(1)
from fastai.vision.all import Callback, CrossEntropyLossFlat, DataLoaders, resnet18, set_seed, vision_learner
from finetune_nb.guards import DivergenceGuard
from finetune_nb.test_utils import tiny_learner

def small_images(seed:int, n:int=36, size:int=32) -> DataLoaders:
    "36 small random images, two classes told apart by their mean (memorised within a few epochs)"
    g = torch.Generator().manual_seed(seed)
    def ds(n):
        x = torch.randn(n, 3, size, size, generator=g)
        return list(zip(x, (x[:,0].mean((1,2)) > 0).long()))
    dls = DataLoaders.from_dsets(ds(n), ds(12), bs=8, num_workers=0)
    dls.c = 2
    return dls

def weights(learn): return {k:v.detach().clone() for k,v in learn.model.state_dict().items()}

def test_fit_then_fine_tune_resnet18():
    "fit(3) then fine_tune(1): the jump when the body unfreezes is not a divergence (seed 1 was aborted at batch 1)"
    set_seed(1)
    learn = vision_learner(small_images(1), resnet18, pretrained=False, loss_func=CrossEntropyLossFlat(), n_out=2, cbs=DivergenceGuard())
    out = io.StringIO()
    with contextlib.redirect_stdout(out), learn.no_bar():
        learn.fit(3)
        learn.fine_tune(1)
    assert learn.diverged is None, learn.diverged
    assert 'diverged' not in out.getvalue()
    assert len(learn.recorder.values) == 1 and all(math.isfinite(v) for v in learn.recorder.values[-1][:2])  # the unfrozen fit ran to its end

class InfValid(Callback):
    "The loss is infinite on the validation items from epoch `start` on; the weights are untouched"
    order,run_train = 45,False
    def __init__(self, start:int): self.start = start
    def after_loss(self):
        if self.epoch >= self.start: self.learn.loss = self.learn.loss + float('inf')

class AtEpochEnd(Callback):
    order = 60
    def after_epoch(self): self.w = weights(self.learn)

def test_inf_valid_loss_keeps_training():
    "An infinite validation loss after good training keeps the trained weights, goes on, and says so"
    learn,guard,at = tiny_learner(),DivergenceGuard(),AtEpochEnd()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), learn.no_bar(): learn.fit(3, 1e-2, cbs=[InfValid(2), guard, at])
    assert learn.diverged is None and len(learn.recorder.values) == 3
    assert all(torch.equal(v, at.w[k]) for k,v in learn.model.state_dict().items())  # the last epoch's weights, not loaded back
    assert len(guard.notes) == 1 and 'kept the weights and went on' in out.getvalue()

class ExpFinder(Callback):
    "A user-defined LR range test: the rate grows tenfold every 4 batches until the loss blows up"
    def before_batch(self):
        if self.training: self.opt.set_hypers(lr=1e-3 * 10**(self.train_iter/4))

def test_range_tests_untouched():
    "fastai's lr_find and a user-defined finder run past the divergence; nothing is loaded back or printed"
    learn = tiny_learner(cbs=DivergenceGuard())
    out = io.StringIO()
    with contextlib.redirect_stdout(out), learn.no_bar(): learn.lr_find(end_lr=1e4, num_it=16, stop_div=False, show_plot=False)
    assert getattr(learn, 'diverged', None) is None and 'diverged' not in out.getvalue()
    learn = tiny_learner(cbs=DivergenceGuard())
    with contextlib.redirect_stdout(out), learn.no_bar(), learn.no_logging(): learn.fit(6, 1e-3, cbs=[ExpFinder(), at := AtEpochEnd()])
    assert getattr(learn, 'diverged', None) is None and len(learn.recorder.values) == 6
    assert all(torch.equal(v, at.w[k]) for k,v in learn.model.state_dict().items() if v.is_floating_point() and v.isfinite().all())

def test_silent_under_no_logging():
    "Inside `learn.no_logging()` the guard prints nothing; `learn.diverged` still records what happened"
    learn,out = tiny_learner(),io.StringIO()
    with contextlib.redirect_stdout(out), learn.no_bar(), learn.no_logging(): learn.fit(2, 1e10, cbs=DivergenceGuard())
    assert learn.diverged is not None and out.getvalue() == ''

class BreakBN(Callback):
    order = 60
    def after_batch(self):
        if self.training and self.epoch == 1: self.learn.model.features[1].running_var[0] = float('inf')

def test_nonfinite_batchnorm_buffers_reported():
    "A BatchNorm running_var that became infinite (training loss still finite) is reported by name; good buffers are loaded back"
    learn = tiny_learner()
    with learn.no_bar(), learn.no_logging(): learn.fit(3, 1e-3, cbs=[BreakBN(), DivergenceGuard()])
    d = learn.diverged
    assert d is not None and (d.kind, d.epoch, d.names) == ('buffers', 1, ['features.1.running_var']), d
    assert 'features.1.running_var' in d.message and torch.isfinite(learn.model.features[1].running_var).all()

class CountingGuard(DivergenceGuard):
    def _keep(self, when):
        self.kept = getattr(self, 'kept', 0) + 1
        super()._keep(when)

def test_no_snapshot_in_validate_or_get_preds():
    "`validate` and `get_preds` fire before_fit/after_epoch without training: the guard copies nothing"
    learn,guard = tiny_learner(),CountingGuard()
    learn.add_cb(guard)
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
    n = guard.kept
    assert 1 <= n <= 3  # the fit's start, then only epochs that improved
    learn.validate(); learn.get_preds(); learn.validate()
    assert guard.kept == n and guard.good is None

def test_nonfinite_lr_never_advised():
    "An infinite learning rate is named, and no 'a tenth of inf' is suggested"
    learn = tiny_learner()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, float('inf'), cbs=DivergenceGuard())
    d = learn.diverged
    assert d is not None and d.suggested_lr is None and 'inf' not in f"{d.peak_lrs}"
    assert 'use finite learning rates' in d.message and 'try inf' not in d.message and 'lr_max=inf' not in d.message

def test_lr_far_too_high_is_caught_in_eval_mode():
    "A rate 1000x too high: the training loss stays bounded (BatchNorm normalises each batch) but the validation loss explodes; the guard stops the schedule and loads back the start"
    from finetune_nb.finetune import finetune_learner
    from finetune_nb.data import digits_dls
    set_seed(0)
    learn = finetune_learner(digits_dls(size=32, k_shot=10, bs=64))
    w0 = weights(learn)
    with learn.no_bar(), learn.no_logging(): h = learn.fine_tune_progressive(1, 1000, bn_policy='train', checkpoints=False)  # 'adapt' would move the BatchNorm statistics before the start snapshot
    assert learn.diverged is not None and learn.diverged.kind == 'valid_exploded', learn.diverged
    assert len(h) == 1 and math.isfinite(h.train_loss.iloc[0])   # the schedule stopped after its first epoch
    assert all(torch.equal(v, w0[k]) for k,v in learn.model.state_dict().items())   # back to the weights it started from
