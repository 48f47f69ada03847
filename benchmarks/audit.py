"""The data audit (#12) against the anchor, and what its automatic fixes buy in a fine-tune.

    OMP_NUM_THREADS=1 python benchmarks/audit.py                      # audit vs anchor, seeds 0 1 2 (~10 min on 2 shared cores)
    OMP_NUM_THREADS=1 python benchmarks/audit.py --finetune           # and the fine-tunes: noisy vs cleaned vs true (~45 min more)
    OMP_NUM_THREADS=1 python benchmarks/audit.py --copy-noise 6 --copy-dim 0.1   # harder near-copies

Data (`CorruptedDigits`, one per seed of the corruption): scikit-learn's 1,797 digits in the usual seeded split
(1,437 train / 360 valid... as `digits_split`), 8% of them (143) with a flipped label at seeded random positions in both
splits, 10 near-copies of training digits put in training (near-duplicates), 10 near-copies of validation digits put in
training (leaks), 10 images of uniform noise in training (outliers). A near-copy is dimmed by up to `--copy-dim` and
gets Gaussian pixel noise of `--copy-noise` grey levels (of 255).

Methods, timed side by side in one process, each from raw images to its result:
  - `audit_data`: finetune_nb's audit (one forward pass; pooled features of the layer groups that predict the labels
    best; 5 folds of an L2 logistic regression on cached features; cleanlab's self-confidence ranking and
    find_label_issues; near-duplicates, leaks and outliers from nearest neighbours).
  - `anchor`: the issue's anchor: frozen EfficientNet-Lite0 features (the head's input, 64 px), scikit-learn's
    `LogisticRegression` in `cross_val_predict(cv=5, method='predict_proba')`, cleanlab's `find_label_issues`
    ranked by self-confidence. It finds label issues only.
Label-issue figures leave the 10 noise images out (their labels are neither right nor wrong): precision and recall of
the flagged set, precision in the top k (k = number flipped) and recall in the top 2k of the full ranking.

`--finetune`: for each seed, three fine-tunes with the same schedule (fastai's `fine_tune(4, 1e-2)`, EfficientNet-Lite0,
32 px, bs 64, `set_seed(seed)`) on the noisy labels, on the noisy labels after the audit's suggested fixes for the
training set (`suggest_fixes()`, train rows only: relabel or remove flagged items, remove outliers, leaks' training
side and near-duplicates), and on the true labels; all evaluated on the validation images with their TRUE labels, leaving
out the 10 validation items whose copies are in training (the noisy and true runs train on those copies, the cleaned run
does not: they would favour the leak, not the labels; the figures with them are given too).
Recovered share = (cleaned - noisy) / (true - noisy).
"""
import argparse, json, os, time, warnings
warnings.filterwarnings('ignore')
import numpy as np, pandas as pd, torch
from fastai.vision.all import *
from finetune_nb.models import efficientnet_lite0
from finetune_nb.groups import auto_splitter
from finetune_nb.data import CorruptedDigits
from finetune_nb.audit import audit_data
from finetune_nb.fixes import apply_fixes

def truth_sets(cd):
    return dict(flipped=set(zip(cd.flipped.split, cd.flipped.idx)), outliers=set(zip(cd.outliers.split, cd.outliers.idx)),
                dups=set(zip(cd.duplicates.idx_a, cd.duplicates.idx_b)), leaks=set(zip(cd.leaks.train_idx, cd.leaks.valid_idx)))

def label_metrics(ranked:list, flagged:set, truth:dict) -> dict:
    "Figures of a ranking (list of (split, idx), most suspicious first) and a flagged set, noise images left out"
    fl,out = truth['flipped'],truth['outliers']
    ranked = [r for r in ranked if r not in out]
    flagged = flagged - out
    k = len(fl)
    return dict(flagged=len(flagged), flag_precision=len(flagged & fl)/max(len(flagged), 1), flag_recall=len(flagged & fl)/k,
                precision_at_k=len(set(ranked[:k]) & fl)/k, recall_at_2k=len(set(ranked[:2*k]) & fl)/k)

