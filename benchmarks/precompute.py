"""`precompute` (fastai v0.7's: the head trained on cached features of the un-augmented items) against exact training with augmentation.

    OMP_NUM_THREADS=1 nice python benchmarks/precompute.py            # both tasks, seeds 0-2, ~10 min on one thread

Tasks (EfficientNet-Lite0, ImageNet weights, 4 layer groups as `finetune_learner` makes them, 32 px):
  - `digits`: scikit-learn's digits, 20 training images per class (200), 20% of the rest for validation, fastai's standard
    `item_tfms=Resize(32)` (a random crop) and `aug_transforms(do_flip=False, min_scale=0.8)`;
  - `shapes`: procedurally drawn circles, squares, triangles and crosses (random size, place, colours, noise) on 40x48
    canvases, 15 training images per class, 50 per class for validation, `Resize(32)` (a random crop) and `FlipItem`.
Schedule: the head for `--head` epochs at 1e-2, then every group for `--all` epochs at 1e-2 (ULMFiT rates), BatchNorm policy
'adapt', no checkpoints. Methods: `exact` (augmentation in every phase; the cache stands aside and says so) and
`precompute` (`Schedule(..., precompute=True)`: the head phase on cached features of the un-augmented items).
Reported: validation accuracy after the run, seconds of the head phase and of the whole run.
"""
import argparse, contextlib, io, time, warnings
import numpy as np, pandas as pd, torch
from PIL import Image, ImageDraw
from fastai.vision.all import *
from finetune_nb.all import *
from finetune_nb.data import digits_arrays, digits_split
warnings.filterwarnings('ignore')

def _img(imgs, i): return PILImage.create(imgs[i])
def _lbl(ys, i): return ys[i]

def item_dls(imgs, ys, trn, val, item_tfms, batch_tfms=(), bs=32):
    items = np.concatenate([trn, val])
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=partial(_img, imgs), get_y=partial(_lbl, ys),
                       splitter=IndexSplitter(range(len(trn), len(items))), item_tfms=item_tfms,
                       batch_tfms=[*batch_tfms, Normalize.from_stats(*imagenet_stats)])
    return dblock.dataloaders(items, bs=bs, num_workers=0)

def digits_task(seed=42):
    imgs,ys = digits_arrays()
    trn,val = digits_split(ys, 0.2, seed, 20)
    return item_dls(imgs, ys, trn, val, Resize(32), aug_transforms(do_flip=False, min_scale=0.8))

def shape(kind, rng, h=40, w=48):
    "One noisy image of a shape of `kind` at a random place, size and colour"
    bg,fg = rng.integers(0, 120, 3),rng.integers(130, 256, 3)
    im = Image.fromarray((np.clip(bg + rng.normal(0, 20, (h, w, 3)), 0, 255)).astype(np.uint8))
    d,r = ImageDraw.Draw(im),rng.integers(7, 14)
    cx,cy = rng.integers(r, w-r),rng.integers(r, h-r)
    box,col = [cx-r, cy-r, cx+r, cy+r],tuple(int(o) for o in fg)
    if kind == 0: d.ellipse(box, fill=col)
    elif kind == 1: d.rectangle(box, fill=col)
    elif kind == 2: d.polygon([(cx, cy-r), (cx-r, cy+r), (cx+r, cy+r)], fill=col)
    else: d.rectangle([cx-r, cy-r//3, cx+r, cy+r//3], fill=col); d.rectangle([cx-r//3, cy-r, cx+r//3, cy+r], fill=col)
    return np.asarray(im)

def shapes_task(n_train=15, n_valid=50):
    rng = np.random.default_rng(0)
    ys = np.array([k for k in range(4) for _ in range(n_train + n_valid)])
    imgs = np.stack([shape(k, rng) for k in ys])
    idx = np.arange(len(ys)); first = idx % (n_train+n_valid) < n_train
    return item_dls(imgs, ys, idx[first], idx[~first], [Resize(32), FlipItem(0.5)])

tasks = dict(digits=digits_task, shapes=shapes_task)

def run(task, method, seed, head, all_, lr=1e-2):
    set_seed(seed)
    learn = finetune_learner(tasks[task]())
    learn.remove_cb(ProgressCallback)
    sch = Schedule([Phase(1, head, lr, name='head'), Phase('all', all_, lr, name='all')], bn_policy='adapt', precompute=method == 'precompute')
    out = io.StringIO(); t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), learn.no_logging(): h = sch.run(learn, checkpoints=False)
    secs = time.perf_counter() - t0
    notes = [l for l in out.getvalue().splitlines() if l.startswith('FeatureCache: ') and 'computing' not in l]
    return dict(task=task, method=method, seed=seed, accuracy=float(h.accuracy.iloc[-1]), head_s=float(h[h.phase == 0].phase_time.iloc[-1]),
                total_s=secs, builds=learn.feature_cache.builds, notice=notes[0] if notes else '')

def summary(df):
    g = df.groupby(['task', 'method'], sort=False)
    rows = [f"| {t} | {m} | {100*d.accuracy.mean():.1f}% ({100*d.accuracy.min():.1f}-{100*d.accuracy.max():.1f}) | "
            f"{d.head_s.mean():.1f} | {d.total_s.mean():.1f} |" for (t,m),d in g]
    return '\n'.join(["| task | method | accuracy, mean (min-max) | head phase s | whole run s |", "|---|---|---|---|---|", *rows])

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--tasks', nargs='+', default=list(tasks))
    p.add_argument('--methods', nargs='+', default=['exact', 'precompute'])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--head', type=int, default=4, help='epochs of the head phase')
    p.add_argument('--all', type=int, default=3, help='epochs with every group training')
    a = p.parse_args()
    torch.set_num_threads(1)
    res = []
    for t in a.tasks:
        for s in a.seeds:
            for m in a.methods:
                res.append(run(t, m, s, a.head, a.all))
                print(f"{t} {m} seed {s}: {res[-1]['accuracy']:.3f} in {res[-1]['total_s']:.1f} s (head {res[-1]['head_s']:.1f} s)", flush=True)
    df = pd.DataFrame(res)
    print(df.drop(columns='notice').to_string())
    for (t,m),d in df.groupby(['task', 'method'], sort=False): print(f"{t}, {m}: {d.notice.iloc[0]}")
    print(summary(df))
