"""What `DivergenceGuard` costs and how often it is right, against the guard before issues #10/#11 (git `b8f7330`).

Cost: seconds the guard spends in its own events per epoch (its snapshot copies, its checks), on EfficientNet-Lite0
(digits at 32 px) and on a ~100M-parameter stack of `nn.Linear(4096, 4096)` (tiny data), and the time of `validate`
with and without each guard. Reliability: how often it stops a healthy run (fastai's `fine_tune`, `fine_tune_progressive`,
`fit(3)` then `fine_tune(1)` on a small resnet18, tiny learners, several seeds), and how often it stops a run that truly
diverges (rates 100x and 1000x too high, a NaN injected into the weights).

    OMP_NUM_THREADS=1 python benchmarks/guards.py            # everything, a few minutes on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/guards.py --only cost
"""
import argparse, contextlib, importlib.util, io, math, os, subprocess, sys, tempfile, time, warnings
from pathlib import Path
os.environ.setdefault('OMP_NUM_THREADS', '1')
warnings.filterwarnings('ignore')
import torch
torch.set_num_threads(1)
from fastai.vision.all import *
from finetune_nb.guards import DivergenceGuard
from finetune_nb.test_utils import tiny_learner, synth_dls
from finetune_nb.data import digits_dls
from finetune_nb.models import efficientnet_lite0
from finetune_nb.groups import auto_splitter, AutoSplitter
from finetune_nb.finetune import fine_tune_progressive, finetune_callbacks

ROOT = Path(__file__).resolve().parents[1]
defaults.cpus = 0

def old_guard_class(commit='b8f7330'):
    "The `DivergenceGuard` of `commit`, imported from git into a module of its own"
    src = subprocess.run(['git', '-C', str(ROOT), 'show', f'{commit}:finetune_nb/guards.py'], capture_output=True, text=True, check=True).stdout
    src = src.replace('from .groups import', 'from finetune_nb.groups import').replace('from .schedule import', 'from finetune_nb.schedule import')
    path = Path(tempfile.mkdtemp())/'guards_old.py'; path.write_text(src)
    spec = importlib.util.spec_from_file_location('guards_old', path); mod = importlib.util.module_from_spec(spec)
    sys.modules['guards_old'] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.DivergenceGuard

OldGuard = old_guard_class()

def timed(cls):
    "A subclass of guard `cls` that adds up the seconds spent in its events"
    class Timed(cls):
        spent = 0.
        def __call__(self, event_name):
            t = time.perf_counter()
            try: return super().__call__(event_name)
            finally: self.spent += time.perf_counter() - t
    Timed.__name__ = cls.__name__  # the old guard finds itself by class name
    return Timed

GUARDS = {'none': None, 'before': OldGuard, 'after': DivergenceGuard}

# ----- cost ---------------------------------------------------------------------------------------------------------
class Linear100M(nn.Module):
    "Six `nn.Linear(4096, 4096)` layers (100.7M parameters) and a 2-class head"
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*[nn.Sequential(nn.Linear(4096, 4096), nn.ReLU()) for _ in range(6)])
        self.head = nn.Linear(4096, 2)
    def forward(self, x): return self.head(self.body(x))

def linear_dls(n=8):
    g = torch.Generator().manual_seed(0)
    ds = lambda: [(torch.randn(4096, generator=g), torch.tensor(i % 2)) for i in range(n)]
    return DataLoaders.from_dsets(ds(), ds(), bs=n, num_workers=0)

def make(which):
    if which == 'lite0':
        dls = digits_dls(size=32, bs=64, k_shot=20)
        return lambda: Learner(dls, efficientnet_lite0(dls.c), loss_func=CrossEntropyLossFlat(), splitter=AutoSplitter(4))
    dls = linear_dls()
    return lambda: Learner(dls, Linear100M(), loss_func=CrossEntropyLossFlat())

