"""Knowledge distillation on the demo task: a small CNN trained alone vs distilled from a fine-tuned EfficientNet-Lite0.

    python benchmarks/distill.py --seeds 0 1 2 --threads 1 --out distill.csv

Digits at 32x32 pixels. A teacher (EfficientNet-Lite0, `fine_tune_progressive`, seed 0) is fine-tuned once per teacher
setting (`--teachers DIR` saves it there, or loads it when it is already there). For each student setting,
`small_cnn(10)` is trained per seed from the same random weights, batch order, epochs and one-cycle schedule: alone,
and with `DistillationCallback(teacher, T, alpha)` for every pair of `--T` and `--alpha` (default 4 and 0.5). Prints one
row per run and a summary: mean ± std accuracy, the paired per-seed gain over the student alone (mean, min, max), and
the mean wall time of one student's training.

Student settings (`--settings`):
- `full`: all 1,438 training images; the teacher fine-tuned on the same images.
- `10-shot`: 10 training images per class; the teacher fine-tuned on all 1,438 (a big model trained once on all the
  labels, a small one trained where only a few examples are at hand).
- `10-shot-own-teacher`: 10 images per class for the teacher too.

By default the teacher's logits of the training images are computed once and looked up by each image's exact pixels
(`CachedTeacher`): digits have no augmentation and the teacher runs in eval mode, so each image's logits are the same in
every epoch. The first distilled epoch of each setting also runs the real teacher on every batch and asserts that the
looked-up logits match (the largest difference is printed); `--cache 0` runs the teacher on every batch instead.
"""
import argparse, hashlib, tempfile, time, warnings
import pandas as pd
from fastai.vision.all import *
from finetune_nb.data import digits_dls
from finetune_nb.finetune import finetune_learner
from finetune_nb.saving import save_finetuned, load_finetuned
from finetune_nb.finetune import *  # Learner.fine_tune_progressive
from finetune_nb.distill import DistillationCallback, small_cnn
warnings.filterwarnings('ignore')

SIZE = 32
TEACHERS = {  # name: (k_shot, batch size, epochs of the last phase of `fine_tune_progressive`)
    'full':    (None, 64, 3),
    '10-shot': (10,   16, 8),
}
SETTINGS = {  # name: (k_shot, batch size, student epochs, teacher)
    'full':                (None, 64, 8, 'full'),
    '10-shot':             (10,   16, 30, 'full'),
    '10-shot-own-teacher': (10,   16, 30, '10-shot'),
}

def _key(x:Tensor) -> bytes: return hashlib.sha1(x.cpu().numpy().tobytes()).digest()

class CachedTeacher(nn.Module):
    "The teacher's logits for the training images, computed once and looked up by each image's exact pixels"
    def __init__(self, teacher:nn.Module, dl, check_batches:int=0):
        super().__init__()
        self.teacher,self.check_batches,self.max_diff,self.cache = teacher.eval(),check_batches,0.,{}
        with torch.no_grad():
            for x,_ in dl.new(shuffle=False, drop_last=False):
                for xi,zi in zip(x, teacher(x)): self.cache[_key(xi)] = zi
    def forward(self, x):
        z = torch.stack([self.cache[_key(xi)] for xi in x]).to(x.device)  # KeyError: an input the teacher has not seen
        if self.check_batches > 0:  # prove the lookup equals running the teacher on this (shuffled) batch
            self.check_batches -= 1
            with torch.no_grad(): self.max_diff = max(self.max_diff, (self.teacher(x)-z).abs().max().item())
            assert self.max_diff < 1e-4, f"cached logits differ from the teacher's by {self.max_diff}"
        return z

def get_teacher(name, folder=None):
    "Fine-tune EfficientNet-Lite0 for teacher setting `name` (or load it from `folder`): its model, accuracy and time"
    k_shot,bs,epochs = TEACHERS[name]
    set_seed(0)
    dls = digits_dls(size=SIZE, bs=bs, k_shot=k_shot, seed=42)
    path = Path(folder)/f'teacher_{name}.pth' if folder else None
    meta = dict(arch='efficientnet_lite0', size=SIZE, k_shot=k_shot, bs=bs, epochs=epochs)
    if path is not None and path.exists():
        model,saved = load_finetuned(path)
        if any(saved.get(k) != v for k,v in meta.items()): raise ValueError(f"{path} was trained with other settings: {saved}")
        learn,secs = Learner(dls, model, metrics=accuracy),saved['seconds']
    else:
        learn = finetune_learner(dls, path=tempfile.mkdtemp())  # keep any files fine-tuning writes out of the way
        learn.remove_cb(ProgressCallback)
        t0 = time.time()
        with learn.no_logging(): learn.fine_tune_progressive(epochs=epochs, lr_max=1e-2)
        secs = time.time()-t0
        if path is not None: save_finetuned(learn, path, seconds=secs, **meta)
    learn.remove_cb(ProgressCallback)
    return learn.model.eval(), float(learn.validate()[1]), secs

