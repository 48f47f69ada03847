"Progressive unfreezing and the divergence guard in two processes (DDP over gloo), launched with torchrun"
import json, os, shutil, subprocess, sys
from pathlib import Path

def torchrun(script:str, out:Path):
    "Run `script` beside this file in two processes with torchrun, writing `out`; return what it wrote, and its stdout"
    run = shutil.which('torchrun') or str(Path(sys.executable).parent/'torchrun')
    r = subprocess.run([run, '--standalone', '--nproc_per_node', '2', str(Path(__file__).parent/script), str(out)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout

def test_two_process_progressive(tmp_path):
    d,_ = torchrun('distrib_script.py', tmp_path/'dist.json')
    assert d['world_size'] == 2
    assert d['phases'] == [[2], [1, 2], [0, 1, 2]]   # each phase re-wrapped DDP with its own trainable groups
    assert d['epochs'] == 3 and d['conv_changed']
    assert d['sums'][0] == d['sums'][1]             # both processes end with the same weights

def test_two_process_divergence(tmp_path):
    "DivergenceGuard in two processes: every process stops at the same point, with the same good weights"
    ranks,stdout = torchrun('guards_distrib_script.py', tmp_path/'guards.json')
    assert len(ranks) == 2 and ranks[0] == ranks[1], ranks    # the same decision, at the same point, with the same weights
    d = ranks[0]
    assert (d['phase'], d['epoch'], d['batch']) == (1, 0, None)  # at the end of the phase's first epoch, not mid-epoch
    assert d['kind'] in ('nan', 'inf', 'exploded')
    assert d['restored'] and d['finite']                      # the weights phase 0 handed on
    assert d['phases'] == [0, 1]                              # the third phase never ran
    assert stdout.count('Training diverged') == 1, stdout  # one message, from rank 0
