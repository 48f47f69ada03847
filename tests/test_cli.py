"""The `finetune_nb` command as a user runs it: bad options, Ctrl-C, and the full offline demo.

The full demo runs once a session (`demo_run` in conftest.py, started in the background when the session starts); the
tests that interrupt a run, resume one or give it bad input start their own, as small as what they check allows."""
import json, signal, subprocess, time
from pathlib import Path
import pytest, torch

def run(*args, timeout=600, **kw):
    return subprocess.run(['finetune_nb', *args], capture_output=True, text=True, timeout=timeout, **kw)

def start_demo(out:Path, *args, **kw) -> subprocess.Popen:
    "`finetune_nb demo ... --out out`, running once its first epoch is saved (`out/model.pth`)"
    p = subprocess.Popen(['finetune_nb', 'demo', *args, '--out', str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    t0 = time.time()
    while not (out/'model.pth').exists() and time.time()-t0 < 300 and p.poll() is None: time.sleep(0.1)
    assert p.poll() is None, p.communicate()
    return p

SMALL = ['--size', '32', '--k-shot', '10', '--quiet']  # the smallest images, 100 training images

@pytest.mark.parametrize('args,msg', [
    (['--epochs', '-1'], '--epochs must be a positive integer'),
    (['--epochs', 'x'], "invalid int value: 'x'"),
    (['--device', 'tpu'], "is not a device"),
    (['--k-shot', '0'], '--k-shot must be a positive integer'),
    (['--size', '8'], '--size must be at least 32'),
    (['--lr', '0'], '--lr must be a positive number'),
    (['--lr', 'inf'], '--lr must be a positive number, got inf'),
    (['--bogus'], 'unrecognized arguments: --bogus'),
    (['--groups', '50'], '--groups must be at most 9'),
    (['--precision', 'fp16', '--device', 'cpu'], 'fp16 mixed precision needs a CUDA GPU'),
    (['--precision', 'int4'], 'Unknown precision'),
    (['--bn-policy', 'bogus'], '--bn-policy must be one of'),
])
def test_bad_option_one_line(args, msg, tmp_path):
    r = run('demo', '--out', str(tmp_path/'out'), *args)
    assert r.returncode == 2, r
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and msg in lines[0], r.stderr
    assert not (tmp_path/'out'/'model.pth').exists() and not (tmp_path/'out'/'options.json').exists()

def test_unwritable_out(tmp_path):
    f = tmp_path/'afile'; f.write_text('')
    r = run('demo', '--out', str(f/'sub'))
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'cannot write there' in r.stderr, r.stderr

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu(tmp_path):
    r = run('demo', '--device', 'cuda', '--out', str(tmp_path))
    assert r.returncode == 2 and 'no CUDA GPU is available' in r.stderr and r.stderr.count('\n') == 1, r.stderr

def test_ctrl_c_keeps_last_epoch(tmp_path):
    "SIGINT (Ctrl-C) mid-training leaves the last completed epoch's model saved"
    out = tmp_path/'out'
    # A runner started in the background without job control (`cmd &` in a script) ignores SIGINT, its children inherit that,
    # and Python then leaves SIGINT ignored: the Ctrl-C would be lost. A terminal's Ctrl-C reaches a process with the default.
    p = start_demo(out, '--epochs', '50', *SMALL,
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal, even if this runner ignores SIGINT
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    stdout,stderr = p.communicate(timeout=120)
    assert p.returncode == 130, (stdout, stderr)
    assert 'Interrupted: the model of the last completed epoch' in stderr, stderr
    from finetune_nb.saving import load_finetuned
    m,meta = load_finetuned(out/'model.pth')
    assert meta['epochs_done'] >= 1 and meta['epochs_done'] < 53
    assert f"({meta['epochs_done']})" in stderr
    assert not _temporary(out)

def test_resume_after_kill(tmp_path):
    """A demo killed with SIGKILL mid-run continues with --resume to the same number of epochs; other options are refused.
    50 training images and --bs 64 (fastai drops the last partial batch): batches of 50, said in one line; every epoch trains"""
    out = tmp_path/'out'
    args = ['--epochs', '2', '--size', '32', '--k-shot', '5', '--quiet']
    p = start_demo(out, *args)
    p.kill(); p.communicate()
    from finetune_nb.saving import load_finetuned
    done = load_finetuned(out/'model.pth')[1]['epochs_done']
    (out/'.model.pth.999999999.deadbeef.finetune_nb-tmp').write_bytes(b'half a model')  # what a kill inside the write of model.pth leaves
    (out/'tmp_notes_tmp').write_text("the user's")  # not ours: it stays
    r = run('demo', *args, '--out', str(out), '--seed', '1', '--resume')
    assert r.returncode == 2 and '--resume must repeat' in r.stderr and '--seed 42 (now 1)' in r.stderr, r.stderr
    r = run('demo', *args, '--out', str(out), '--resume', timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[0] == "--bs 64 is more than the 50 training images: training with batches of 50, so that every epoch trains."
    s = json.loads((out/'summary.json').read_text())
    assert s['epochs'] == 5 and load_finetuned(out/'model.pth')[1]['epochs_done'] == 5, (s, done)
    import pandas as pd
    h = pd.read_csv(out/'history.csv')
    assert len(h) == 5 and h.train_loss.notna().all() and (h.train_loss < 10).all(), h
    assert not (out/'.model.pth.999999999.deadbeef.finetune_nb-tmp').exists() and (out/'tmp_notes_tmp').read_text() == "the user's"

def test_update_error_is_one_line():
    "A subcommand's error is its one line: no warning from an import before it"
    r = run('update', '--bogus')
    assert r.returncode == 2 and len(_lines(r.stderr)) == 1, r.stderr

def test_demo_end_to_end(demo_run):
    "The README's main job: offline fine-tune to > 90% validation accuracy, with model and curves saved (the session's one demo, conftest.py)"
    r,out = demo_run
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out/'summary.json').read_text())
    assert s['accuracy'] > 0.9, s
    assert 'Validation accuracy:' in r.stdout and str(out/'model.pth') in r.stdout
    assert (out/'training.png').stat().st_size > 10_000
    html = (out/'report'/'report.html').read_text()
    assert 'data:image/png;base64' in html and 'accuracy' in html
    from finetune_nb.saving import load_finetuned
    m,meta = load_finetuned(out/'model.pth')
    assert meta['epochs_done'] == s['epochs'] == 6
    d = torch.load(out/'model.pth', weights_only=True)   # the demo's own file is plain data
    assert d['vocab'] == list(range(10)) and d['arch'] == 'efficientnet_lite0'

def _lines(s): return [l for l in s.splitlines() if l.strip()]
def _temporary(out:Path): return [o for o in out.rglob('*') if o.name.endswith(('.tmp', '.finetune_nb-tmp')) or (o.name.startswith('tmp') and o.name.endswith('tmp'))]

@pytest.mark.parametrize('lr,msg', [('1e30', 'Training diverged in phase'),   # the training loss explodes
                                    ('1000', 'Training diverged in phase 0')])  # one batch an epoch: the validation loss explodes
def test_diverging_lr_exits_3(tmp_path, lr, msg):
    "A learning rate that diverges ends the demo with status 3 and one line that says so and which --lr to try"
    r = run('demo', '--lr', lr, *SMALL, '--out', str(tmp_path))
    assert r.returncode == 3, (r.returncode, r.stderr[-3000:])
    lines = _lines(r.stderr)
    assert len(lines) == 1 and msg in lines[0] and 'Try a lower learning rate: --lr ' in lines[0], r.stderr
    assert 'Validation accuracy' not in r.stdout and not _temporary(tmp_path)
    assert json.loads((tmp_path/'summary.json').read_text())['interrupted']

def test_sigterm_says_what_was_saved(tmp_path):
    "SIGTERM mid-training: one message with what was saved, exit 143, no traceback, no temporary file"
    out = tmp_path/'out'
    p = start_demo(out, '--epochs', '50', *SMALL)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    stdout,stderr = p.communicate(timeout=120)
    assert p.returncode == 143, (p.returncode, stderr[-3000:])
    assert 'Traceback' not in stderr and len(_lines(stderr)) == 1, stderr
    assert stderr.strip().startswith('Stopped by SIGTERM: the model of the last completed epoch'), stderr
    from finetune_nb.saving import read_saved
    done = read_saved(out/'model.pth')['epochs_done']
    assert done >= 1 and f"({done})" in stderr and 'history.csv, training.png and summary.json' in stderr
    assert not _temporary(out)

def test_disk_full_one_line(tmp_path):
    "A disk that fills up mid-run: status 1, one line, the last good files left in place, no temporary file (a 64 MB tmpfs; needs root)"
    out = tmp_path/'small'; out.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', str(out)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        r = run('demo', *SMALL, '--out', str(out))
        assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
        lines = _lines(r.stderr)
        assert len(lines) == 1 and 'the disk is full (No space left on device: ' in lines[0] and 'Left in place: ' in lines[0], r.stderr
        assert not _temporary(out), _temporary(out)
        if (out/'model.pth').exists():
            from finetune_nb.saving import read_saved
            assert f"({read_saved(out/'model.pth')['epochs_done']})" in lines[0]
        else: assert 'no epoch had completed' in lines[0]
    finally: subprocess.run(['umount', str(out)])

def test_threads_option(tmp_path):
    r = run('demo', '--help')
    assert '--threads' in r.stdout and '1 on 2 cores or fewer' in r.stdout
    r = run('demo', '--threads', '0', '--out', str(tmp_path))
    assert r.returncode == 2 and _lines(r.stderr) == ['finetune_nb demo: error: --threads must be a positive integer, got 0']

@pytest.mark.parametrize('cmd', ['audit', 'update'])
def test_delegated_subcommands(cmd):
    "`finetune_nb audit|update ...` run their module's main with the rest of the line, or say in one line that it is not there"
    import importlib.util
    r = run(cmd, '--help')
    if importlib.util.find_spec(f'finetune_nb.{cmd}') is None:
        assert r.returncode == 2 and _lines(r.stderr) == [f"finetune_nb {cmd}: not available (finetune_nb.{cmd}.{cmd}_main is not in this version of finetune_nb)"]
    else: assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert cmd in run('--help').stdout
