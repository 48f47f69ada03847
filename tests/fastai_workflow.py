"""A plain fastai workflow, run by `test_fastai_citizen.py` in a fresh process without and with `from finetune_nb.all import *`.
Usage: python fastai_workflow.py OUT_DIR [--import-finetune-nb]; writes OUT_DIR/result.json"""
import sys, json, os, warnings
from pathlib import Path
out,with_ft = Path(sys.argv[1]),'--import-finetune-nb' in sys.argv
warnings.filterwarnings('ignore')
from fastai.vision.all import *
import fastai.vision.all as fva
before = {n: getattr(fva, n) for n in dir(fva) if not n.startswith('_')}
ns0 = {n for n in globals() if not n.startswith('_')}
if with_ft: from finetune_nb.all import *
torch.set_num_threads(1)
res = {}

X = torch.randn(144, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = (X.mean((1,2,3))*8).round().clamp(0, 2).long().tolist()
def get_x(i): return X[i]
def get_y(i): return Y[i]
def dls(bs=16):
    return DataBlock(blocks=(TransformBlock, CategoryBlock), get_x=get_x, get_y=get_y,
                     splitter=IndexSplitter(range(96, 144))).dataloaders(range(144), bs=bs, num_workers=0)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3,8,3,padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 3)
    def forward(self, x): return self.head(self.body(x))
def two_groups(m): return [params(m.body), params(m.head)]

def learner(split=True, **kw):
    set_seed(0)
    return Learner(dls(), Net(), loss_func=CrossEntropyLossFlat(), metrics=accuracy, splitter=two_groups if split else trainable_params, path=out, **kw)

def losses(l): return [[float(v) for v in row] for row in l.recorder.values]
def state(l): return [float(p.detach().double().sum()) for p in l.model.parameters()]

if True:
    l = learner(); l.fit_one_cycle(2, 1e-2); res['fit_one_cycle'] = losses(l); res['cbs'] = [type(c).__name__ for c in l.cbs]
    l = learner(split=False); l.fine_tune(1, 1e-2); res['fine_tune_single'] = losses(l)
    l = learner(); l.fine_tune(1, 1e-2); res['fine_tune_multi'] = losses(l); res['fine_tune_multi_w'] = state(l)
    l = learner(); l.freeze_to(1); res['frozen_rg'] = [p.requires_grad for p in l.model.parameters()]
    l.fit(1, 1e-2); res['after_frozen_fit_w'] = state(l)   # fastai's weight decay may move frozen weights: it must be fastai's
    l.unfreeze(); res['unfrozen_rg'] = [p.requires_grad for p in l.model.parameters()]
    l = learner(); s = l.lr_find(show_plot=False); res['lr_find'] = [float(s.valley)]
    l = learner(); l.fit(1, 1e-2); l.save('m'); l2 = learner(); l2.load('m'); res['save_load'] = state(l2) == state(l)
    p,t = l.get_preds(); res['get_preds'] = [float(p.sum()), float(t.float().sum())]
    res['validate'] = [float(v) for v in l.validate()]
    interp = ClassificationInterpretation.from_learner(l); res['confusion'] = interp.confusion_matrix().tolist()
    l.export('export.pkl'); res['export_cbs'] = [type(c).__name__ for c in load_learner(out/'export.pkl').cbs]
    try:
        l = learner(cbs=MixedPrecision(amp_mode='bf16')); l.fit(1, 1e-2); res['mixed_precision'] = losses(l)
    except Exception as e: res['mixed_precision'] = f"{type(e).__name__}: {e}"[:200]
res['files'] = sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file() and p.name != 'result.json')
res['shadowed'] = sorted(n for n,o in before.items() if n in globals() and globals()[n] is not o)
res['defaults_callbacks'] = [c.__name__ for c in defaults.callbacks]
res['learner_attrs'] = sorted(n for n in dir(Learner) if not n.startswith('_') and n in {'freeze_to','freeze','unfreeze','fine_tune','save','load','export','fit','fit_one_cycle','lr_find','validate','get_preds'}
                              and getattr(Learner, n).__module__.startswith('fastai'))
(out/'result.json').write_text(json.dumps(res))
