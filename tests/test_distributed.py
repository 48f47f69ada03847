"Progressive unfreezing in two processes (DDP over gloo), launched with torchrun"
import json, os, shutil, subprocess, sys
from pathlib import Path

def test_two_process_progressive(tmp_path):
    out = tmp_path/'dist.json'
    torchrun = shutil.which('torchrun') or str(Path(sys.executable).parent/'torchrun')
    r = subprocess.run([torchrun, '--standalone', '--nproc_per_node', '2', str(Path(__file__).parent/'distrib_script.py'), str(out)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d['world_size'] == 2
    assert d['phases'] == [[2], [1, 2], [0, 1, 2]]   # each phase re-wrapped DDP with its own trainable groups
    assert d['epochs'] == 3 and d['conv_changed']
    assert d['sums'][0] == d['sums'][1]             # both processes end with the same weights
