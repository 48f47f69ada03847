"""The tutorials keep their outputs (issue 26): read on GitHub or in the HTML docs without being run, each shows the tables,
charts and numbers its prose talks about. Fast: it reads the saved notebooks, it runs nothing.

The rule for "a cell must have an output": a code cell whose last statement is an expression that Jupyter would show (not
ended by `;`, not a test such as `test_eq` or a call that returns nothing such as `shutil.rmtree`), or a cell that calls
`print`, `display` or a `plot`/`show` method. Cells that are hidden, exported, flagged `slow`/`cuda`/`notest` (not run
by `nbdev_test` nor by `finetune_nb docs --execute` by default) or only assign, import, define and test need none.
`finetune_nb docs --execute nbs/tutorial_x.ipynb` refreshes a notebook's outputs."""
import ast, base64, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT/'nbs').glob('tutorial_*.ipynb'))
MAX_PNG = 150_000
SKIP_DIRECTIVES = {'hide', 'export', 'exporti', 'default_exp', 'slow', 'cuda', 'notest'}
QUIET_CALLS = re.compile(r'^(test_\w*|assert\w*|set_seed|rmtree|unlink|save|zero_grad|set_num_threads|mkdir|close|seed|manual_seed)$')
SHOWING_CALLS = re.compile(r'^(print|display|plot\w*|show\w*)$')
ABS_PATH = re.compile(r'(?<![\w.~])(/work/|/tmp/|/root/|/home/|/private/var/|/Users/|/var/folders/)')

def _src(c) -> str: return ''.join(c['source']) if isinstance(c['source'], list) else c['source']
def _text(v) -> str: return ''.join(v) if isinstance(v, list) else str(v)

def _directives(src:str) -> set:
    return {w.rstrip(':') for m in re.finditer(r'^#\|\s*(.+)$', src, re.M) for w in m.group(1).split()[:1]}

def _call_name(node) -> str:
    f = node.func if isinstance(node, ast.Call) else None
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ''

def shows_something(src:str) -> bool:
    "Whether running the code `src` in Jupyter shows an output that a reader of the saved notebook should see"
    code = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith('%'))
    try: tree = ast.parse(code)
    except SyntaxError: return False
    if not tree.body: return False
    if any(SHOWING_CALLS.match(_call_name(n)) for n in ast.walk(tree) if isinstance(n, ast.Call)): return True
    last = tree.body[-1]
    if not isinstance(last, ast.Expr) or code.rstrip().endswith(';'): return False
    return not (isinstance(last.value, ast.Call) and QUIET_CALLS.match(_call_name(last.value)))

def problems(nb:dict) -> list:
    "What is wrong with the saved outputs of notebook `nb`: missing outputs, this machine's paths, widget state, big PNGs"
    res = []
    if 'widgets' in nb.get('metadata', {}): res.append("notebook metadata holds widget state")
    n_out = 0
    for i,c in enumerate(nb['cells']):
        if c['cell_type'] != 'code': continue
        src,outs = _src(c),c.get('outputs', [])
        n_out += bool(outs)
        if not outs and not (_directives(src) & SKIP_DIRECTIVES) and shows_something(src):
            res.append(f"cell {i} shows something but has no output: {src.splitlines()[-1][:80]!r}")
        for o in outs:
            texts = [_text(o.get('text', ''))] + [_text(l) for l in o.get('traceback', [])]
            for k,v in o.get('data', {}).items():
                if k.startswith('application/vnd.jupyter.widget'): res.append(f"cell {i} keeps widget state ({k})")
                elif k == 'image/png':
                    if (n := len(base64.b64decode(_text(v)))) > MAX_PNG: res.append(f"cell {i} has a PNG of {n:,} bytes (over {MAX_PNG:,})")
                elif k.startswith('text/') or k.endswith('json'): texts.append(_text(v))
            for t in texts:
                if (m := ABS_PATH.search(t)): res.append(f"cell {i} output holds an absolute path: {t[m.start():m.start()+60]!r}")
                if re.search(r'<progress|\d+\.\d+% \[\d+/\d+ ', t): res.append(f"cell {i} output holds a progress bar")
    if not n_out: res.append("no code cell has an output")
    return res

def test_there_are_seven_tutorials(): assert len(TUTORIALS) == 7, TUTORIALS

@pytest.mark.parametrize('path', TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_keeps_its_outputs(path):
    nb = json.loads(path.read_text())
    assert not (ps := problems(nb)), f"{path.name} (refresh with `finetune_nb docs --execute nbs/{path.name}`):\n" + '\n'.join(ps)
    kinds = {k for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', []) for k in o.get('data', {})}
    assert 'text/html' in kinds or 'image/png' in kinds, f"{path.name} shows no table and no chart"

def test_the_rule():
    "The rule catches each fault: a tutorial without outputs (as they all were before issue 26), a path, widget state, a big PNG"
    nb = json.loads((ROOT/'nbs/tutorial_vision.ipynb').read_text())
    bare = json.loads(json.dumps(nb))
    for c in bare['cells']:
        if c['cell_type'] == 'code': c['outputs'] = []
    assert any('has no output' for p in problems(bare)) and 'no code cell has an output' in problems(bare)
    code = lambda src, **o: {'cell_type': 'code', 'source': src, 'metadata': {}, 'outputs': [o]}
    bad = {'metadata': {}, 'cells': [code('print(p)', output_type='stream', name='stdout', text='saved to /tmp/tmpab12/x.png\n'),
        code('w', output_type='display_data', data={'application/vnd.jupyter.widget-view+json': {}, 'text/plain': 'w'}),
        code('plt.plot(x)', output_type='display_data', data={'image/png': base64.b64encode(b'\0'*200_000).decode()})]}
    ps = problems(bad)
    assert [bool(re.search(w, ' '.join(ps))) for w in ('absolute path', 'widget state', 'PNG of 200,000')] == [True]*3, ps
    assert shows_something('learn.group_table()') and shows_something('rep.plot_confusion();') and shows_something('print(1)')
    assert not any(map(shows_something, ['x = 1', 'test_eq(a, b)', 'shutil.rmtree(tmp)', 'import os', 'learn.fit(1);']))
