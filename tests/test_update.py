"""`learn.update`: a `kill -9` during an update leaves the previous version current and loadable; a rejected update rolls back
bit for bit; head growth keeps the old classes' weights; bad input is refused before any work; `finetune_nb update` runs."""
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import pytest, torch
torch.set_num_threads(1)
from fastai.basics import Learner, Callback, CrossEntropyLossFlat, accuracy, set_seed
from finetune_nb.groups import auto_splitter
from finetune_nb.test_utils import DigitCNN, digits_stream
from finetune_nb.registry import ModelRegistry, RegistryError
from finetune_nb.update import UpdateGate

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
TIMEOUT = 600

@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "A `DigitCNN` trained on the digits 0-4, its weights, and the data of two updates"
    set_seed(0)
    learn = Learner(digits_stream(range(5), part=0), DigitCNN(5), loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                    splitter=auto_splitter, path=tmp_path_factory.mktemp('learn'))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(8, 1e-2)
    return dict(learn=learn, sd={k:v.clone() for k,v in learn.model.state_dict().items()}, dls=learn.dls,
                classes=digits_stream(range(5, 10), part=0), thick=digits_stream(range(5), 'thick', part=1))

def fresh(base, path):
    "A learner with the base model's weights and data"
    learn = Learner(base['dls'], DigitCNN(5), loss_func=CrossEntropyLossFlat(), metrics=accuracy, splitter=auto_splitter, path=path)
    learn.model.load_state_dict(base['sd'])
    return learn

def assert_same(model, sd):
    own = model.state_dict()
    assert own.keys() == sd.keys()
    for k,v in sd.items(): assert torch.equal(own[k], v), k

def quiet_update(learn, new, **kw):
    with learn.no_bar(), learn.no_logging(): return learn.update(new, seed=0, **kw)

# ---------------------------------------------------------------- the kill test
SCRIPT = textwrap.dedent("""
    import sys, time, pathlib, torch
    torch.set_num_threads(1)
    from fastai.basics import *
    from finetune_nb.groups import auto_splitter
    from finetune_nb.test_utils import *
    from finetune_nb.update import *
    reg_dir,mode = Path(sys.argv[1]),sys.argv[2]
    d = reg_dir.parent
    set_seed(0)
    learn = Learner(digits_stream(range(5), part=0), DigitCNN(5), loss_func=CrossEntropyLossFlat(), metrics=accuracy, splitter=auto_splitter, path=d)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2)
    torch.save({k:v.clone() for k,v in learn.model.state_dict().items()}, d/'before.pt')
    class Slow(Callback):
        "Say that training started, and make it last"
        def before_train(self): (d/'training').touch()
        def after_batch(self): time.sleep(0.05)
    if mode == 'commit':  # hang inside the index write of the new version: its temporary file written, not yet renamed
        import os
        replace,n = os.replace,[0]
        def hang(src, dst):
            if Path(dst).name == 'versions.json':
                n[0] += 1
                if n[0] == 2: (d/'committing').write_text(str(src)); time.sleep(600)
            return replace(src, dst)
        os.replace = hang
    with learn.no_bar(), learn.no_logging():
        learn.update(digits_stream(range(5, 10), part=0), registry=reg_dir, epochs=1, seed=0,
                     cbs=Slow() if mode == 'train' else None, gate=UpdateGate() if mode == 'train' else None)  # 'commit': kept whatever it does
    (d/'finished').touch()
""")

