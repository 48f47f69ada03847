"The module graph follows the notebooks' reading order: each module imports only modules of earlier notebooks, so there is no cycle"
import ast, re
from pathlib import Path

PKG = Path(__file__).parents[1]/'finetune_nb'

def _notebook(mod:Path) -> str:
    m = re.search(r'File to edit: \.\./nbs/(\S+)\.ipynb', mod.read_text())
    return m.group(1) if m else None

def _imports(mod:Path) -> set:
    "finetune_nb modules that `mod` imports anywhere (top level or inside functions)"
    res = set()
    for node in ast.walk(ast.parse(mod.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: res.add(node.module.split('.')[0])
            elif node.level == 0 and node.module and node.module.startswith('finetune_nb.'): res.add(node.module.split('.')[1])
        elif isinstance(node, ast.Import):
            res |= {a.name.split('.')[1] for a in node.names if a.name.startswith('finetune_nb.')}
    return res - {mod.stem}

def graph() -> dict:
    return {p.stem: (_notebook(p), sorted(_imports(p))) for p in sorted(PKG.glob('*.py')) if p.stem not in ('__init__', '_modidx')}

def test_imports_follow_notebook_order():
    g = graph()
    assert all(nb is not None for nb,_ in g.values()), [m for m,(nb,_) in g.items() if nb is None]
    late = [f"{m} ({nb}) imports {d} ({g[d][0]})" for m,(nb,deps) in g.items() for d in deps if d in g and g[d][0] >= nb]
    assert not late, late

if __name__ == '__main__':
    for m,(nb,deps) in sorted(graph().items(), key=lambda o: o[1][0]): print(f"{nb:22s} {m:14s} <- {', '.join(deps)}")
