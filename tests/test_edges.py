"Edges of issue 23: no warning at import, offline model names that fail fast, plain progress lines in logs"
import os, subprocess, sys, textwrap, time
import pytest, torch

def _python(code:str, cwd=None) -> subprocess.CompletedProcess:
    "Run `code` in a fresh interpreter, stdout and stderr captured (so neither is a terminal)"
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    env.pop('PYTHONWARNINGS', None)
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)

# ## The `torch.jit.script` FutureWarning

@pytest.mark.parametrize('code', ['import finetune_nb.schedule', 'from finetune_nb.all import *'])
def test_import_prints_nothing(code):
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert r.stderr == '', r.stderr

def test_plain_fastai_still_warns():
    "Without finetune_nb, fastai's import shows the warning: the filter is finetune_nb's, and the test above is not vacuous"
    r = _python('import fastai.basics')
    if 'torch.jit.script' not in r.stderr: pytest.skip('this torch no longer warns about torch.jit.script')

def test_other_future_warnings_still_show():
    r = _python('''
        import warnings, finetune_nb.schedule
        warnings.warn('a FutureWarning of my own', FutureWarning)
        warnings.warn_explicit('another torch.jit warning', FutureWarning, 'x.py', 1, module='torch.jit._script')
        ''')
    assert 'a FutureWarning of my own' in r.stderr, r.stderr
    assert 'another torch.jit warning' in r.stderr, r.stderr

# ## Offline model names fail fast

@pytest.fixture
def dls():
    from finetune_nb.test_utils import synth_dls
    d = synth_dls()
    d.c = 3
    return d

@pytest.fixture
def empty_hub(tmp_path):
    "An empty torch.hub cache, so that torchvision's weights are not found there"
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    yield tmp_path
    torch.hub.set_dir(old)

def _offline_error(dls, arch) -> tuple:
    from finetune_nb.models import no_network, OfflineError
    from finetune_nb.finetune import finetune_learner
    start = time.time()
    with no_network(), pytest.raises(OfflineError) as e: finetune_learner(dls, arch, loss_func=torch.nn.CrossEntropyLoss())
    return str(e.value), time.time() - start

def test_timm_name_offline_fails_fast(dls):
    msg,secs = _offline_error(dls, 'resnet18')
    assert secs < 5, f"{secs:.1f} s"
    assert msg.startswith("Could not download the pretrained weights of 'resnet18'"), msg
    for s in ('pretrained=False', "pretrained_cfg_overlay=dict(file='resnet18.pth')", "arch='efficientnet_lite0'"): assert s in msg, msg

def test_torchvision_model_offline_fails_fast(dls, empty_hub):
    from torchvision.models import resnet18
    msg,secs = _offline_error(dls, resnet18)
    assert secs < 5, f"{secs:.1f} s"
    for s in ('pretrained=False', str(empty_hub/'checkpoints'), "arch='efficientnet_lite0'"): assert s in msg, msg

def test_torchvision_weights_in_the_cache_load_offline(empty_hub):
    "A user whose weights are in torch.hub's cache is not blocked by the offline check"
    from finetune_nb.test_utils import synth_dls
    dls = synth_dls(n=8, size=64, bs=4)
    dls.c = 3
    from torchvision.models import squeezenet1_0, SqueezeNet1_0_Weights
    from finetune_nb.models import no_network
    from finetune_nb.finetune import finetune_learner
    sd = squeezenet1_0().state_dict()
    (empty_hub/'checkpoints').mkdir()
    torch.save(sd, empty_hub/'checkpoints'/SqueezeNet1_0_Weights.IMAGENET1K_V1.url.split('/')[-1])
    with no_network(): learn = finetune_learner(dls, squeezenet1_0, loss_func=torch.nn.CrossEntropyLoss())
    assert torch.equal(learn.model[0][0][0].weight, sd['features.0.weight'])

# ## Plain progress lines when stdout is a file

def test_fit_logs_plain_lines_to_a_file(tmp_path):
    "Under `plain_progress`, with stdout a pipe, a schedule's run prints one line per epoch, each with its phase, and no carriage return"
    r = _python('''
        from finetune_nb.test_utils import tiny_learner
        from finetune_nb.progress import plain_progress
        from finetune_nb.finetune import *
        from finetune_nb.schedule import progressive_schedule
        learn = tiny_learner(path='.')
        with plain_progress(learn): learn.fit(2, 1e-2)
        with plain_progress(learn): progressive_schedule(learn.n_groups, epochs=2).run(learn, checkpoints=False)
        assert any(type(cb).__name__ == 'ProgressCallback' for cb in learn.cbs)
        ''', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '\r' not in r.stdout
    epochs = [l for l in r.stdout.splitlines() if 'train_loss' in l]
    assert [l.split('  train_loss')[0] for l in epochs] == [
        'epoch 1/2', 'epoch 2/2', 'phase 0 (head)  epoch 1/1', 'phase 1 (top 2)  epoch 1/1', 'phase 2 (all)  epoch 1/2', 'phase 2 (all)  epoch 2/2'], r.stdout
    assert all(l.split()[-2] == 'time' for l in epochs), epochs
