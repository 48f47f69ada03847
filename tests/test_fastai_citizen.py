"Importing finetune_nb changes nothing in a plain fastai workflow, and an exported fine-tuned learner loads without finetune_nb"
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest

HERE = Path(__file__).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')

def _run(tmp, *args):
    tmp.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, str(HERE/'fastai_workflow.py'), str(tmp), *args], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp/'result.json').read_text())

def test_plain_fastai_workflow_is_unchanged(tmp_path):
    plain,ft = _run(tmp_path/'plain'),_run(tmp_path/'ft', '--import-finetune-nb')
    assert ft['shadowed'] == [], f"finetune_nb.all shadows fastai names: {ft['shadowed']}"
    for k in plain:
        if k != 'shadowed': assert ft[k] == plain[k], f"{k} differs with the import: {plain[k]!r} vs {ft[k]!r}"
    assert 'GroupRecorder' not in ft['cbs'] and len(plain['fine_tune_single']) == 1  # fastai's fine_tune on one group runs (its last fit is recorded)

def test_export_loads_without_finetune_nb(tmp_path):
    "A learner fine-tuned by finetune_nb exports at fastai's size and loads in a process where finetune_nb cannot be imported"
    code = textwrap.dedent(f"""
        import torch, warnings; warnings.filterwarnings('ignore'); torch.set_num_threads(1)
        from pathlib import Path
        from fastai.vision.all import *
        from finetune_nb.all import *
        p = Path({str(tmp_path)!r})
        X = torch.randn(96, 3, 8, 8, generator=torch.Generator().manual_seed(0)); Y = (X.mean((1,2,3))*8).round().clamp(0, 2).long().tolist()
        def get_x(i): return X[i]
        def get_y(i): return Y[i]
        dls = DataBlock(blocks=(TransformBlock, CategoryBlock), get_x=get_x, get_y=get_y,
                        splitter=IndexSplitter(range(64, 96))).dataloaders(range(96), bs=16, num_workers=0)
        class Net(nn.Module):   # the user's own code: defined here, pickled by value
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(3,8,3,padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8,8,3,padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
                self.head = nn.Linear(8, 3)
            def forward(self, x): return self.head(self.body(x))
        set_seed(0); plain = Learner(dls, Net(), loss_func=CrossEntropyLossFlat(), path=p)
        plain.export('plain.pkl')
        set_seed(0); learn = Learner(dls, Net(), loss_func=CrossEntropyLossFlat(), splitter=auto_splitter, path=p)
        with learn.no_bar(), learn.no_logging(): learn.fine_tune_progressive(1, 1e-2, ckpt_dir=p/'ck')
        assert hasattr(learn, 'feature_cache') and hasattr(learn, 'ft_log') and hasattr(learn, 'divergence_guard')
        learn.export('ft.pkl')
        torch.save(learn.model.eval()(torch.ones(2, 3, 8, 8)).detach(), p/'out.pt')
    """)
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    plain,ft = (tmp_path/'plain.pkl').stat().st_size,(tmp_path/'ft.pkl').stat().st_size
    assert ft < plain*1.1 + 20_000, (plain, ft)
    load = textwrap.dedent(f"""
        import sys, torch, warnings; warnings.filterwarnings('ignore')
        sys.modules['finetune_nb'] = None   # as if it were not installed: any import of it fails
        from fastai.learner import load_learner
        learn = load_learner({str(tmp_path/'ft.pkl')!r})
        assert not any(m.startswith('finetune_nb.') for m in sys.modules), [m for m in sys.modules if m.startswith('finetune_nb')]
        out = learn.model.eval()(torch.ones(2, 3, 8, 8))
        assert torch.allclose(out, torch.load({str(tmp_path/'out.pt')!r}), atol=1e-6)
        print([type(c).__name__ for c in learn.cbs])
    """)
    r = subprocess.run([sys.executable, '-c', load], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

def test_import_keeps_fastai_defaults():
    "`finetune_nb.all` leaves every fastai default (callbacks, lr, ...) exactly as `fastai.vision.all` sets it"
    code = ("from fastai.vision.all import *; snap=lambda: {k:(list(v) if k=='callbacks' else repr(v)) for k,v in vars(defaults).items()}; "
            "a=snap(); import finetune_nb.all; assert snap()==a, (a, snap())")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
