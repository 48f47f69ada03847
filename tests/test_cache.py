"`learn.export()` after the feature cache spilled to disk: fastai's size, and the file loads where finetune_nb is not imported"
import subprocess, sys, os, textwrap
from pathlib import Path

EXPORT = textwrap.dedent('''
    import sys, torch; torch.set_num_threads(1)
    from fastai.basics import *
    from fastai.callback.training import BnFreeze
    from finetune_nb.cache import FeatureCache
    from finetune_nb.groups import *
    out = Path(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 3, 16, 16, generator=g)
    items = list(zip(x, (x.mean((1,2,3))*8 > 0).long()))
    def split(m): return [params(m[:3]), params(m[3:])]  # defined here, so cloudpickle keeps it by value
    def learner(cbs):
        set_seed(0)
        dls = Datasets(items, tfms=[[ItemGetter(0)], [ItemGetter(1)]], splits=[list(range(64)), list(range(64, 96))]).dataloaders(bs=16)
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),  # frozen, cached: 16x16x16 floats an item
                              nn.Conv2d(16, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=split, cbs=cbs)
        learn.set_bn_policy('eval'); learn.set_trainable('head')
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
        return learn
    cached,bare = learner(FeatureCache(max_memory=0, verbose=False)),learner(None)
    fc = cached.feature_cache
    assert fc.reason.startswith('caching') and 'on disk' in fc.reason, fc.reason
    print(sum(t.numel()*t.element_size() for t in (fc.cached.train[0], fc.cached.valid[0])))
    cached.path = bare.path = out
    cached.export('cached.pkl'); bare.export('bare.pkl')
    torch.save(x[:4], out/'x.pt')
    with torch.no_grad(): torch.save(cached.model.eval()(x[:4]), out/'y.pt')
''')

LOAD = textwrap.dedent('''
    import sys, torch
    from pathlib import Path
    from fastai.learner import load_learner
    out = Path(sys.argv[1])
    learn = load_learner(out/'cached.pkl')
    assert not [m for m in sys.modules if m.startswith('finetune_nb')], 'loading imported finetune_nb'
    assert not [cb for cb in learn.cbs if 'finetune_nb' in type(cb).__module__], learn.cbs
    with torch.no_grad(): y = learn.model.eval()(torch.load(out/'x.pt', weights_only=True))
    assert torch.allclose(y, torch.load(out/'y.pt', weights_only=True), atol=1e-6)
''')

def _run(code, *args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-c', code, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

def test_export_after_disk_spill(tmp_path):
    cached_bytes = int(_run(EXPORT, tmp_path, cwd=Path(__file__).parents[1]).split()[-1])
    cached,bare = (tmp_path/'cached.pkl').stat().st_size,(tmp_path/'bare.pkl').stat().st_size
    assert cached_bytes > 2**20 and abs(cached - bare) < 1000, (cached_bytes, cached, bare)  # MiBs cached, none of it exported
    _run(LOAD, tmp_path, cwd=tmp_path)  # a process that never imports finetune_nb