def cost(which, epochs=3, lr=1e-4):
    "Per epoch: seconds in the guard's events and in the whole epoch; `validate` seconds; for none/before/after"
    new,rows = make(which),{}
    for name,cls in GUARDS.items():
        set_seed(0)
        learn = new()
        g = timed(cls)() if cls else None
        if g: learn.add_cb(g)
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, lr)  # warm up allocator and kernels
            if g: g.spent = 0.
            t = time.perf_counter(); learn.fit(epochs, lr); fit_s = (time.perf_counter()-t)/epochs
            guard_s = g.spent/epochs if g else 0.
            if g: g.spent = 0.
            t = time.perf_counter()
            for _ in range(3): learn.validate()
            val_s = (time.perf_counter()-t)/3
            val_guard = g.spent/3 if g else 0.
        rows[name] = dict(epoch_s=fit_s, guard_s=guard_s, validate_s=val_s, validate_guard_s=val_guard)
        del learn, g
    return rows

# ----- reliability --------------------------------------------------------------------------------------------------
def run_with(cls, build, train):
    "Whether a guard of class `cls` stopped `train(learn)`; the guard joins the learner first, so `finetune_callbacks` adds no other"
    learn = build()
    if cls is not None: learn.add_cb(cls())
    with contextlib.redirect_stdout(io.StringIO()), learn.no_bar(), learn.no_logging(): train(learn)
    d = getattr(learn, 'diverged', None)
    return learn, d

def small_images(seed, n=36, size=32):
    g = torch.Generator().manual_seed(seed)
    def ds(n):
        x = torch.randn(n, 3, size, size, generator=g)
        return list(zip(x, (x[:,0].mean((1,2)) > 0).long()))
    dls = DataLoaders.from_dsets(ds(n), ds(12), bs=8, num_workers=0); dls.c = 2
    return dls

def healthy_cases(seeds):
    "(name, seed, build, train): the tutorials' schedules and fastai's own sequences, at their usual rates"
    digits = digits_dls(size=32, bs=32, k_shot=10)
    lite = lambda s: (lambda: (set_seed(s), Learner(digits, efficientnet_lite0(digits.c), loss_func=CrossEntropyLossFlat(),
                                                    metrics=accuracy, splitter=AutoSplitter(4)))[1])
    tiny = lambda s: (lambda: tiny_learner(synth_dls(seed=s), seed=s))
    res18 = lambda s: (lambda: (set_seed(s), vision_learner(small_images(s), resnet18, pretrained=False, loss_func=CrossEntropyLossFlat(), n_out=2))[1])
    for s in seeds:
        yield 'tiny: fine_tune(2)', s, tiny(s), lambda l: l.fine_tune(2, 1e-2)
        yield 'tiny: fine_tune_progressive(1)', s, tiny(s), lambda l: l.fine_tune_progressive(1, 1e-2)
        yield 'tiny: fit_one_cycle(3) then fine_tune(1)', s, tiny(s), lambda l: (l.fit_one_cycle(3, 3e-2), l.fine_tune(1))
        yield 'resnet18 36 images: fit(3) then fine_tune(1)', s, res18(s), lambda l: (l.fit(3), l.fine_tune(1))
        yield 'lite0 digits 32px: fine_tune(1)', s, lite(s), lambda l: l.fine_tune(1)
        yield 'lite0 digits 32px: fine_tune_progressive(1)', s, lite(s), lambda l: l.fine_tune_progressive(1, 2e-3)

class NaNAt(Callback):
    "Put a NaN into the first weight at training batch `at` (a bad batch, a broken kernel)"
    order = 60
    def __init__(self, at): self.at = at
    def after_step(self):
        if self.train_iter == self.at:
            with torch.no_grad(): next(self.learn.model.parameters()).view(-1)[0] = float('nan')

