"""Fine-tuning procedures compared on the demo task (digits, EfficientNet-Lite0 at 64px), same epochs and seeds.

    python benchmarks/engine.py --seeds 0 1 2 --out benchmarks/engine.csv

Prints one row per run and a summary (mean and spread of accuracy and wall time per method).
"""
import argparse, time, warnings
import pandas as pd
from fastai.vision.all import *
from finetune_nb.all import *
warnings.filterwarnings('ignore')

def run(method, seed, size=64, epochs=6):
    set_seed(seed)
    dls = digits_dls(size=size, seed=42)   # the split is fixed; the seed changes the head's init and the shuffling
    learn = finetune_learner(dls, pretrained=method != 'scratch')
    learn.remove_cb(ProgressCallback)
    t0 = time.time()
    if method == 'progressive': learn.fine_tune_progressive(epochs=epochs-3, lr_max=1e-2)      # 1+1+1 stages + 3
    elif method == 'fastai_fine_tune': learn.fine_tune(epochs-1, base_lr=2e-3)                # 1 frozen + 5
    elif method == 'fastai_fine_tune_lr1e-2': learn.fine_tune(epochs-1, base_lr=1e-2)
    elif method == 'scratch': learn.fit_one_cycle(epochs, 1e-2)
    secs = time.time()-t0
    return dict(method=method, seed=seed, epochs=len(learn.recorder.values) if method=='scratch' else epochs,
                accuracy=float(learn.validate()[1]), seconds=secs)

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--methods', nargs='+', default=['progressive', 'fastai_fine_tune', 'fastai_fine_tune_lr1e-2', 'scratch'])
    p.add_argument('--out', default='engine.csv')
    a = p.parse_args()
    rows = []
    for seed in a.seeds:
        for m in a.methods:
            rows.append(run(m, seed)); print(rows[-1], flush=True)
            pd.DataFrame(rows).to_csv(a.out, index=False)
    df = pd.DataFrame(rows)
    print(df.groupby('method').agg(acc_mean=('accuracy', 'mean'), acc_min=('accuracy', 'min'), acc_max=('accuracy', 'max'),
                                   secs_mean=('seconds', 'mean')).round(4).to_string())
