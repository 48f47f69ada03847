"""Checkpoint folders are data (#10): a run never deletes or reads outside the folder it was given, and two runs given the
same folder (two demos with the same `--out`) do not clear each other's checkpoints."""
import json, time
import pytest, torch

from test_resume import TIMEOUT, start, resume_entry  # the run of tests/resume_script.py, in a process of its own

def test_two_runs_in_one_explicit_folder(tmp_path):
    "The later run, while the earlier one is alive and owns the folder, keeps its checkpoints beside it and says so"
    ckpt = tmp_path/'ckpt'
    a = start(ckpt, tmp_path/'a', '--batch-sleep', '0.1')
    t0 = time.time()
    while (resume_entry(ckpt) or {}).get('epoch', -1) < 0:
        assert a.poll() is None, a.communicate()[0][-3000:]
        assert time.time()-t0 < TIMEOUT
        time.sleep(0.05)
    b = start(ckpt, tmp_path/'b')
    out_b = b.communicate(timeout=TIMEOUT)[0]
    assert b.returncode == 0, out_b[-3000:]
    assert f"{ckpt} is in use by process {a.pid}" in out_b, out_b[-3000:]
    alt = ckpt.with_name(f'ckpt-{b.pid}')
    assert json.loads((alt/'manifest.json').read_text())['checkpoints']['resume']['finished']
    out_a = a.communicate(timeout=TIMEOUT)[0]
    assert a.returncode == 0, out_a[-3000:]
    m = json.loads((ckpt/'manifest.json').read_text())['checkpoints']
    assert m['resume']['finished'] and (ckpt/'owner.pid').read_text() == str(a.pid)
    assert {f'phase{i}_{k}' for i in range(3) for k in ('best', 'last')} <= set(m)  # the earlier run's checkpoints, all there
    wa,wb = torch.load(tmp_path/'a.pth', weights_only=True),torch.load(tmp_path/'b.pth', weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, neither disturbed the other
    assert not [o for o in [*ckpt.iterdir(), *alt.iterdir()] if 'tmp' in o.name]

@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    "A finished run's checkpoint folder"
    torch.set_num_threads(1)
    from fastai.basics import set_seed
    from finetune_nb.test_utils import synth_dls, tiny_learner
    from finetune_nb.schedule import Schedule, Phase
    import finetune_nb.finetune  # noqa: F401 (`Schedule.run`)
    d = tmp_path_factory.mktemp('trust')
    set_seed(0)
    learn = tiny_learner(synth_dls(n=32, bs=16, num_workers=0))
    sch = Schedule([Phase(1, 1, 1e-2), Phase('all', 1, 1e-2)])
    with learn.no_bar(), learn.no_logging(): sch.run(learn, ckpt_dir=d/'run', keep='all')  # every checkpoint: the planted manifests below name them
    return d, sch, learn

@pytest.mark.parametrize('name', ['../victim.txt', 'ABSOLUTE', 'sub/../../victim.txt'])
def test_planted_manifest_deletes_nothing(finished, name):
    import shutil
    from finetune_nb.checkpoints import CheckpointError
    d,sch,learn = finished
    victim = d/'victim.txt'; victim.write_text('keep me')
    name = str(victim) if name == 'ABSOLUTE' else name
    planted = d/'planted'; shutil.rmtree(planted, ignore_errors=True); shutil.copytree(d/'run', planted)
    m = json.loads((planted/'manifest.json').read_text()); m['checkpoints']['phase0_best']['file'] = name
    (planted/'manifest.json').write_text(json.dumps(m))
    files = sorted(o.name for o in planted.iterdir())
    with pytest.raises(CheckpointError, match="for checkpoint 'phase0_best', which is not inside"): sch.run(learn, ckpt_dir=planted)
    with pytest.raises(CheckpointError, match="the folder is refused"): learn.restore('best', ckpt_dir=planted)
    assert victim.read_text() == 'keep me' and sorted(o.name for o in planted.iterdir()) == files

def test_planted_checkpoint_meta_deletes_nothing(finished):
    "Without a manifest the folder is read from its files: a stray checkpoint naming a file outside is refused too"
    from finetune_nb.checkpoints import CheckpointError
    d,sch,learn = finished
    victim = d/'victim2.txt'; victim.write_text('keep me')
    stray = d/'stray'; stray.mkdir()
    torch.save({'model': {}, 'meta': {'kind': 'last', 'phase': 0, 'file': str(victim)}}, stray/'resume.pth')
    with pytest.raises(CheckpointError, match="resume.pth names the file"): sch.run(learn, ckpt_dir=stray)
    with pytest.raises(CheckpointError, match="resume.pth names the file"): sch.run(learn, ckpt_dir=stray, resume=True)
    assert victim.read_text() == 'keep me' and sorted(o.name for o in stray.iterdir()) == ['owner.pid', 'resume.pth']