def run_until(tmp_path, mode, marker):
    "Start an update in another process, `kill -9` it once `marker` exists; return the registry folder"
    (tmp_path/'script.py').write_text(SCRIPT)
    reg_dir = tmp_path/'registry'
    p = subprocess.Popen([sys.executable, str(tmp_path/'script.py'), str(reg_dir), mode], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    t0 = time.time()
    while not (tmp_path/marker).exists():
        assert p.poll() is None, f"the update ended before {marker}:\n{p.communicate()[0][-3000:]}"
        assert time.time()-t0 < TIMEOUT, f"timed out waiting for {marker}"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL and not (tmp_path/'finished').exists()
    return reg_dir

def test_kill_during_training_keeps_previous_version(tmp_path):
    "SIGKILL while the update trains: the registry loads, and its latest version is the model from before the update"
    reg = ModelRegistry(run_until(tmp_path, 'train', 'training'))
    assert (reg.current, len(reg), reg.latest['note']) == ('v1', 1, 'backup before an update')
    d = reg.load()
    before = torch.load(tmp_path/'before.pt', weights_only=True)
    for k,v in before.items(): assert torch.equal(d['state_dict'][k], v), k
    assert len(d['replay']) > 0 and len(d['holdout']) > 0

def test_kill_during_commit_keeps_previous_version(base, tmp_path):
    "SIGKILL inside the write of the new version's index: the old index is whole, and a later update continues from it"
    reg_dir = run_until(tmp_path, 'commit', 'committing')
    assert (reg_dir/'v2.pt').exists()  # the new weights were written, but the index never named them
    assert list(reg_dir.glob('.versions.json.*.finetune_nb-tmp'))  # the index's temporary file the kill left
    (reg_dir/'tmp_notes_tmp').write_text('mine')  # a file of the user's, named as fastcore's temporary files are
    reg = ModelRegistry(reg_dir)
    assert (reg.current, [e['id'] for e in reg.versions]) == ('v1', ['v1'])
    before = torch.load(tmp_path/'before.pt', weights_only=True)
    learn = fresh(base, tmp_path)
    reg.load_into(learn)
    assert_same(learn.model, before)
    orphan = (reg_dir/'v2.pt').read_bytes()
    r = quiet_update(learn, base['classes'], registry=reg, epochs=1, gate=None)  # the registry goes on, under an id never used
    assert r.kept and r.version == 'v3' and ModelRegistry(reg_dir).current == 'v3'
    assert (reg_dir/'v2.pt').read_bytes() == orphan  # a version file is never written twice
    assert not list(reg_dir.glob('*finetune_nb-tmp')) and (reg_dir/'tmp_notes_tmp').read_text() == 'mine'  # only ours cleaned up
    assert_same(learn.model, {k:v.to(learn.model.head.weight.device) for k,v in ModelRegistry(reg_dir).load('v3')['state_dict'].items()})

# ---------------------------------------------------------------- the gate and rollback
def test_gate_rejects_lr_100x_and_rolls_back_bit_identical(base, tmp_path):
    "An update at 100 times the default learning rate is rejected; the model equals the backup bit for bit, and the registry's too"
    learn = fresh(base, tmp_path)
    head,opt = learn.model.head,learn.opt
    r = quiet_update(learn, base['classes'], registry=tmp_path/'reg', lr_max=100*1e-2)
    assert not r.kept and r.reasons, r
    assert any('old-data accuracy fell' in o or 'forgot' in o for o in r.reasons), r.reasons
    assert learn.model.head is head and learn.model.head.out_features == 5 and learn.opt is opt and learn.dls is base['dls']
    assert_same(learn.model, base['sd'])
    reg = ModelRegistry(tmp_path/'reg')
    assert (reg.current, [e['status'] for e in reg.versions]) == ('v1', ['kept', 'rejected'])
    assert_same(learn.model, reg.load()['state_dict'])
    assert r.table.loc['all', 'old_after'] < r.table.loc['all', 'old_before'] - 0.02

def test_kept_update_then_registry_rollback(base, tmp_path):
    "A kept update becomes v2; rolling the registry back and loading gives the v1 weights bit for bit"
    learn = fresh(base, tmp_path)
    r = quiet_update(learn, base['thick'], registry=tmp_path/'reg', gate=None)
    assert r.kept and ModelRegistry(tmp_path/'reg').current == 'v2'
    assert r.table.loc['all', 'new_after'] > r.table.loc['all', 'new_before'] + 0.2
    reg = ModelRegistry(tmp_path/'reg')
    assert reg.rollback()['id'] == 'v1'
    m = DigitCNN(5)
    ModelRegistry(tmp_path/'reg').load_into(m)
    assert_same(m, base['sd'])

def test_head_growth_keeps_old_class_weights(base, tmp_path):
    "New classes: the grown head starts with the old classes' rows exactly; after the update it has 10 outputs"
    learn = fresh(base, tmp_path)
    old_w,old_b = base['sd']['head.weight'],base['sd']['head.bias']
    seen = {}
    class Snap(Callback):
        def before_train(self):
            if not seen: seen.update(w=self.learn.model.head.weight.detach().clone(), b=self.learn.model.head.bias.detach().clone())
    r = quiet_update(learn, base['classes'], registry=False, cbs=Snap(), epochs=1, gate=None)
    assert seen['w'].shape == (10, old_w.shape[1])
    assert torch.equal(seen['w'][:5], old_w) and torch.equal(seen['b'][:5], old_b)
    assert r.kept and learn.model.head.out_features == 10 and r.vocab == [str(i) for i in range(10)]
    naive = quiet_update(fresh(base, tmp_path/'naive'), base['classes'], registry=False, epochs=1, gate=None, replay=0)
    old,t = naive.table.loc['all', 'old_after'],r.table.loc['all']
    assert t.old_after >= old + 0.5 and t.old_after >= t.old_before - 0.2  # replay keeps the old classes, which the naive update forgets

# ---------------------------------------------------------------- bad input, before any work
def test_bad_input_refused_before_any_work(base, tmp_path):
    learn = fresh(base, tmp_path)
    reg_dir = tmp_path/'reg'
    with pytest.raises(ValueError, match=r"inputs have shape \(1, 16, 16\).*\(1, 32, 32\)"):
        learn.update(digits_stream(range(5, 10), size=16), registry=reg_dir)
    empty = digits_stream(range(5, 10))
    empty.train.dataset = torch.utils.data.TensorDataset(torch.zeros(0, 1, 32, 32), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="The new data has no training items"): learn.update(empty, registry=reg_dir)
    novalid = digits_stream(range(5, 10))
    novalid.valid.dataset = torch.utils.data.TensorDataset(torch.zeros(0, 1, 32, 32), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="The new data has no validation items"): learn.update(novalid, registry=reg_dir)
    assert not reg_dir.exists()  # nothing was written
    assert_same(learn.model, base['sd'])
    # a registry that belongs to another model
    other = Learner(base['dls'], DigitCNN(5, width=8), loss_func=CrossEntropyLossFlat(), splitter=auto_splitter, path=tmp_path)
    ModelRegistry(reg_dir).commit(other.model, 'head', list('01234'))
    files = sorted(reg_dir.iterdir())
    with pytest.raises(RegistryError, match="holds versions of another model"): learn.update(base['classes'], registry=reg_dir)
    assert sorted(reg_dir.iterdir()) == files and len(ModelRegistry(reg_dir)) == 1
    with pytest.raises(ValueError, match="replay must be"): learn.update(base['classes'], registry=False, replay=-1)
    with pytest.raises(ValueError, match="tol must be between 0 and 1"): learn.update(base['classes'], registry=False, gate=UpdateGate(tol=5))

def test_update_from_a_minimal_commit(base, tmp_path):
    "A version committed with only the model, its classifier and its classes: the update takes the rest from `learn.dls`"
    learn = fresh(base, tmp_path)
    ModelRegistry(tmp_path/'reg').commit(learn.model, 'head', list('01234'))
    r = quiet_update(learn, base['thick'], registry=tmp_path/'reg', epochs=1, drift=False, gate=None, replay=50, holdout=100)
    assert r.kept and (r.backup, r.version) == ('v1', 'v2')
    d = ModelRegistry(tmp_path/'reg').load()
    assert d['entry']['parent'] == 'v1' and len(d['holdout']) > 0 and d['entry']['data']['n_seen'] > 0

# ---------------------------------------------------------------- the command line
def cli(*args):
    code = "import sys; from finetune_nb.cli import main; sys.exit(main(['update', *sys.argv[1:]]))"
    return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, env=ENV, timeout=TIMEOUT)

