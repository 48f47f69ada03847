"""`kill -9` of a real training process, then `resume=True` in a new one: the result is the uninterrupted run's.

The run (`tests/resume_script.py`) is killed twice: once mid-epoch, and once inside a write of its resume state (after the
temporary file is written, before the rename), which must leave the previous state whole. A third process finishes it.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch

script = Path(__file__).parent/'resume_script.py'
TIMEOUT = 300

def start(ckpt, out, *args):
    "`tests/resume_script.py` training with checkpoints in `ckpt`, in a process of its own (one thread); its output (`out`.json, `out`.pth)"
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, str(script), str(ckpt), str(out), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

def wait_for(cond, p, what):
    t0 = time.time()
    while not cond():
        assert p.poll() is None, f"the run ended before {what}:\n{p.communicate()[0][-3000:]}"
        assert time.time()-t0 < TIMEOUT, f"timed out waiting for {what}"
        time.sleep(0.02)

def kill9(p):
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL

def finish(p):
    out = p.communicate(timeout=TIMEOUT)[0]
    assert p.returncode == 0, out[-3000:]

def resume_entry(ckpt):
    "The resume state's entry in the manifest, or None (the manifest is replaced atomically, so it is always whole)"
    try: return json.loads((ckpt/'manifest.json').read_text())['checkpoints'].get('resume')
    except FileNotFoundError: return None

def load_state(f): return torch.load(f, map_location='cpu', weights_only=True)

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "An uninterrupted run, and the same run killed twice with SIGKILL and finished by a third process"
    d = tmp_path_factory.mktemp('resume')
    ckpt,res = d/'ckpt',{}
    full = start(d/'full_ckpt', d/'full')  # alongside, with the same seed
    # 1. SIGKILL mid-training, once two epochs are saved (phase 1 is under way); the sleep makes an epoch last about 0.6s
    p = start(ckpt, d/'killed', '--batch-sleep', '0.1')
    wait_for(lambda: (resume_entry(ckpt) or {}).get('epoch', -1) >= 1, p, "two epochs were saved")
    kill9(p)
    res['kill1'] = resume_entry(ckpt)
    # 2. resume, and SIGKILL inside the second write of the resume state
    p = start(ckpt, d/'killed2', '--resume', '--hang-at-save', '2')
    marker = Path(str(d/'killed2') + '.saving')
    wait_for(marker.exists, p, "the second save of the resume state")
    kill9(p)
    res['tmp_left'] = sorted(o.name for o in ckpt.glob('.*.finetune_nb-tmp'))  # `atomic_file` names its temporary files so
    res['state_after_kill2'] = load_state(ckpt/'resume.pth')['meta']
    res['tmp_complete'] = load_state(marker.read_text())['meta']  # what the killed write was about to put in place
    # 3. resume to the end
    p = start(ckpt, d/'resumed', '--resume')
    finish(p); finish(full)
    res['tmp_after'] = sorted(o.name for o in ckpt.iterdir() if 'tmp' in o.name)
    for k in ('full', 'resumed'):
        res[k] = json.loads((d/f'{k}.json').read_text())
        res[k]['weights'] = torch.load(d/f'{k}.pth', weights_only=True)
    return res

def test_first_kill_came_mid_run(runs):
    "The first SIGKILL came mid-training, after at least two saved epochs, and the last process went on from there"
    e = runs['kill1']
    assert e['epoch'] >= 1 and not e['finished'], e
    assert runs['resumed']['batches'][0][:3] != [0, 0, 0]  # the last process did not start from the beginning

def test_kill_during_save_keeps_previous_state(runs):
    "SIGKILL between writing the new resume state and renaming it: the old state is whole and the new one never replaced it"
    assert len(runs['tmp_left']) == 1, runs['tmp_left']
    old,new = runs['state_after_kill2'],runs['tmp_complete']
    assert new['epoch'] == old['epoch'] + 1 or (new['done'] and not old['done']), (old, new)
    assert runs['tmp_after'] == []  # resuming cleans up the temporary file

def test_resumed_weights_are_the_uninterrupted_ones(runs):
    a,b = runs['full']['weights'],runs['resumed']['weights']
    assert a.keys() == b.keys()
    diff = max(float((a[k].double()-b[k].double()).abs().max()) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), f"largest difference {diff}"

def test_resumed_history_and_batches_are_the_uninterrupted_ones(runs):
    f,r = runs['full'],runs['resumed']
    assert r['history'] == f['history'] and len(f['history']) == 7
    assert r['losses'] == f['losses'] and len(f['losses']) == 42
    n = len(r['batches'])
    assert 0 < n < 42 and r['batches'] == f['batches'][-n:]  # the same shuffles, inputs and targets, batch for batch