def run_audit(cd, size, seed):
    t0,c0 = time.perf_counter(),time.process_time()
    dls = cd.dls(size=size, bs=128)
    learn = Learner(dls, efficientnet_lite0(dls.c), splitter=auto_splitter)
    audit = audit_data(learn, seed=seed)
    secs,cpu = time.perf_counter() - t0,time.process_time() - c0
    s = audit.scores
    tr = truth_sets(cd)
    res = label_metrics(list(zip(s.split, s.idx)), set(zip(s.split[s.flagged], s.idx[s.flagged])), tr)
    dups,leaks,outs = set(zip(audit.duplicates.idx_a, audit.duplicates.idx_b)),set(zip(audit.leaks.train_idx, audit.leaks.valid_idx)),set(zip(audit.outliers.split, audit.outliers.idx))
    res.update(dup_recall=len(dups & tr['dups'])/len(tr['dups']), dup_found=len(dups),
               leak_recall=len(leaks & tr['leaks'])/len(tr['leaks']), leak_found=len(leaks),
               outlier_recall=len(outs & tr['outliers'])/len(tr['outliers']), outlier_found=len(outs),
               seconds=secs, cpu_seconds=cpu, groups=' '.join(audit.groups), **{f's_{k}': v for k,v in audit.seconds.items()})
    return res, audit

def run_anchor(cd, size, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict, StratifiedKFold
    from cleanlab.filter import find_label_issues
    t0,c0 = time.perf_counter(),time.process_time()
    dls = cd.dls(size=size, bs=128)
    m = efficientnet_lite0(10).eval()
    xs,ys,where = [],[],[]
    with torch.no_grad():
        for name,dl in (('train', dls.train), ('valid', dls.valid)):
            with dl.dataset.set_split_idx(1):
                for x,y in dl.new(shuffle=False, drop_last=False):
                    xs.append(m.forward_head(m.forward_features(x), pre_logits=True)); ys.append(y)
            where += [(name, i) for i in range(len(dl.dataset))]
    X,y = torch.cat(xs).numpy(),torch.cat(ys).numpy()
    t1 = time.perf_counter()
    probs = cross_val_predict(LogisticRegression(max_iter=1000), X, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed), method='predict_proba')
    t2 = time.perf_counter()
    ranked_flagged = find_label_issues(y, probs, return_indices_ranked_by='self_confidence')
    order = np.argsort(probs[np.arange(len(y)), y], kind='stable')   # self-confidence ranking of every item
    secs,cpu = time.perf_counter() - t0,time.process_time() - c0
    res = label_metrics([where[i] for i in order], {where[i] for i in ranked_flagged}, truth_sets(cd))
    res.update(seconds=secs, cpu_seconds=cpu, s_features=t1-t0, s_cross_validation=t2-t1)
    return res

def finetune(dls, valid_true, unleaked, seed, epochs=4, lr=1e-2):
    "Accuracy on the true validation labels, of all validation items and of those without a copy in training"
    set_seed(seed)
    learn = Learner(dls, efficientnet_lite0(dls.c), splitter=auto_splitter, metrics=accuracy)
    learn.remove_cb(ProgressCallback)
    t0 = time.perf_counter()
    with learn.no_logging(): learn.fine_tune(epochs, lr)
    p,_ = learn.get_preds(dl=valid_true)
    right = (p.argmax(1) == tensor([y for _,y in valid_true.dataset])).float()
    return float(right[unleaked].mean()), float(right.mean()), time.perf_counter()-t0

def run_finetunes(cd, audit, seed, size=32):
    noisy = cd.dls(size=size, bs=64)
    true = cd.dls(size=size, bs=64, true_labels=True)
    fx = audit.suggest_fixes()
    cleaned = apply_fixes(noisy, fx[fx.split == 'train'])
    unleaked = np.setdiff1d(np.arange(len(true.valid_ds)), cd.leaks.valid_idx)  # a leaked item is easy for the runs that train on its copy
    res = {}
    for name,d in (('noisy', noisy), ('cleaned', cleaned), ('true', true)):
        res[f'acc_{name}'],res[f'acc_all_{name}'],res[f'ft_s_{name}'] = finetune(d, true.valid, unleaked, seed)
        print(f"    fine-tune on {name} labels: {res[f'acc_{name}']:.4f} without the leaked items, {res[f'acc_all_{name}']:.4f} with them ({res[f'ft_s_{name}']:.0f} s)", flush=True)
    res['n_train_cleaned'] = len(cleaned.train_ds)
    for k in ('', 'all_'):
        lost = res[f'acc_{k}true'] - res[f'acc_{k}noisy']
        res[f'recovered{"_all" if k else ""}'] = (res[f'acc_{k}cleaned'] - res[f'acc_{k}noisy'])/lost if lost > 0 else float('nan')
    return res

