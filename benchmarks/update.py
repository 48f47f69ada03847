"""Keeping a model current (issue 14): a naive fine-tune on new data against `learn.update` with its defaults.

    OMP_NUM_THREADS=1 python benchmarks/update.py --seeds 0 1 2 --threads 1 --out update.csv

Digits at 32x32 pixels, `DigitCNN` (four conv blocks, 61k parameters), trained per seed on the old data (8 epochs of
one-cycle at 1e-2). Then, from the same weights, per scenario and seed:

- `naive`: `learn.update(new, replay=0, gate=None)`: a fine-tune on the new data alone, with the same schedule and the
  same head growth as `update` (so the only differences below are the replay and the gate);
- `replay`: `learn.update(new, gate=None)`: the default replay of 500 old items, no gate;
- `update`: `learn.update(new)` with every default (replay 500 items chosen by class and repeated to balance the classes,
  `UpdateGate()`, default schedule: head 1 epoch one-cycle, then all groups 3 epochs `flat_cos` at ULMFiT rates from
  1e-2). When the gate rejects, the model is the one from before: the summary's "kept model" columns count that;
- `bad`: `learn.update(new, lr_max=1.0)`, 100 times the default rate, with `DivergenceGuard(max_ratio=None)` (it stops
  NaN and inf only), so that the gate alone must catch it: it must reject it, and the model must then equal the backup
  bit for bit (`torch.equal` on every state-dict tensor);
- `bad+guard`: the same with finetune_nb's default guard, which stops a loss that explodes and loads back the fit's
  last good weights: the gate judges those.

Ablations (`--methods update no-balance one-cycle`, gate off): `no-balance` replays the 500 items once per epoch instead
of repeating them to balance the classes; `one-cycle` runs the all-groups phase with one-cycle instead of `flat_cos`.

Scenarios (`--scenarios`):
- `classes`: class-incremental. Old: the digits 0-4 (all their training images, plain). New: the digits 5-9 arrive.
- `drift`: the style drifts. Old: the ten digits, plain, half of the training images. New: the same digits written with
  thicker strokes (a 5x5 max filter), the other half of the training images.

Old-class accuracy is measured on the old validation images, new-data accuracy on the new validation images. Prints one
row per run, then per scenario and method the mean (min-max) over seeds, and checks the issue's goals: `update` keeps
old-data accuracy within 2 points of before, while reaching at least 90% of the naive fine-tune's new-data accuracy.
"""
import argparse, tempfile, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, torch
from fastai.basics import Learner, CrossEntropyLossFlat, accuracy, set_seed
from finetune_nb.groups import auto_splitter
from finetune_nb.test_utils import DigitCNN, digits_stream
from finetune_nb.update import update_schedule
from finetune_nb.guards import DivergenceGuard
import finetune_nb.update  # Learner.update
warnings.filterwarnings('ignore')

SCENARIOS = {  # name: (old data, new data, classes of the first model)
    'classes': (lambda: digits_stream(range(5)), lambda: digits_stream(range(5, 10)), 5),
    'drift':   (lambda: digits_stream(range(10), part=0), lambda: digits_stream(range(10), 'thick', part=1), 10),
}
METHODS = {  # name: keyword arguments of `learn.update`
    'naive':     lambda: dict(replay=0, gate=None),
    'replay':    lambda: dict(gate=None),
    'update':    lambda: dict(),
    'bad':       lambda: dict(lr_max=1.0, cbs=DivergenceGuard(max_ratio=None, verbose=False)),
    'bad+guard': lambda: dict(lr_max=1.0),
    # ablations of the defaults, without the gate (not run by default: `--methods update no-balance one-cycle`)
    'no-balance': lambda: dict(gate=None, balance=False),
    'one-cycle':  lambda: dict(gate=None, schedule=update_schedule(sched='one_cycle')),
}
DEFAULT_METHODS = ['naive', 'replay', 'update', 'bad', 'bad+guard']

def base_model(scenario:str, seed:int, path:Path) -> dict:
    "The state dict of a `DigitCNN` trained on the scenario's old data"
    old,_,n = SCENARIOS[scenario]
    set_seed(seed)
    learn = Learner(old(), DigitCNN(n), loss_func=CrossEntropyLossFlat(), metrics=accuracy, splitter=auto_splitter, path=path)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(8, 1e-2)
    return {k:v.clone() for k,v in learn.model.state_dict().items()}

