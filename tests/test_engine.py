"""The engine's promises, checked on three kinds of model: a custom `nn.Module` (BatchNorm, nested Sequentials),
a timm model, and a torchvision ResNet inside fastai's `vision_learner`."""
import numpy as np, pytest, torch, timm
from torch import nn
from fastai.vision.all import Learner, CrossEntropyLossFlat, vision_learner, resnet18, set_seed, norm_bias_params
from finetune_nb.test_utils import synth_dls
torch.set_num_threads(1)
from finetune_nb.all import auto_splitter, AutoSplitter, check_groups, discriminative_lrs, GroupRecorder

class Net(nn.Module):
    def __init__(self, n_out=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3,8,3,padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Sequential(nn.Conv2d(8,16,3,padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                                    nn.Sequential(nn.Conv2d(16,16,3,padding=1), nn.BatchNorm2d(16), nn.ReLU())),
                                      nn.Sequential(nn.Conv2d(16,32,3,padding=1), nn.BatchNorm2d(32), nn.ReLU()),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(32, n_out)
    def forward(self, x): return self.classifier(self.features(x))

def make(kind):
    set_seed(0)
    dls = synth_dls(n=64, size=32, bs=16)
    if kind == 'custom': return Learner(dls, Net(), loss_func=CrossEntropyLossFlat(), splitter=auto_splitter)
    if kind == 'timm': return Learner(dls, timm.create_model('resnet10t', num_classes=3), loss_func=CrossEntropyLossFlat(), splitter=auto_splitter)
    return vision_learner(dls, resnet18, pretrained=False, n_out=3, loss_func=CrossEntropyLossFlat(), splitter=auto_splitter)

GROUPS = {'custom': ['features.0 … features.1', 'features.3', 'features.4', 'classifier'],
          'timm': ['conv1 … bn1', 'layer1', 'layer2', 'layer3', 'layer4', 'fc'],
          'vision_learner': ['0.0 … 0.1', '0.4', '0.5', '0.6', '0.7', '1']}
KINDS = list(GROUPS)

@pytest.mark.parametrize('kind', KINDS)
def test_groups_found(kind):
    learn = make(kind)
    assert list(learn.group_names) == GROUPS[kind]
    assert learn.group_table().params.sum() == sum(p.numel() for p in learn.model.parameters())

def norm_ids(m): return set(map(id, norm_bias_params(m, with_bias=False)))

@pytest.mark.parametrize('kind', KINDS)
def test_frozen_get_no_gradient_and_do_not_change(kind):
    learn = make(kind)
    learn.set_trainable([-2, -1])
    norms = norm_ids(learn.model)
    frozen = [p for pg in learn.opt.param_lists[:-2] for p in pg if id(p) not in norms]
    before = [p.detach().clone() for p in frozen]
    head = learn.opt.param_lists[-1][0]; h0 = head.detach().clone()
    learn.fit(1, 1e-2)
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    assert all(torch.equal(a, b) for a,b in zip(frozen, before))
    assert not torch.equal(head, h0)

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('fit', ['one_cycle', 'stlr'])
def test_lr_ratio_is_the_factor_at_every_step(kind, fit):
    learn = make(kind)
    learn.add_cb(GroupRecorder())
    lrs = discriminative_lrs(1e-2, learn.n_groups, 2.6)
    getattr(learn, f'fit_{fit}')(2, lrs)
    rec = learn.group_recorder.values('lr')
    assert rec.shape == (2*len(learn.dls.train), learn.n_groups)
    np.testing.assert_allclose(rec[:,1:]/rec[:,:-1], 2.6, rtol=1e-6)

@pytest.mark.parametrize('kind', KINDS)
def test_optimizer_state_survives_unfreeze(kind):
    learn = make(kind)
    learn.set_trainable(-1)
    learn.fit(1, 1e-3)
    head = learn.opt.param_lists[-1]
    states = [learn.opt.state[p]['grad_avg'].clone() for p in head]
    learn.set_trainable([-2, -1], keep_state=True)
    assert all(torch.equal(learn.opt.state[p]['grad_avg'], s) for p,s in zip(head, states))
    norms = norm_ids(learn.model)
    assert not any('grad_avg' in learn.opt.state[p] for p in learn.opt.param_lists[-2] if id(p) not in norms)
    learn.fit(1, 1e-3)   # and training goes on from there
    assert not all(torch.equal(learn.opt.state[p]['grad_avg'], s) for p,s in zip(head, states))

def bn_of_group(learn, i):
    ids = set(map(id, learn.opt.param_lists[i]))
    return next(m for m in learn.model.modules() if isinstance(m, nn.BatchNorm2d) and id(m.weight) in ids)

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('policy,moves', [('train', (True, True)), ('stats', (False, True)), ('eval', (False, False))])
def test_bn_policy(kind, policy, moves):
    learn = make(kind)
    learn.set_trainable(-1)
    learn.set_bn_policy(policy)
    bn = bn_of_group(learn, 0)
    w,rm = bn.weight.detach().clone(),bn.running_mean.clone()
    learn.fit(1, 1e-2)
    assert (not torch.equal(bn.weight, w), not torch.equal(bn.running_mean, rm)) == moves

def test_no_parameters_is_a_clear_error():
    with pytest.raises(ValueError, match="no parameters"): auto_splitter(nn.Sequential(nn.ReLU()))

def test_single_group_keeps_fastai_semantics():
    "fastai's `freeze` is not patched: a single-group learner freezes as in fastai; `set_trainable` names a group that does not exist"
    learn = Learner(synth_dls(), Net(), loss_func=CrossEntropyLossFlat())
    learn.freeze()
    assert all(p.requires_grad for p in learn.model.parameters())  # fastai freezes up to the last group: here, nothing
    with pytest.raises(IndexError, match="has 1 groups"): learn.set_trainable(1)

def test_duplicated_or_missing_params_are_caught():
    m = Net()
    ps = list(m.parameters())
    with pytest.raises(ValueError, match="in no group"): check_groups(m, [ps[:-1]])
    with pytest.raises(ValueError, match="in several groups"): check_groups(m, [ps, ps[:1]])

class TiedLM(nn.Module):
    def __init__(self, v=10, d=4):
        super().__init__()
        self.embed,self.body,self.lm_head = nn.Embedding(v,d),nn.Linear(d,d),nn.Linear(d,v)
        self.lm_head.weight = self.embed.weight
    def forward(self, x): return self.lm_head(self.body(self.embed(x)))

def test_tied_weights_go_to_the_lowest_group_and_show():
    m = TiedLM()
    groups = auto_splitter(m)
    ids = [id(p) for g in groups for p in g]
    assert sorted(ids) == sorted(map(id, m.parameters())) and ids.count(id(m.embed.weight)) == 1
    assert id(m.embed.weight) in map(id, groups[0])
    learn = Learner(synth_dls(), m, loss_func=CrossEntropyLossFlat(), splitter=auto_splitter)
    assert learn.group_table().shared.tolist() == ['embed.weight = lm_head.weight', '', '']

class SpareMLP(nn.Module):
    "No BatchNorm, and a module that forward never uses, registered last"
    def __init__(self):
        super().__init__()
        self.body,self.head,self.spare = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.ReLU()),nn.Linear(8, 3),nn.Linear(8, 5)
    def forward(self, x): return self.head(self.body(x))

def test_unused_module_registered_last_is_not_the_head():
    from functools import partial
    dls = synth_dls(size=4)
    set_seed(0); plain = Learner(dls, SpareMLP(), loss_func=CrossEntropyLossFlat(), splitter=auto_splitter)
    plain.set_trainable(-1)
    with plain.no_logging(), pytest.raises(RuntimeError, match="does not require grad"): plain.fit(1)  # structure alone
    set_seed(0)
    with pytest.warns(UserWarning, match="forward does not use spare.weight, spare.bias"):
        learn = Learner(dls, SpareMLP(), loss_func=CrossEntropyLossFlat(), splitter=AutoSplitter(x=dls))
        learn.create_opt()
    assert list(learn.group_names)[-1] == 'head'
    assert not {id(p) for p in learn.model.spare.parameters()} & {id(p) for pg in learn.opt.param_lists for p in pg}
    learn.set_trainable(-1)
    h0 = learn.model.head.weight.detach().clone()
    with learn.no_logging(): learn.fit(1, 1e-2)
    assert not torch.equal(learn.model.head.weight, h0)

def test_splitter_sample_pass_keeps_each_modules_mode():
    "AutoSplitter's forward pass on a sample restores every module's own mode: a BatchNorm frozen in eval mode stays so (the feature cache calls the splitter mid-fit)"
    from finetune_nb.groups import AutoSplitter
    from finetune_nb.test_utils import TinyNet
    m = TinyNet(); m.train(); m.features[1].eval()
    AutoSplitter(x=torch.randn(2, 3, 8, 8))(m)
    assert m.training and m.features[0].training and not m.features[1].training
