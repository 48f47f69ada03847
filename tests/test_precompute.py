"The feature cache with augmented data: one notice per frozen phase that cannot cache, `compute_estimate` agreeing with the run, and `precompute` exact in its own sense"
import contextlib, io, warnings
import numpy as np, pytest, torch
from functools import partial
from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, IndexSplitter, PILImage, Resize, FlipItem, Learner,
                               CrossEntropyLossFlat, accuracy, set_seed)
from fastcore.basics import ifnone
from fastcore.test import test_eq as eq, test_close as close
from finetune_nb.all import FeatureCache, Schedule, Phase, auto_splitter
from finetune_nb.data import digits_arrays
from finetune_nb.test_utils import TinyNet
torch.set_num_threads(1)

def _img(imgs, i): return PILImage.create(imgs[i])
def _lbl(ys, i): return ys[i]

def aug_dls(item_tfms=None, n=96, size=16):
    "Digits with fastai's standard `Resize` (a random crop on training items) and random flips"
    imgs,ys = digits_arrays()
    imgs = np.ascontiguousarray(np.repeat(imgs[:n], 2, axis=2)[..., None].repeat(3, -1))  # RGB, 8x16: a crop to a square has somewhere to move
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=partial(_img, imgs), get_y=partial(_lbl, ys),
                       splitter=IndexSplitter(range(2*n//3, n)), item_tfms=ifnone(item_tfms, [Resize(size), FlipItem(0.5)]))
    return dblock.dataloaders(np.arange(n), bs=16, num_workers=0)

def learner(dls=None, bn='eval', seed=0, **kwargs):
    set_seed(seed)
    learn = Learner(ifnone(dls, aug_dls()), TinyNet(10), loss_func=CrossEntropyLossFlat(), splitter=auto_splitter, metrics=accuracy,
                    cbs=FeatureCache(**kwargs))
    learn.set_bn_policy(bn)
    return learn

def fit(learn, groups='head', epochs=2, lr=1e-2):
    learn.set_trainable(groups)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), learn.no_bar(), learn.no_logging(): learn.fit(epochs, lr)
    return [l for l in out.getvalue().splitlines() if l.startswith('FeatureCache: ') and 'computing' not in l]

def test_notice_once_per_frozen_fit():
    learn = learner()
    est = learn.compute_estimate('head')
    lines = fit(learn)
    assert len(lines) == 1, lines  # two epochs, one line
    assert lines[0].startswith("FeatureCache: not used in this fit: the training data is augmented (FlipItem, Resize: a random crop); "
                               "use Resize(..., method='squish')"), lines[0]
    assert 'precompute=True' in lines[0]
    assert not est['cached'] and est['reason'].startswith('the training data is augmented'), est
    eq(learn.feature_cache.builds, 0)
    assert fit(learn, 'all', epochs=1) == []  # nothing frozen: silent

def test_silent_when_cached():
    learn = learner(aug_dls([Resize(16, method='squish')]))
    assert learn.compute_estimate('head')['cached']
    assert fit(learn) == []
    eq(learn.feature_cache.builds, 1)

def test_bn_train_says_why():
    learn = learner(aug_dls([Resize(16, method='squish')]), bn='train')
    learn.set_trainable('head')
    est = learn.compute_estimate()
    assert not est['cached'], est
    lines = fit(learn)
    assert len(lines) == 1 and "'adapt' or 'eval' BatchNorm policy" in lines[0], lines

@pytest.mark.parametrize('precompute,groups,bn', [(False, 'head', 'eval'), (True, 'head', 'eval'), (True, 'head', 'train'),
                                                  (True, [-2, -1], 'eval'), (True, 'all', 'eval'), (False, 'head', 'adapt')])
def test_estimate_agrees_with_run(precompute, groups, bn):
    learn = learner(bn=bn, precompute=precompute, verbose=False)
    learn.set_trainable(groups)
    est = learn.compute_estimate()
    fit(learn, groups, epochs=1)
    eq(est['cached'], learn.feature_cache.builds == 1)
    if not est['cached']: eq(est['reason'], learn.feature_cache.reason)

def _run(precompute, unaugmented=False):
    learn = learner(precompute=precompute, verbose=False, enabled=precompute)
    learn.set_trainable('head')
    with learn.dls.train.dataset.set_split_idx(1) if unaugmented else contextlib.nullcontext(), learn.no_bar(), learn.no_logging():
        learn.fit(3, 1e-2)
    return learn

def test_precompute_exact():
    "A cached head epoch with precompute equals an uncached one on the un-augmented items"
    pre,ref,aug = _run(True),_run(False, unaugmented=True),_run(False)
    eq(pre.feature_cache.builds, 1); assert 'precompute' in pre.feature_cache.reason
    close(np.array(pre.recorder.values), np.array(ref.recorder.values), eps=1e-5)
    for a,b in zip(pre.model.parameters(), ref.model.parameters()): close(a, b, eps=1e-5)
    assert not np.allclose(np.array(pre.recorder.values), np.array(aug.recorder.values), atol=1e-4)  # augmentation does change the run

def test_schedule_precompute(tmp_path):
    "`Schedule(precompute=True)`: the head phase on cached un-augmented features, saying so once; augmentation back when everything trains"
    learn = learner()
    learn.path = tmp_path
    sch = Schedule([Phase(1, 2, 1e-2, name='head'), Phase('all', 1, 1e-3, name='all')], bn_policy='eval', precompute=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore'); sch.run(learn, checkpoints=False)
    lines = [l for l in out.getvalue().splitlines() if l.startswith('FeatureCache: ') and 'computing' not in l]
    eq(lines, ["FeatureCache: precompute: phase 0 (head) of the schedule trains the head on cached features of the un-augmented items "
                    "(without FlipItem, Resize: a random crop); augmentation returns when groups unfreeze"])
    eq(learn.feature_cache.builds, 1); assert learn.feature_cache.reason.startswith('the training data is augmented')  # back in the last phase
    eq(Schedule.from_dict(sch.to_dict()).precompute, True)