def test_cli_runs_and_prints_gate_table_and_registry(tmp_path):
    out = tmp_path/'upd'; out.mkdir(); (out/'tmp_notes_tmp').write_text('mine')
    r = cli('--out', str(out), '--steps', 'classes', '--epochs', '1', '--tol', '0.2', '--class-tol', '0.5', '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Update kept as v2' in r.stdout, r.stdout
    assert 'n_old old_before old_after' in r.stdout and 'Label shift: total variation 1.00; new classes: 5, 6, 7, 8, 9' in r.stdout
    assert f'Registry {out}' in r.stdout and 'backup before an update' in r.stdout
    reg = ModelRegistry(out)
    assert len(reg) == 2 and reg.versions[1]['note'] == 'finetune_nb update: classes'
    # bad options: one line on stderr, exit status 2, nothing done
    for args,msg in [(('--steps', 'bold'), "unknown step 'bold'"), (('--lr', '-1'), '--lr must be positive'), (('--epochs', 'x'), 'invalid int value')]:
        r = cli('--out', str(tmp_path/'never'), *args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert not (tmp_path/'never').exists()
    # the digits 5-9 are known now; and the registry belongs to the CNN, not to EfficientNet-Lite0
    r = cli('--out', str(out), '--steps', 'classes')
    assert r.returncode == 2 and 'already knows' in r.stderr, r.stderr
    r = cli('--out', str(out), '--arch', 'efficientnet_lite0', '--steps', 'thick')
    assert r.returncode == 2 and 'holds versions of another model' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert len(ModelRegistry(out)) == 2
    assert (out/'tmp_notes_tmp').read_text() == 'mine'  # the registry deletes only its own temporary files

def test_cli_broken_index_is_one_line(tmp_path):
    "An index whose `current` names a version it does not have: one line on stderr, exit status 2"
    out = tmp_path/'upd'; out.mkdir()
    (out/'versions.json').write_text(json.dumps(dict(format='finetune_nb.registry/1', model=None, current='v3', versions=[])))
    r = cli('--out', str(out), '--steps', 'thick')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]
    assert r.stderr.startswith('finetune_nb update: error: ') and "'current' names 'v3'" in r.stderr, r.stderr