def run(scenario:str, method:str, seed:int, sd:dict, path:Path) -> dict:
    "One update of the first model by `method`; accuracies before and after on the old and new validation data"
    old,new,n = SCENARIOS[scenario]
    learn = Learner(old(), DigitCNN(n), loss_func=CrossEntropyLossFlat(), metrics=accuracy, splitter=auto_splitter, path=path)
    learn.model.load_state_dict(sd)
    t0 = time.time()
    with learn.no_bar(), learn.no_logging():
        r = learn.update(new(), registry=path/f'{scenario}-{method}-{seed}', drift=method == 'update', seed=seed, **METHODS[method]())
    a = r.table.loc['all']
    own = learn.model.state_dict()
    identical = r.kept or all(torch.equal(own[k], v) for k,v in sd.items())
    return dict(scenario=scenario, method=method, seed=seed, kept=r.kept, old_before=a.old_before, old_after=a.old_after,
                new_before=a.new_before, new_after=a.new_after, old_kept=a.old_after if r.kept else a.old_before,
                new_kept=a.new_after if r.kept else a.new_before, rollback_identical=identical, seconds=time.time()-t0,
                drifted=r.drift.drifted if r.drift is not None else None, reasons=' | '.join(r.reasons),
                guard_stopped=bool(getattr(learn, 'diverged', None)))

def summary(df:pd.DataFrame) -> str:
    "Mean (min-max) per scenario and method, and the issue's goals"
    lines = []
    f = lambda s: f"{s.mean():.1%} ({s.min():.1%}-{s.max():.1%})"
    for scn,g in df.groupby('scenario', sort=False):
        lines.append(f"\n{scn}: old data before {f(g[g.method=='naive'].old_before)}, new data before {f(g[g.method=='naive'].new_before)}")
        lines.append(f"{'method':9s} {'old, trained':>22s} {'new, trained':>22s} {'kept':>5s} {'old, kept model':>22s} {'new, kept model':>22s} {'seconds':>8s}")
        for m,h in g.groupby('method', sort=False):
            lines.append(f"{m:9s} {f(h.old_after):>22s} {f(h.new_after):>22s} {int(h.kept.sum())}/{len(h):<3d} "
                         f"{f(h.old_kept):>22s} {f(h.new_kept):>22s} {h.seconds.mean():8.1f}")
        u,nv,b = (g[g.method==m].set_index('seed') for m in ('update', 'naive', 'bad'))
        drop,ratio = u.old_before - u.old_kept,u.new_kept/nv.new_after
        lines.append(f"goal: update's old-data drop <= 2 points: {'yes' if (drop <= 0.02+1e-9).all() else 'NO'} "
                     f"(change per seed: {', '.join(f'{d*100:+.1f}' for d in -drop)} points)")
        lines.append(f"goal: update's new-data accuracy >= 90% of naive's: {'yes' if (ratio >= 0.9).all() else 'NO'} "
                     f"(per seed: {', '.join(f'{x:.0%}' for x in ratio)})")
        lines.append(f"goal: the gate rejects lr 100x and the model equals the backup bit for bit: "
                     f"{'yes' if (~b.kept & b.rollback_identical).all() else 'NO'} ({int((~b.kept).sum())}/{len(b)} rejected)")
        if 'bad+guard' in set(g.method):
            bg = g[g.method=='bad+guard']
            lines.append(f"bad+guard: the guard stopped {int(bg.guard_stopped.sum())}/{len(bg)} runs; the gate rejected {int((~bg.kept).sum())}/{len(bg)}; "
                         f"rolled back bit for bit: {int((~bg.kept & bg.rollback_identical).sum())}/{int((~bg.kept).sum())}")
    return '\n'.join(lines)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--scenarios', nargs='+', default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument('--methods', nargs='+', default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default=None, help="CSV file for the rows")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for scn in a.scenarios:
            for seed in a.seeds:
                sd = base_model(scn, seed, Path(d))
                for m in a.methods:
                    rows.append(run(scn, m, seed, sd, Path(d)))
                    r = rows[-1]
                    print(f"{scn:8s} seed {seed} {m:9s} old {r['old_before']:.3f} -> {r['old_after']:.3f}  new {r['new_before']:.3f} -> {r['new_after']:.3f}"
                          f"  kept={r['kept']!s:5s} {r['seconds']:5.1f}s{' guard stopped' if r['guard_stopped'] else ''} {r['reasons'][:100]}", flush=True)
    df = pd.DataFrame(rows)
    if a.out: df.to_csv(a.out, index=False)
    if {'naive', 'update', 'bad'} <= set(a.methods): print(summary(df))
    else:
        for (scn,m),g in df.groupby(['scenario', 'method'], sort=False):
            print(f"{scn:8s} {m:10s} old-data change {100*(g.old_after-g.old_before).mean():+.2f} points (worst {100*(g.old_after-g.old_before).min():+.2f}), "
                  f"new-data accuracy {g.new_after.mean():.1%}")
