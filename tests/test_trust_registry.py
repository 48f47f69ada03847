"""`ModelRegistry` with several writers: processes that commit into one folder at the same time each get their own version,
and every version holds the weights its id names; a folder written before the update was split into registry, drift and update
still loads."""
import json, os, subprocess, sys, textwrap, time
from pathlib import Path
import torch
from finetune_nb.registry import ModelRegistry, weights_fingerprint

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
N_PROCS,N_COMMITS = 3,3

SCRIPT = textwrap.dedent("""
    import json, sys, time, torch
    from pathlib import Path
    torch.set_num_threads(1)
    from finetune_nb.registry import ModelRegistry, weights_fingerprint
    reg_dir,me,n,go = Path(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]),Path(sys.argv[4])
    model,got = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)),[]
    reg = ModelRegistry(reg_dir)  # opened before the others write: each commit must read the index again
    (go.parent/f'ready{me}').touch()
    while not go.exists(): time.sleep(0.005)  # start together
    for i in range(n):
        torch.manual_seed(100*me + i)
        for p in model.parameters(): torch.nn.init.normal_(p)
        e = reg.commit(model, '2', list('abc'), note=f'process {me} commit {i}')
        got.append((e['id'], weights_fingerprint(model.state_dict())))
    print(json.dumps(got))
""")

def test_concurrent_commits_keep_every_version(tmp_path):
    "Processes committing into one registry at once: every commit is a version of its own, holding the weights it was told it kept"
    (tmp_path/'commit.py').write_text(SCRIPT)
    reg_dir,go = tmp_path/'reg',tmp_path/'go'
    ps = [subprocess.Popen([sys.executable, str(tmp_path/'commit.py'), str(reg_dir), str(i), str(N_COMMITS), str(go)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for i in range(N_PROCS)]
    t0 = time.time()
    while not all((tmp_path/f'ready{i}').exists() for i in range(N_PROCS)):
        assert all(p.poll() is None for p in ps) and time.time()-t0 < 300, [p.communicate()[1][-2000:] for p in ps if p.poll() is not None]
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=300) for p in ps]
    for p,(out,err) in zip(ps, outs): assert p.returncode == 0, err[-3000:]
    told = [tuple(o) for out,_ in outs for o in json.loads(out)]
    ids = [i for i,_ in told]
    assert len(set(ids)) == N_PROCS*N_COMMITS, f"two commits were told the same id: {sorted(ids)}"
    reg = ModelRegistry(reg_dir)
    assert sorted(e['id'] for e in reg.versions) == sorted(ids)
    for vid,fp in told:
        assert reg.entry(vid)['weights'] == fp, vid
        assert weights_fingerprint(reg.load(vid)['state_dict']) == fp, vid
    assert not [f.name for f in reg_dir.iterdir() if f.name.endswith('tmp')]  # no temporary file left

# ---------------------------------------------------------------- the format of before
BEFORE = Path(__file__).parent/'data'/'registry_before_split'

def test_registry_written_before_the_split_loads(tmp_path):
    "A folder written by the registry of before the update's split (dd28521, with `commit(replay=, holdout=)`) loads and takes new versions"
    import shutil
    from torch import nn
    shutil.copytree(BEFORE, tmp_path/'reg')
    reg = ModelRegistry(tmp_path/'reg')
    assert (reg.current, [e['status'] for e in reg.versions]) == ('v1', ['kept', 'kept', 'rejected'])
    v1,v2 = reg.load('v1'),reg.load('v2')
    assert (len(v1['replay']), len(v1['holdout']), len(v2['replay']), len(v2['holdout'])) == (6, 5, 4, 3)
    assert (v1['vocab'], v1['head'], v1['entry']['data']['n_seen']) == (['a', 'b', 'c'], '2', 6)
    assert torch.equal(v2['state_dict']['2.weight'], v1['state_dict']['2.weight'] + 1)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    reg.load_into(m, 'v2')
    assert torch.equal(m[2].weight, v2['state_dict']['2.weight'])
    e = reg.commit(m, '2', ['a', 'b', 'c'], parent='v2', replay_items=v2['replay'], holdout_items=v2['holdout'])
    assert e['id'] == 'v4' and ModelRegistry(tmp_path/'reg').load()['entry']['parent'] == 'v2'
    assert reg.rollback()['id'] == 'v2'
