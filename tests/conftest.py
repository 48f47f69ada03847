"""Fixtures shared by the test files: one JupyterLab server and one Chromium for all the browser tests of a session (the
harness is `tests/browser_utils.py`), and one run of `finetune_nb demo` for the tests that only read what it wrote."""
import os, re, shutil, subprocess, tempfile
from pathlib import Path
from contextlib import ExitStack
import pytest
from browser_utils import ARTIFACTS, HERE, require_browser, jupyterlab, chromium, notebook_page

# --- the browser ----------------------------------------------------------------------------------------------------

_stacks = {}  # fixture name -> the ExitStack that closes it
_last = {}    # fixture name -> the node id of the last test of the last module that uses it

def _session_resource(request, name:str, cm):
    "Enter `cm` for the session; it closes after the module of the last test that needs it (see below), or at the end"
    stack = _stacks[name] = ExitStack()
    request.addfinalizer(stack.close)
    return stack.enter_context(cm)

def pytest_collection_finish(session):
    """Start the session's demo now if a test will read it; note where the browser and the server can close: after the last
    module that uses them, not at the end of the session"""
    items = session.items
    if any('demo_run' in getattr(it, 'fixturenames', ()) for it in items): _start_demo()
    for name in ('lab', 'browser'):
        users = [k for k,it in enumerate(items) if name in getattr(it, 'fixturenames', ())]
        if not users: continue
        k = users[-1]
        while k+1 < len(items) and items[k+1].module is items[k].module: k += 1
        _last[name] = items[k].nodeid

@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    for name,last in _last.items():
        if item.nodeid == last and name in _stacks: _stacks.pop(name).close()

@pytest.fixture(scope='session')
def artifacts():
    "`test_artifacts/`, emptied of the last session's browser_* files"
    ARTIFACTS.mkdir(exist_ok=True)
    for f in ARTIFACTS.glob('browser_*'): f.unlink()
    return ARTIFACTS

@pytest.fixture(scope='session')
def lab(request, tmp_path_factory, artifacts) -> str:
    "One JupyterLab server (the Python that runs pytest) serving a copy of every tests/browser_*.ipynb; its URL"
    require_browser()
    tmp = tmp_path_factory.mktemp('lab')
    root,home = tmp/'root',tmp/'home'
    root.mkdir(); home.mkdir()
    for nb in HERE.glob('browser_*.ipynb'): shutil.copy(nb, root/nb.name)
    return _session_resource(request, 'lab', jupyterlab(root, home, artifacts/'browser_jupyter_server.log'))

@pytest.fixture(scope='session')
def browser(request):
    "One headless Chromium (Playwright) for the session"
    require_browser()
    return _session_resource(request, 'browser', chromium())

@pytest.fixture(scope='module')
def page(request, lab, browser, artifacts):
    "A page of its own for the test module, on the notebook its `NOTEBOOK` names, the kernel started; closed (kernel shut down) after the module"
    nb = request.module.NOTEBOOK
    with notebook_page(browser, lab, nb, artifacts/f'{nb.removesuffix(".ipynb")}_console.log') as pg: yield pg

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    "A screenshot of the page of a browser test that failed: test_artifacts/browser_failure_<test>.png"
    rep = yield
    pg = getattr(item, 'funcargs', {}).get('page')
    if rep.when == 'call' and rep.failed and pg is not None:
        name = re.sub(r'[^\w.-]', '_', item.name)
        try: pg.screenshot(path=str(ARTIFACTS/f'browser_failure_{name}.png'), full_page=True)
        except Exception: pass
    return rep

# --- the demo -------------------------------------------------------------------------------------------------------

_demo = {}

def _start_demo() -> dict:
    "Start `finetune_nb demo --quiet` once a session, in the background and niced: it runs on the core that pytest leaves idle"
    if not _demo:
        d = Path(tempfile.mkdtemp(prefix='finetune_nb_demo_'))
        with open(d/'stdout', 'w') as o, open(d/'stderr', 'w') as e:
            p = subprocess.Popen(['finetune_nb', 'demo', '--quiet', '--out', str(d/'out')], stdout=o, stderr=e, preexec_fn=lambda: os.nice(5))
        _demo.update(dir=d, proc=p)
    return _demo

def pytest_sessionfinish(session):
    if _demo:
        if _demo['proc'].poll() is None: _demo['proc'].kill()
        _demo['proc'].wait()
        shutil.rmtree(_demo['dir'], ignore_errors=True)

@pytest.fixture(scope='session')
def demo_run():
    "`finetune_nb demo --quiet` (the README's main job, about a minute), run once a session: the finished process and its --out folder"
    d = _start_demo()
    p = d['proc']
    p.wait(timeout=900)
    return subprocess.CompletedProcess(p.args, p.returncode, (d['dir']/'stdout').read_text(), (d['dir']/'stderr').read_text()), d['dir']/'out'
