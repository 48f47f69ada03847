"""Checkpoints that tidy up (#23): each run in a folder of its own, not the data folder; where and how much said once;
`keep='best'` keeps what `restore` and `resume=True` need; a second run leaves the first's files; `keep='all'` keeps every
phase's. And `finetune_learner` takes a model (`nn.Module`)."""
import warnings
import pytest, torch
from fastai.vision.all import ImageDataLoaders, Learner, CrossEntropyLossFlat, CancelFitException, Callback, accuracy, set_seed, nn
from PIL import Image
from finetune_nb.test_utils import synth_dls, tiny_learner, TinyNet
from finetune_nb.groups import auto_splitter
from finetune_nb.schedule import Schedule, Phase
from finetune_nb.checkpoints import CheckpointDir, run_dirs
from finetune_nb.finetune import finetune_learner

torch.set_num_threads(1)
SCH = Schedule([Phase(1, 1, 1e-2, name='head'), Phase(2, 1, 1e-2, name='top 2'), Phase('all', 2, 5e-3, name='all')])

@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    "Every test in an empty working directory, where the default run folders go"
    monkeypatch.chdir(tmp_path)

def fresh():
    set_seed(0)
    learn = tiny_learner(synth_dls(n=64, bs=16, num_workers=0))
    learn.remove_cb(learn.progress)
    return learn