def student(make_dls, seed, epochs, lr, cbs=()):
    "Train `small_cnn` from the weights and batch order of `seed`; its accuracy and training time"
    set_seed(seed)
    dls = make_dls()  # made after `set_seed`: a fastai DataLoader seeds its shuffling when it is created
    learn = Learner(dls, small_cnn(dls.c), metrics=accuracy, cbs=list(cbs))
    learn.remove_cb(ProgressCallback)
    t0 = time.time()
    with learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    return float(learn.validate()[1]), time.time()-t0

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--settings', nargs='+', default=['full', '10-shot'], choices=list(SETTINGS))
    p.add_argument('--T', type=float, nargs='+', default=[4.], help='temperatures; every (T, alpha) pair is a distilled variant')
    p.add_argument('--alpha', type=float, nargs='+', default=[0.5], help='weights of the soft term')
    p.add_argument('--lr', type=float, default=1e-2)
    p.add_argument('--teachers', default=None, help='folder to save the teachers in, or load them from')
    p.add_argument('--cache', type=int, default=1, help='look the teacher logits of training images up (1) or run the teacher on every batch (0)')
    p.add_argument('--threads', type=int, default=1, help="torch CPU threads (default 1: the shared 2-core machine; 0 for torch's choice)")
    p.add_argument('--out', default='distill.csv')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    t_start = time.time()
    rows,teachers,info = [],{},{}
    variants = [('distilled' if len(a.T)*len(a.alpha) == 1 else f'distilled T={T:g} alpha={alpha:g}', T, alpha) for T in a.T for alpha in a.alpha]
    for name in a.settings:
        k_shot,bs,s_epochs,t_name = SETTINGS[name]
        if t_name not in teachers:
            teachers[t_name] = get_teacher(t_name, a.teachers)
            info[f'teacher {t_name}'] = dict(accuracy=teachers[t_name][1], seconds=teachers[t_name][2])
            print(f"teacher {t_name}: accuracy {teachers[t_name][1]:.4f}, fine-tuned in {teachers[t_name][2]:.0f} s", flush=True)
        teacher = teachers[t_name][0]
        make_dls = partial(digits_dls, size=SIZE, bs=bs, k_shot=k_shot, seed=42)
        dls = make_dls()
        if a.cache:
            t0 = time.time()
            teacher = CachedTeacher(teacher, dls.train, check_batches=len(dls.train))  # checks the whole first epoch
            info[f'cache {name}'] = dict(seconds=time.time()-t0)
        for seed in a.seeds:
            for method,T,alpha in [('alone', None, None)] + variants:
                cbs = [DistillationCallback(teacher, T, alpha)] if T else []
                acc,secs = student(make_dls, seed, s_epochs, a.lr, cbs)
                rows.append(dict(setting=name, teacher=t_name, n_train=len(dls.train_ds), method=method, seed=seed,
                                 epochs=s_epochs, accuracy=acc, seconds=secs))
                print(rows[-1], flush=True)
                pd.DataFrame(rows).to_csv(a.out, index=False)
        if a.cache: info[f'cache {name}']['max_diff'] = teacher.max_diff
    df = pd.DataFrame(rows)
    summ = df.groupby(['setting', 'method'], sort=False).agg(acc_mean=('accuracy', 'mean'), acc_std=('accuracy', 'std'),
                                                            secs_mean=('seconds', 'mean'), runs=('seed', 'count'))
    gain = df.pivot_table(index=['setting', 'seed'], columns='method', values='accuracy')
    gain = pd.concat({m: (gain[m]-gain['alone']).groupby('setting', sort=False).agg(['mean', 'min', 'max']) for m,_,_ in variants}, names=['method'])
    print(f"\nT={a.T}, alpha={a.alpha}, lr={a.lr}, seeds {a.seeds}, cache={a.cache}, threads={torch.get_num_threads()}, "
          f"torch {torch.__version__}, total {time.time()-t_start:.0f} s")
    for k,v in info.items(): print(k, {kk:float(f'{vv:.4g}') for kk,vv in v.items()})
    print(summ.round(4).to_string())
    print('\npaired gain of distillation (accuracy, distilled - alone, per seed):')
    print(gain.round(4).to_string())