def divergent_cases(seeds):
    "(name, seed, build, train): rates 100x and 1000x the sane ones, and a NaN injected"
    tiny = lambda s: (lambda: tiny_learner(synth_dls(seed=s), seed=s))
    digits = digits_dls(size=32, bs=32, k_shot=10)
    lite = lambda s: (lambda: (set_seed(s), Learner(digits, efficientnet_lite0(digits.c), loss_func=CrossEntropyLossFlat(),
                                                    splitter=AutoSplitter(4)))[1])
    for s in seeds:
        for k in (100, 1000):
            yield f'tiny: fit_one_cycle(3, {k}x 1e-2)', s, tiny(s), lambda l, k=k: l.fit_one_cycle(3, k*1e-2)
            yield f'tiny: fine_tune_progressive(1, lr_max={k}x 1e-2)', s, tiny(s), lambda l, k=k: l.fine_tune_progressive(1, k*1e-2)
            yield f'lite0: fine_tune(1, {k}x 2e-3)', s, lite(s), lambda l, k=k: l.fine_tune(1, k*2e-3)
        yield 'tiny: NaN at batch 6', s, tiny(s), lambda l: l.fit(3, 1e-2, cbs=NaNAt(6))

def truly_diverged(build, train):
    "Without any guard: is the end state broken (non-finite, or validation loss 3x above the start's)?"
    learn = build()
    learn.add_cb(type('DivergenceGuard', (Callback,), {})())  # a do-nothing stand-in, so `finetune_callbacks` adds no guard
    with learn.no_bar(), learn.no_logging():
        v0 = learn.validate()[0]
        with contextlib.redirect_stdout(io.StringIO()): train(learn)
        v1 = learn.validate()[0]
    bad_w = any(not torch.isfinite(p).all() for p in learn.model.parameters())
    return bad_w or not math.isfinite(v1) or v1 > 3*v0

def reliability(seeds, divergent=True):
    out = []
    cases = [('healthy',)+c for c in healthy_cases(seeds)] + ([('divergent',)+c for c in divergent_cases(seeds)] if divergent else [])
    for kind,name,s,build,train in cases:
        row = dict(kind=kind, case=name, seed=s)
        if kind == 'divergent': row['truly'] = truly_diverged(build, train)
        for g,cls in (('before', OldGuard), ('after', DivergenceGuard)):
            _,d = run_with(cls, build, train)
            row[g] = d.kind if d is not None else ''
        out.append(row); print(row, flush=True)
    return out

def table(rows, cols):
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|'*len(cols)]
    for r in rows: lines.append('| ' + ' | '.join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + ' |')
    return '\n'.join(lines)

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--only', choices=['cost', 'reliability'], default=None)
    p.add_argument('--seeds', type=int, default=3)
    a = p.parse_args()
    if a.only in (None, 'cost'):
        rows = []
        for which in ('lite0', 'linear100m'):
            for g,r in cost(which).items(): rows.append(dict(model=which, guard=g, **{k:v*1000 for k,v in r.items()}))
        print('\nCost in milliseconds (per epoch; per `validate` call):\n')
        print(table(rows, ['model', 'guard', 'epoch_s', 'guard_s', 'validate_s', 'validate_guard_s']).replace('_s |', ' ms |'))
    if a.only in (None, 'reliability'):
        rows = reliability(range(a.seeds))
        print('\nStops per case ("" = ran to its end); before = b8f7330, after = this guard:\n')
        print(table(rows, ['kind', 'case', 'seed'] + (['truly'] if any('truly' in r for r in rows) else []) + ['before', 'after']) if all('truly' in r for r in rows) else
              table([{**r, 'truly': r.get('truly', '-')} for r in rows], ['kind', 'case', 'seed', 'truly', 'before', 'after']))
        for g in ('before', 'after'):
            h = [r for r in rows if r['kind'] == 'healthy']; dv = [r for r in rows if r['kind'] == 'divergent' and r['truly']]
            print(f"\n{g}: false positives {sum(bool(r[g]) for r in h)}/{len(h)} healthy runs; "
                  f"detected {sum(bool(r[g]) for r in dv)}/{len(dv)} truly divergent runs")