def weights(learn): return {k:v.detach().clone() for k,v in learn.model.state_dict().items()}
def same(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
def files(d): return {o.name: (o.stat().st_size, o.stat().st_mtime_ns) for o in d.iterdir()}

class StopAt(Callback):
    "Ctrl-C at training batch `n` of the whole run"
    def __init__(self, n): self.n,self.seen = n,0
    def before_batch(self):
        if not self.training: return
        self.seen += 1
        if self.seen >= self.n: raise KeyboardInterrupt()

def test_default_folder_is_not_the_data_folder(tmp_path):
    "A learner from `ImageDataLoaders.from_folder` has the data folder as `learn.path`: the run writes in the working directory"
    data = tmp_path/'imgs'
    for i,c in enumerate(('cat', 'dog')):
        (data/c).mkdir(parents=True)
        for j in range(8): Image.new('RGB', (8, 8), (i*200, j*20, 50)).save(data/c/f'{j}.png')
    before = sorted(p.relative_to(data) for p in data.rglob('*'))
    dls = ImageDataLoaders.from_folder(data, valid_pct=0.25, seed=0, bs=4, num_workers=0)
    learn = Learner(dls, TinyNet(2), loss_func=CrossEntropyLossFlat(), splitter=auto_splitter, metrics=accuracy)
    assert learn.path == data
    with learn.no_bar(), learn.no_logging(): Schedule([Phase(1, 1, 1e-2), Phase('all', 1, 1e-2)]).run(learn)
    assert learn.ckpt_dir == tmp_path/'models'/'finetune'/'run-001'
    assert sorted(p.relative_to(data) for p in data.rglob('*')) == before

def test_where_and_how_much_are_said(tmp_path, capsys):
    learn = fresh()
    SCH.run(learn)
    out = capsys.readouterr().out.splitlines()
    d = tmp_path/'models'/'finetune'/'run-001'
    said = [o for o in out if o.startswith('Checkpoints ')]
    assert said == [f"Checkpoints go to {d}: the start, the best and the last weights, and the resume state (keep='best')",
                    f"Checkpoints in {d}: 3 checkpoints, {CheckpointDir(d).nbytes/1e3:.0f} kB on disk"]
    assert out[0] == said[0] and out[-1] == said[1]  # at the start of the run, and at its end

def test_keep_best_keeps_what_restore_and_resume_need(tmp_path):
    full = fresh(); h_all = SCH.run(full, ckpt_dir=tmp_path/'all', keep='all'); w_all = weights(full)
    learn = fresh(); h = SCH.run(learn)
    d = learn.ckpt_dir
    best = CheckpointDir(tmp_path/'all').resolve('best')
    assert sorted(files(d)) == sorted(['manifest.json', 'owner.pid', 'start.pth', 'resume.pth', f'{best}.pth'])
    assert CheckpointDir(d).nbytes < CheckpointDir(tmp_path/'all').nbytes
    assert same(weights(learn), w_all) and h.drop(columns='phase_time').equals(h_all.drop(columns='phase_time'))
    for which in ('start', 'best', 'last'):
        full.restore(which); learn.restore(which)
        assert same(weights(learn), weights(full)), which
    with pytest.raises(ValueError, match=r"Phase 0 has no 'last' checkpoint: the run kept only its start, its best and its last \(keep='best'\)"):
        learn.restore(0)
    # interrupted in phase 2, then resumed by a new learner (as a new process would), without naming the folder
    with pytest.raises(KeyboardInterrupt): SCH.run(fresh(), cbs=StopAt(14))
    assert [o.name for o in run_dirs(tmp_path/'models'/'finetune')] == ['run-001', 'run-002']
    resumed = fresh(); h2 = SCH.run(resumed, resume=True)
    assert resumed.ckpt_dir == tmp_path/'models'/'finetune'/'run-002'
    assert same(weights(resumed), w_all) and h2.drop(columns='phase_time').equals(h_all.drop(columns='phase_time'))
    assert sorted(files(resumed.ckpt_dir)) == sorted(files(d))

def test_keep_best_with_restore_best(tmp_path):
    "`restore_best` loads each phase's best back at its end: the running phase's best stays until then"
    sch = Schedule(SCH.phases, restore_best=True)
    full = fresh(); sch.run(full, ckpt_dir=tmp_path/'all', keep='all')
    learn = fresh(); sch.run(learn)
    assert same(weights(learn), weights(full))
    assert len([k for k in CheckpointDir(learn.ckpt_dir).entries if k.endswith('_best')]) == 1

def test_a_second_run_leaves_the_first(tmp_path):
    first = fresh(); SCH.run(first)
    d1 = first.ckpt_dir; (d1/'notes.txt').write_text("the user's")
    kept = files(d1)
    second = fresh(); SCH.run(second)
    assert second.ckpt_dir == d1.with_name('run-002') and files(d1) == kept
    other = fresh(); other.restore('best', ckpt_dir=d1)  # the first run's checkpoints still load
    # a folder given twice: the earlier run's checkpoints are replaced, with a warning that says so; a file that is not ours stays
    SCH.run(fresh(), ckpt_dir=tmp_path/'out')
    (tmp_path/'out'/'notes.txt').write_text("the user's")
    with pytest.warns(UserWarning, match=r"out held the checkpoints of an earlier run \(\d+ kB\): this run replaces them"):
        SCH.run(fresh(), ckpt_dir=tmp_path/'out')
    assert (tmp_path/'out'/'notes.txt').read_text() == "the user's" and (d1/'notes.txt').exists()

def test_keep_all_as_before(tmp_path):
    learn = fresh(); SCH.run(learn, ckpt_dir=tmp_path/'run', keep='all')
    assert sorted(files(tmp_path/'run')) == sorted(['manifest.json', 'owner.pid', 'start.pth', 'resume.pth',
                                                    *(f'phase{i}_{k}.pth' for i in range(3) for k in ('best', 'last'))])
    for i in range(3): learn.restore(i); learn.restore(i, 'best')
    with pytest.raises(ValueError, match="keep='most'"): SCH.run(fresh(), keep='most')

def test_finetune_learner_takes_a_module():
    dls = synth_dls(n=64, bs=16, num_workers=0); dls.c = 3
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        learn = finetune_learner(dls, TinyNet(5), n_groups=3, loss_func=CrossEntropyLossFlat())
    assert [str(w.message) for w in ws if 'Linear' in str(w.message)] == \
        ["The model's last Linear layer (classifier) has 5 outputs and the data 3 classes: it is replaced by a new Linear(16, 3), trained from scratch"]
    assert learn.model.classifier.out_features == 3 and learn.n_groups == 3
    with learn.no_bar(), learn.no_logging(): learn.fine_tune_progressive(1, checkpoints=False)
    m = TinyNet(3)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always'); assert finetune_learner(dls, m, loss_func=CrossEntropyLossFlat()).model is m
        del dls.c; assert finetune_learner(dls, TinyNet(5), loss_func=CrossEntropyLossFlat()).model.classifier.out_features == 5  # data without classes: the model as it is
    assert not [w for w in ws if 'Linear' in str(w.message)]

def test_finetune_learner_takes_a_torchvision_model():
    "The issue's case: a torchvision model instance, which fastai's `vision_learner` would call with `pretrained=`"
    from torchvision.models import resnet18
    dls = synth_dls(n=32, size=32, bs=16, num_workers=0); dls.c = 3
    with warnings.catch_warnings():
        warnings.simplefilter('ignore'); learn = finetune_learner(dls, resnet18(weights=None), loss_func=CrossEntropyLossFlat())
    assert learn.model.fc.out_features == 3 and learn.n_groups == 4
    xb,_ = dls.valid.one_batch()
    assert learn.model.eval()(xb.to(next(learn.model.parameters()).device)).shape == (16, 3)
