"""Frozen phases with and without the feature cache, against fastai's frozen epoch; whole fine-tunes; peak memory.

    python benchmarks/frozen_cache.py                      # everything, CPU, ~15 min on 2 idle cores
    python benchmarks/frozen_cache.py --parts frozen       # only the frozen-epoch comparison
    python benchmarks/frozen_cache.py --device cuda        # the same on a GPU

Part `frozen`: on the demo task (EfficientNet-Lite0, digits at 64px) and on a larger setting (the same network at
128px, 4x the pixels), three head-only fits of `--epochs` epochs each:
  - `cached`:   finetune_nb with the 'eval' BatchNorm policy; `FeatureCache` on (the default);
  - `uncached`: the same, `FeatureCache(enabled=False)`;
  - `fastai`:   fastai's own frozen epoch as `fine_tune` runs it: `freeze()` with fastai's default of training the
                norm layers of frozen groups (`train_bn=True`), `fit_one_cycle`.
The first epoch of `cached` includes building the cache; later epochs use it. Reported: seconds of the first and the
median later epoch, and the peak resident memory of the process above its level before the fit.
Part `whole`: whole fine-tunes on the demo task, same 6 epochs, seeds `--seeds`: fastai's `fine_tune(5, 1e-2)`,
finetune_nb's progressive schedule with BatchNorm policy 'train' (the demo's default) and 'eval' (cached phases).
"""
import argparse, time, threading, warnings, statistics, os
import pandas as pd, psutil, torch
from fastai.vision.all import *
from finetune_nb.all import *
warnings.filterwarnings('ignore')

class EpochTimer(Callback):
    "Wall seconds of every epoch"
    order = 100
    def before_fit(self): self.times = []
    def before_epoch(self): self.t0 = time.perf_counter()
    def after_epoch(self): self.times.append(time.perf_counter()-self.t0)

class PeakRSS:
    "Peak resident memory (MiB) of this process above its level at entry, sampled every 20 ms (and CUDA's own peak)"
    def __enter__(self):
        self.p,self.base,self.peak,self.stop = psutil.Process(),psutil.Process().memory_info().rss,0,False
        if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
        self.t = threading.Thread(target=self._run, daemon=True); self.t.start(); return self
    def _run(self):
        while not self.stop: self.peak = max(self.peak, self.p.memory_info().rss); time.sleep(0.02)
    def __exit__(self, *a):
        self.stop = True; self.t.join()
        self.mib = max(0, self.peak-self.base)/2**20
        self.cuda_mib = torch.cuda.max_memory_allocated()/2**20 if torch.cuda.is_available() else float('nan')

def learner(size, device, cache=True, bs=64, seed=0):
    set_seed(seed)
    dls = digits_dls(size=size, bs=bs, seed=42, device=device)
    learn = finetune_learner(dls, cbs=[FeatureCache(enabled=cache, verbose=False), EpochTimer()])
    learn.remove_cb(ProgressCallback)
    return learn

def frozen(method, size, epochs, device):
    learn = learner(size, device, cache=method == 'cached')
    learn.set_bn_policy('train' if method == 'fastai' else 'eval')
    learn.freeze()
    with PeakRSS() as m: learn.fit_one_cycle(epochs, 1e-2)
    t = learn.epoch_timer.times
    return dict(part='frozen', size=size, method=method, first_epoch_s=t[0], later_epoch_s=statistics.median(t[1:]),
                accuracy=float(learn.recorder.values[-1][2]), peak_rss_mib=m.mib, cuda_peak_mib=m.cuda_mib,
                cache=learn.feature_cache.reason)

def unfrozen_memory(size, device):
    "Peak memory of one epoch with every group training, for comparison with the frozen phases"
    learn = learner(size, device)
    with PeakRSS() as m: learn.fit_one_cycle(1, 1e-3)
    return dict(part='frozen', size=size, method='all groups training', first_epoch_s=learn.epoch_timer.times[0],
                later_epoch_s=float('nan'), accuracy=float(learn.recorder.values[-1][2]), peak_rss_mib=m.mib,
                cuda_peak_mib=m.cuda_mib, cache=learn.feature_cache.reason)

def whole(method, seed, device, size=64):
    learn = learner(size, device, seed=seed)
    t0 = time.perf_counter()
    with PeakRSS() as m:
        if method == 'fastai fine_tune(5, 1e-2)': learn.fine_tune(5, base_lr=1e-2)
        else: learn.fine_tune_progressive(epochs=3, lr_max=1e-2, bn_policy=method.split("'")[1])
    return dict(part='whole', size=size, method=method, seed=seed, seconds=time.perf_counter()-t0,
                accuracy=float(learn.validate()[1]), peak_rss_mib=m.mib, cuda_peak_mib=m.cuda_mib)

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--parts', nargs='+', default=['frozen', 'whole'])
    p.add_argument('--sizes', type=int, nargs='+', default=[64, 128])
    p.add_argument('--epochs', type=int, default=3, help="epochs of each frozen fit")
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default='frozen_cache.csv')
    a = p.parse_args()
    print(f"torch {torch.__version__}, device {a.device}"
          + (f" ({torch.cuda.get_device_name()})" if a.device.startswith('cuda') else f", {os.cpu_count()} CPU cores"), flush=True)
    rows = []
    def log(r): rows.append(r); print(r, flush=True); pd.DataFrame(rows).to_csv(a.out, index=False)
    if 'frozen' in a.parts:
        for size in a.sizes:
            for method in ('fastai', 'uncached', 'cached'): log(frozen(method, size, a.epochs, a.device))
            log(unfrozen_memory(size, a.device))
    if 'whole' in a.parts:
        for seed in a.seeds:
            for method in ("fastai fine_tune(5, 1e-2)", "progressive, bn 'train'", "progressive, bn 'eval'"):
                log(whole(method, seed, a.device))
    df = pd.DataFrame(rows)
    if 'frozen' in a.parts:
        f = df[df.part == 'frozen'].copy()
        for size in a.sizes:
            s = f['size'] == size  # the column, not DataFrame.size
            base = f[s & (f.method == 'fastai')].later_epoch_s.iloc[0]
            f.loc[s, 'speedup_vs_fastai'] = base / f[s].later_epoch_s
        print(f[['size', 'method', 'first_epoch_s', 'later_epoch_s', 'speedup_vs_fastai', 'peak_rss_mib', 'cuda_peak_mib']].round(3).to_string(index=False))
    if 'whole' in a.parts:
        w = df[df.part == 'whole']
        print(w.groupby('method', sort=False).agg(accuracy=('accuracy', 'mean'), acc_min=('accuracy', 'min'),
              seconds=('seconds', 'mean'), peak_rss_mib=('peak_rss_mib', 'max')).round(4).to_string())
