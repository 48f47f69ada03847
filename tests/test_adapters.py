"""Adapters as a layer-group policy (#15): exact trainable counts, a policy switch keeping optimiser state, merge equality,
a clear error for a layer LoRA cannot adapt, a saved schedule with policies, and `resume=True` after `kill -9` of a LoRA run.

Run as a script (`python tests/test_adapters.py CKPT_DIR OUT [--resume] [--batch-sleep S]`) it is the training process that
`test_resume_after_kill` kills and resumes.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
os.environ.setdefault('OMP_NUM_THREADS', '1')
import pytest, torch
torch.set_num_threads(1)

def lora_run_schedule():
    from finetune_nb.schedule import Schedule, Phase
    lora = dict(policy='lora', r=2, alpha=4)
    return Schedule([Phase(1, 1, 1e-2, name='head'),
                     Phase(1, 2, 1e-2, policy={1: lora, 'head': 'full'}, name='middle lora'),
                     Phase(1, 2, 5e-3, policy={0: dict(lora, dora=True), 1: lora, 'head': 'full'}, name='all lora')])

def main():
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument('ckpt_dir'); p.add_argument('out')
    p.add_argument('--resume', action='store_true'); p.add_argument('--batch-sleep', type=float, default=0.)
    a = p.parse_args()
    from fastai.basics import set_seed, Callback
    from fastai.callback.progress import ProgressCallback
    from finetune_nb.test_utils import synth_dls, tiny_learner
    import finetune_nb.finetune  # noqa: F401 (`Schedule.run`)
    class Sleep(Callback):
        def before_batch(self):
            if self.training and a.batch_sleep: time.sleep(a.batch_sleep)
    set_seed(0)
    learn = tiny_learner(synth_dls(n=96, bs=16, num_workers=0))
    learn.remove_cb(ProgressCallback)
    with learn.no_logging(): hist = lora_run_schedule().run(learn, cbs=Sleep(), resume=a.resume, ckpt_dir=a.ckpt_dir)
    torch.save(learn.model.state_dict(), a.out + '.pth')
    Path(a.out + '.json').write_text(json.dumps(dict(history=hist.drop(columns='phase_time').to_dict('records'))))

if __name__ == '__main__': main(); sys.exit()

from fastai.basics import Callback, Learner, CrossEntropyLossFlat, Tensor
from torch import nn
from finetune_nb.checkpoints import CheckpointError
from fastcore.test import test_eq as equals, test_close as close
from fastcore.test import test_fail as fails
from finetune_nb.test_utils import synth_dls, tiny_learner, TinyNet
from finetune_nb.schedule import Schedule, Phase
from finetune_nb.adapters import *
from finetune_nb.groups import is_adapter
import finetune_nb.finetune  # noqa: F401

def n_trainable(m): return sum(p.numel() for p in m.parameters() if p.requires_grad)

def test_exact_trainable_count():
    "The plan counts exactly what the model then trains, group by group, and a model that trains more is refused"
    learn = tiny_learner()
    pols = [dict(policy='lora', r=3, dora=True), dict(policy='lora', r=2), 'full']
    plan = policy_table(learn, pols)
    # by hand: conv 3->8 k3 and conv 8->16 k3 (LoRA A: r*c_in*9, B: c_out*r, DoRA: c_out), BatchNorms train ('train' policy), head 16*3+3
    equals(plan.trainable.tolist(), [3*3*9 + 8*3 + 8 + 16, 2*8*9 + 16*2 + 32, 51])
    learn.apply_policy(pols)
    equals(learn.group_table().trainable.tolist(), plan.trainable.tolist())
    equals(learn.group_table().policy.tolist(), ['lora r=3 dora', 'lora r=2', 'full'])  # what trains, group by group
    equals(n_trainable(learn.model), plan.trainable.sum())
    close(plan.train_mb.sum(), plan.trainable.sum()*4*4/2**20)  # float32 weight, gradient and Adam's two moments
    learn.model.classifier.weight.requires_grad_(False); learn.model.features[0].base_layer.weight.requires_grad_(True)
    fails(lambda: check_plan(learn, plan), contains="Group 0 (features.0 … features.1) trains")

def test_sneaky_trainable_refused_before_training():
    "A run whose model trains more than the plan says stops at the phase's start, before any weight moves"
    class Unfreeze(Callback):  # "tunable parts": something sets a frozen base weight trainable as the phase starts
        order = -100
        def before_fit(self): self.learn.model.features[3][0].base_layer.weight.requires_grad_(True)
    learn = tiny_learner()
    learn.apply_policy(['frozen', 'lora', 'full'])
    w = learn.model.features[3][0].base_layer.weight.detach().clone()
    sch = Schedule([Phase(1, 1, 1e-2, policy={1: 'lora', 'head': 'full'})])
    with pytest.raises(RuntimeError, match=r"Group 1 \(features.3\) trains 1,888 weights but its policy 'lora r=8' plans 736"):
        sch.run(learn, cbs=Unfreeze(), checkpoints=False)
    equals(learn.model.features[3][0].base_layer.weight, w)

def test_switch_keeps_optimiser_state():
    "Between phases, the head (training in both) keeps its Adam moments; the group that gets adapters starts with fresh ones"
    seen = []
    class Note(Callback):
        def before_fit(self):
            w = self.learn.model.classifier.weight
            seen.append((self.learn.ft_phase, {k:v.clone() for k,v in self.learn.opt.state[w].items() if isinstance(v, Tensor)}))
        def after_fit(self):
            w = self.learn.model.classifier.weight
            seen.append((self.learn.ft_phase, {k:v.clone() for k,v in self.learn.opt.state[w].items() if isinstance(v, Tensor)}))
    learn = tiny_learner()
    sch = Schedule([Phase(1, 1, 1e-2), Phase(1, 1, 1e-2, policy={1: 'lora', 'head': 'full'})])
    sch.run(learn, cbs=Note(), checkpoints=False)
    (_,s0),(_,end0),(_,start1),_ = seen
    assert 'grad_avg' not in s0 and 'grad_avg' in end0
    for k in ('grad_avg', 'sqr_avg'): equals(start1[k], end0[k])
    lora_a = learn.model.features[3][0].lora_A['default'].weight
    assert learn.opt.state[lora_a]['grad_avg'].abs().sum() > 0  # trained in phase 1, in group 1
    equals([learn.opt.param_lists.index(pl) for pl in learn.opt.param_lists if any(p is lora_a for p in pl)], [1])

def test_merge_equals_adapted():
    "After training LoRA and DoRA adapters on convs and a linear head, the merged model gives the adapted outputs within 1e-5"
    learn = tiny_learner()
    learn.apply_policy([dict(policy='lora', r=2, dora=True), dict(policy='lora', r=4, dropout=0.1), dict(policy='lora', r=2)])
    learn.fit(2, 3e-2)
    x = synth_dls().valid.one_batch()[0][:16].cpu()
    learn.model.cpu().eval()
    with torch.no_grad(): y0 = learn.model(x)
    learn.merge_adapters()
    assert not any(is_adapter(n) for n,_ in learn.model.named_parameters())
    equals(type(learn.model.classifier), nn.Linear)
    with torch.no_grad(): y1 = learn.model(x)
    assert (y0 - y1).abs().max() < 1e-5, (y0 - y1).abs().max()
    assert (y0 - TinyNet()(x)).abs().max() > 1e-3  # the adapters did change the outputs

def test_merge_exact_on_efficientnet():
    "On EfficientNet-Lite0 (convs, BatchNorm, depthwise convs left frozen) the merge is exact in float64, and in float32 within float32's own noise"
    import copy
    from fastai.basics import set_seed, trainable_params
    from finetune_nb.data import digits_dls
    from finetune_nb.finetune import finetune_learner
    set_seed(0)
    learn = finetune_learner(digits_dls(size=32, bs=16, num_workers=0), n_groups=4)
    learn.apply_policy(['full', dict(policy='lora', r=4, dora=True), dict(policy='lora', r=8), 'full'])
    g = torch.Generator().manual_seed(0)
    for m in learn.model.modules():  # as if trained: B (zero at the start) away from zero
        if hasattr(m, 'lora_B'): m.lora_B['default'].weight.data = torch.randn(m.lora_B['default'].weight.shape, generator=g)*0.05
    x = learn.dls.valid.one_batch()[0][:16].cpu()
    learn.model.cpu().eval()
    m64 = copy.deepcopy(learn.model).double()
    with torch.no_grad(): y32,a64 = learn.model(x),m64(x.double())
    assert (y32.double() - a64).abs().max() > 1e-7  # float32 rounding is visible at the logits
    learn.merge_adapters()
    with torch.no_grad(): z32 = learn.model(x)
    l64 = Learner(learn.dls, m64, loss_func=CrossEntropyLossFlat(), splitter=trainable_params).merge_adapters()
    assert not any(is_adapter(n) for n,_ in l64.model.named_parameters())
    with torch.no_grad(): b64 = l64.model.eval()(x.double())
    assert (a64 - b64).abs().max() < 1e-10, (a64 - b64).abs().max()  # float64: the merge leaves nothing out
    err = (z32 - y32).abs().max()
    assert err <= 4*(y32.double() - a64).abs().max() + 1e-7, err  # float32: no more than the adapted model's own rounding
    assert err/y32.abs().max() < 1e-5, err/y32.abs().max()

def test_unsupported_layer_is_named():
    "A group set to LoRA with an LSTM in it is refused before any work, naming the layer"
    class WithLSTM(nn.Module):
        def __init__(self): super().__init__(); self.emb,self.rnn,self.head = nn.Linear(3, 4),nn.LSTM(4, 4, batch_first=True),nn.Linear(4, 3)
        def forward(self, x): return self.head(self.rnn(self.emb(x.flatten(2).transpose(1, 2)))[0][:, -1])
    learn = Learner(synth_dls(), WithLSTM(), loss_func=CrossEntropyLossFlat(),
                    splitter=lambda m: [list(m.emb.parameters()) + list(m.rnn.parameters()), list(m.head.parameters())])
    sd = {k:v.clone() for k,v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"Phase 1 \(lora\): Group 0 \(emb … rnn\) is set to 'lora', but LoRA cannot adapt its layer rnn \(LSTM\)"):
        Schedule([Phase(1, 1), Phase('all', 1, policy='lora', name='lora')]).run(learn, checkpoints=False)
    for k,v in learn.model.state_dict().items(): equals(v, sd[k])  # the head phase did not run either

def test_saved_schedule_with_policies(tmp_path):
    "A schedule with per-group policies round-trips through JSON and YAML and runs the same from the file"
    sch = lora_schedule(3, epochs=1, lr_max=1e-2, top=1, r=2, dora=True, full_top=True, bn_policy='eval')
    for fn in ('s.json', 's.yaml'): equals(Schedule.load(sch.save(tmp_path/fn)), sch)
    assert '"1": {' in (tmp_path/'s.json').read_text()  # JSON writes the group index as a string key...
    back = Schedule.load(tmp_path/'s.json')
    equals(back.phases[1].policy[1], dict(policy='lora', r=2, alpha=16, dropout=0.0, dora=True))  # ...read back as the index
    learn = tiny_learner()
    back.run(learn, checkpoints=False)
    equals(learn.ft_log.history.name.tolist(), ['head', 'top 1 lora', 'all lora', 'top full'])
    equals([s['policy'] for s in learn.group_policies], ['lora', 'full', 'full'])
    equals(type(learn.model.features[3][0]), nn.Conv2d)  # merged by the last phase
    assert hasattr(learn.model.features[0], 'lora_magnitude_vector')

def test_restore_adapted(tmp_path):
    "A checkpoint of a LoRA phase loads into a model with other adapters after `restore_adapted` gives it the checkpoint's"
    learn = tiny_learner()
    lora_run_schedule().run(learn, ckpt_dir=tmp_path, keep='all')  # restore reads a phase's best
    # plain `restore` refuses, naming `restore_adapted`: the model's adapters are not the checkpoint's; it never loads weights into the wrong layers
    with pytest.raises(CheckpointError, match='restore_adapted'): learn.restore('middle lora', kind='best')
    meta = learn.restore_adapted('middle lora', kind='best')
    equals(meta['phase'], 1)
    sd = torch.load(tmp_path/'phase1_best.pth', weights_only=True)['model']
    for k,v in learn.model.state_dict().items(): equals(v, sd[k])
    learn.restore_adapted('start')
    assert not any(is_adapter(n) for n,_ in learn.model.named_parameters())
    other = tiny_learner()
    other.apply_policy(['frozen', dict(policy='lora', r=2, alpha=16), 'full'])  # the same layers and keys, another alpha
    other.restore_adapted('middle lora', kind='best', ckpt_dir=tmp_path)
    equals(other.model.features[3][0].scaling['default'], 4/2)  # the run's alpha/r, which no state dict holds
    for k,v in other.model.state_dict().items(): equals(v, sd[k])

def start(ckpt, out, *args):
    return subprocess.Popen([sys.executable, __file__, str(ckpt), str(out), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

def test_resume_after_kill(tmp_path):
    "`kill -9` during the LoRA phases, then `resume=True` in a new process: the same weights as the uninterrupted run"
    ckpt = tmp_path/'ckpt'
    full = start(tmp_path/'full_ckpt', tmp_path/'full')
    p = start(ckpt, tmp_path/'killed', '--batch-sleep', '0.15')
    t0 = time.time()
    def entry():
        try: return json.loads((ckpt/'manifest.json').read_text())['checkpoints'].get('resume') or {}
        except (FileNotFoundError, ValueError): return {}
    while entry().get('epoch', -1) < 2:  # epochs 0 (head) and 1 (first of 'middle lora') saved: the run is in its LoRA phase
        assert p.poll() is None, p.communicate()[0][-3000:]
        assert time.time() - t0 < 300, "timed out"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    killed_at = entry()
    assert not killed_at['finished'] and killed_at['phase'] >= 1, killed_at
    saved = torch.load(ckpt/'resume.pth', weights_only=True)['model']
    assert any('lora_A' in k for k in saved), "the resume state should hold the adapters' weights"
    r = start(ckpt, tmp_path/'resumed', '--resume')
    for q in (r, full):
        out = q.communicate(timeout=600)[0]
        assert q.returncode == 0, out[-3000:]
    a,b = (torch.load(tmp_path/f'{k}.pth', weights_only=True) for k in ('full', 'resumed'))
    equals(sorted(a), sorted(b))
    for k in a: assert torch.allclose(a[k], b[k], atol=1e-6), k
    ha,hb = (json.loads((tmp_path/f'{k}.json').read_text())['history'] for k in ('full', 'resumed'))
    equals([r['name'] for r in ha], [r['name'] for r in hb])
    for x,y in zip(ha, hb): close(x['valid_loss'], y['valid_loss'], eps=1e-5)
