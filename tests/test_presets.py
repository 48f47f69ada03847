"The 'adapt' BatchNorm policy (one pass, cacheable, cached = uncached) and the preset schedules of `finetune_nb.presets`"
import os, warnings
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch; torch.set_num_threads(1)
import pytest
import numpy as np
from fastai.torch_core import set_seed
from finetune_nb.groups import *
from finetune_nb.cache import FeatureCache
import finetune_nb.finetune  # Learner.fine_tune_progressive, Schedule.run
from finetune_nb.test_utils import synth_dls, tiny_learner

def _run(cache:bool, policy='adapt'):
    set_seed(0); dls = synth_dls(n=80, bs=16)  # the seed first: fastai DataLoaders draw their shuffling generator when made
    lrn = tiny_learner(dls, cbs=FeatureCache(enabled=cache, verbose=False))
    passes,adapt = [],lrn.adapt_bn
    lrn.adapt_bn = lambda *a, **k: passes.append(adapt(*a, **k))  # counts the passes and their batches
    with lrn.no_bar(), lrn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        hist = lrn.fine_tune_progressive(1, 1e-2, bn_policy=policy, checkpoints=False)
    return lrn,hist,passes

def test_adapt_cached_equals_uncached():
    (c,hc,pc),(u,hu,_) = _run(True),_run(False)
    assert c.feature_cache.builds >= 1 and u.feature_cache.builds == 0  # the cache really served the frozen phases
    for k in ('train_loss', 'valid_loss'): np.testing.assert_allclose(hc[k].values, hu[k].values, atol=1e-4)
    for a,b in zip(c.model.state_dict().values(), u.model.state_dict().values()): torch.testing.assert_close(a.float(), b.float(), atol=1e-4, rtol=1e-4)
    assert pc == [5], pc  # the adaptation is one pass (5 batches of 16: every training item), before the first phase

def test_frozen_and_train_policies_are_not_cached_the_same():
    _,_,p = _run(True, 'train')
    assert p == []  # no adaptation pass under 'train'
    lrn,_,_ = _run(True, 'train')
    assert lrn.feature_cache.builds == 0  # 'train' updates frozen norm layers: nothing to cache

def test_adapt_refuses_unknown():
    with pytest.raises(ValueError, match="Unknown BatchNorm policy"): tiny_learner().set_bn_policy('adabn')

def test_presets_are_schedules_a_user_can_save_and_edit(tmp_path):
    from finetune_nb.presets import lp_ft_schedule, surgical_schedule
    from finetune_nb.schedule import Schedule
    for sch in (lp_ft_schedule(4), surgical_schedule('features.3')):
        back = Schedule.load(sch.save(tmp_path/'s.yaml'))
        assert back == sch and back.bn_policy == 'adapt'
        back.phases[-1].epochs = 7  # edit, as data
        assert back != sch

def test_auto_schedule_leaves_the_learner_and_picks_the_best_probe():
    from finetune_nb.presets import auto_schedule
    set_seed(0); lrn = tiny_learner(synth_dls(n=64, bs=16))
    before = {k:v.clone() for k,v in lrn.model.state_dict().items()}
    with pytest.raises(ValueError, match="No depth to probe"): auto_schedule(lrn, depths=[9], show=False)
    sch = auto_schedule(lrn, epochs=1, lrs=(1e-2,), depths=[2, 3], show=False)
    for k,v in lrn.model.state_dict().items(): assert torch.equal(v, before[k]), k  # BatchNorm statistics included
    t = sch.probe
    assert list(t.k) == [2, 3] and t.chosen.sum() == 1
    best = t.sort_values(['accuracy', 'valid_loss'], ascending=[False, True]).iloc[0]
    assert sch.phases[1].top == (int(best.k) if best.k < lrn.n_groups else 'all') and sch.phases[1].lr_max == best.lr_max