def markdown(rows:pd.DataFrame, ft:pd.DataFrame|None) -> str:
    f2 = lambda v: f"{v:.2f}"
    out = ["| seed | method | flagged | flag precision | flag recall | precision@k | recall@2k | dup recall (found) | leak recall (found) | outliers (found) | wall s | CPU s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows.itertuples():
        extra = (f"{f2(r.dup_recall)} ({r.dup_found:.0f}) | {f2(r.leak_recall)} ({r.leak_found:.0f}) | {f2(r.outlier_recall)} ({r.outlier_found:.0f})"
                 if r.method == 'audit_data' else "- | - | -")
        out.append(f"| {r.seed} | {r.method} | {r.flagged} | {f2(r.flag_precision)} | {f2(r.flag_recall)} | {f2(r.precision_at_k)} | {f2(r.recall_at_2k)} | {extra} | {r.seconds:.0f} | {r.cpu_seconds:.0f} |")
    mean = rows.groupby('method', sort=False)[['flagged', 'flag_precision', 'flag_recall', 'precision_at_k', 'recall_at_2k', 'seconds', 'cpu_seconds']].mean()
    for m,r in mean.iterrows():
        out.append(f"| mean | {m} | {r.flagged:.0f} | {f2(r.flag_precision)} | {f2(r.flag_recall)} | {f2(r.precision_at_k)} | {f2(r.recall_at_2k)} | | | | {r.seconds:.0f} | {r.cpu_seconds:.0f} |")
    if ft is not None and len(ft):
        out += ["", "Accuracy on the true labels of the validation items without a copy in training (all validation items in brackets):", "",
                "| seed | noisy | cleaned | true | recovered | training items after fixes |", "|---|---|---|---|---|---|"]
        for r in ft.itertuples():
            out.append(f"| {r.seed} | {r.acc_noisy:.4f} ({r.acc_all_noisy:.4f}) | {r.acc_cleaned:.4f} ({r.acc_all_cleaned:.4f}) | {r.acc_true:.4f} ({r.acc_all_true:.4f}) | "
                       f"{r.recovered:.2f} ({r.recovered_all:.2f}) | {r.n_train_cleaned} |")
        m = ft.mean(numeric_only=True)
        out.append(f"| mean | {m.acc_noisy:.4f} ({m.acc_all_noisy:.4f}) | {m.acc_cleaned:.4f} ({m.acc_all_cleaned:.4f}) | {m.acc_true:.4f} ({m.acc_all_true:.4f}) | "
                   f"{(m.acc_cleaned-m.acc_noisy)/(m.acc_true-m.acc_noisy):.2f} ({(m.acc_all_cleaned-m.acc_all_noisy)/(m.acc_all_true-m.acc_all_noisy):.2f}) of the means | |")
    return '\n'.join(out)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--size', type=int, default=64, help="image size of the audit and the anchor (default 64)")
    p.add_argument('--copy-noise', type=float, default=4.)
    p.add_argument('--copy-dim', type=float, default=0.05)
    p.add_argument('--finetune', action='store_true', help="also fine-tune on noisy, cleaned and true labels")
    p.add_argument('--no-anchor', action='store_true')
    p.add_argument('--json', default=None, help="append each result as a JSON line to this file")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', 1)))
    print(f"torch threads: {torch.get_num_threads()}; size {a.size}; seeds {a.seeds}; near-copies: dim {a.copy_dim}, noise {a.copy_noise}", flush=True)
    rows,fts = [],[]
    for seed in a.seeds:
        n0,f0 = len(rows),len(fts)
        cd = CorruptedDigits(seed=seed, copy_noise=a.copy_noise, copy_dim=a.copy_dim)
        anchor_first = not a.no_anchor and seed % 2 == 1   # alternate the order: the machine's load drifts
        if anchor_first: rows.append(dict(seed=seed, method='anchor', **run_anchor(cd, a.size, seed))); print(rows[-1], flush=True)
        r,audit = run_audit(cd, a.size, seed)
        rows.append(dict(seed=seed, method='audit_data', **r)); print(rows[-1], flush=True)
        if not a.no_anchor and not anchor_first:
            rows.append(dict(seed=seed, method='anchor', **run_anchor(cd, a.size, seed))); print(rows[-1], flush=True)
        if a.finetune:
            fts.append(dict(seed=seed, **run_finetunes(cd, audit, seed))); print(fts[-1], flush=True)
        if a.json:
            with open(a.json, 'a') as f:
                for x in rows[n0:] + fts[f0:]: f.write(json.dumps(x) + '\n')
    print('\n' + markdown(pd.DataFrame(rows), pd.DataFrame(fts) if fts else None))
