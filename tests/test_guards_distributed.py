"DivergenceGuard in two processes (DDP over gloo): every process stops at the same point, with the same good weights"
import json, os, shutil, subprocess, sys
from pathlib import Path

def test_two_process_divergence(tmp_path):
    out = tmp_path/'guards.json'
    torchrun = shutil.which('torchrun') or str(Path(sys.executable).parent/'torchrun')
    r = subprocess.run([torchrun, '--standalone', '--nproc_per_node', '2', str(Path(__file__).parent/'guards_distrib_script.py'), str(out)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert len(ranks) == 2 and ranks[0] == ranks[1], ranks    # the same decision, at the same point, with the same weights
    d = ranks[0]
    assert (d['phase'], d['epoch'], d['batch']) == (1, 0, None)  # at the end of the phase's first epoch, not mid-epoch
    assert d['kind'] in ('nan', 'inf', 'exploded')
    assert d['restored'] and d['finite']                      # the weights phase 0 handed on
    assert d['phases'] == [0, 1]                              # the third phase never ran
    assert r.stdout.count('Training diverged') == 1, r.stdout  # one message, from rank 0
