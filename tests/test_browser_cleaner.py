"""End-to-end test of the data cleaner panel (`finetune_nb.cleaner.DataCleaner`) in a real browser.

JupyterLab is started on a free port with the Python that runs pytest; Chromium (Debian's, at /usr/bin/chromium),
driven by Playwright, opens `tests/browser_cleaner.ipynb` (copied into a temporary folder) and runs its cells one by
one. It audits a small set of corrupted digits, shows the cleaner, clicks remove on one row, relabel on another (to
the suggested class) and relabel on a third after choosing a class in its menu, and checks that each click changed
the decisions in the kernel and in the saved file; then a new `DataCleaner` on the same file shows the decisions.
Screenshots go to `test_artifacts/browser_cleaner_*.png` (git-ignored), with the server's log.

Needs `bash tests/install_browser.sh` (Chromium from apt) and the `playwright` pip package: skipped when either is missing."""
import json, os, re, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

try: from playwright.sync_api import sync_playwright, expect
except ImportError: sync_playwright = None

HERE = Path(__file__).resolve().parent
NB = HERE/'browser_cleaner.ipynb'
ARTIFACTS = HERE.parent/'test_artifacts'
CHROMIUM = '/usr/bin/chromium'
SETUP, PANEL, STATE, REOPEN, REOPENED = 1, 2, 3, 4, 5   # code cells, by index among all cells (cell 0 is markdown)

pytestmark = [pytest.mark.skipif(sync_playwright is None, reason="the playwright package is missing (pip install playwright)"),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing: run `bash tests/install_browser.sh`")]

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _write_json(path:Path, d:dict):
    path.parent.mkdir(parents=True, exist_ok=True); path.write_text(json.dumps(d))

@pytest.fixture(scope='module')
def lab_server(tmp_path_factory):
    "A JupyterLab server (same Python as pytest) serving a copy of the notebook; yields its URL; stopped at the end"
    ARTIFACTS.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp('lab')
    root,home = tmp/'root',tmp/'home'
    root.mkdir(); home.mkdir()
    shutil.copy(NB, root/NB.name)
    _write_json(home/'settings/@jupyterlab/notebook-extension/tracker.jupyterlab-settings', {'windowingMode': 'none'})
    _write_json(home/'settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings', {'fetchNews': 'false', 'checkForUpdates': False})
    env = dict(os.environ, MPLBACKEND='Agg', PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1',
               JUPYTERLAB_SETTINGS_DIR=str(home/'settings'), JUPYTERLAB_WORKSPACES_DIR=str(home/'workspaces'),
               JUPYTER_RUNTIME_DIR=str(home/'runtime'), JUPYTER_CONFIG_DIR=str(home/'config'),
               JUPYTER_DATA_DIR=str(home/'data'), IPYTHONDIR=str(home/'ipython'))
    port = _free_port()
    cmd = [sys.executable, '-m', 'jupyterlab', '--allow-root', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
           '--ServerApp.port_retries=0', "--ServerApp.token=''", "--ServerApp.password=''",
           f'--ServerApp.root_dir={root}', '--ServerApp.disable_check_xsrf=True']
    log = open(ARTIFACTS/'browser_cleaner_server.log', 'w')
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None: pytest.fail(f"JupyterLab exited with code {proc.returncode}; see {log.name}", pytrace=False)
            try:
                with urllib.request.urlopen(f'{url}/api/status', timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.time() > deadline: pytest.fail(f"JupyterLab did not answer on {url} within 60 s; see {log.name}", pytrace=False)
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try: proc.wait(timeout=20)
            except subprocess.TimeoutExpired: pass
        try: os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError): pass
        proc.wait(timeout=10)
        log.close()

@pytest.fixture(scope='module')
def page(lab_server):
    "A Chromium page (Playwright) on the notebook; the console saved as an artifact"
    console = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                                          '--disable-component-update', '--no-first-run', '--disable-dev-shm-usage'])
        try:
            pg = browser.new_page(viewport={'width': 1400, 'height': 1900})
            pg.set_default_timeout(30_000)
            pg.on('console', lambda m: console.append(f'[{m.type}] {m.text}'))
            pg.on('pageerror', lambda e: console.append(f'[pageerror] {e}'))
            pg.goto(f'{lab_server}/lab/tree/{NB.name}?reset', wait_until='domcontentloaded', timeout=60_000)
            yield pg
        finally:
            (ARTIFACTS/'browser_cleaner_console.log').write_text('\n'.join(console))
            browser.close()

# --- helpers --------------------------------------------------------------------------------------------------------

def cell(page, i:int): return page.locator('.jp-NotebookPanel .jp-Notebook .jp-Cell').nth(i)
def prompt(page, i:int) -> str: return cell(page, i).locator('.jp-InputPrompt').first.inner_text().strip()

def wait_for(pred, timeout:float, what:str):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline: raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)

def accept_kernel_dialog(page):
    dlg = page.locator('.jp-Dialog')
    if dlg.count() and 'kernel' in dlg.first.inner_text().lower(): dlg.locator('button.jp-mod-accept').first.click()

def kernel_idle(page) -> bool:
    accept_kernel_dialog(page)
    return page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').count() > 0

def output_text(page, i:int) -> str:
    outs = cell(page, i).locator('.jp-OutputArea-output')
    return '\n'.join(outs.nth(k).inner_text() for k in range(outs.count()))

def run_cell(page, i:int, timeout:float=120) -> str:
    "Select cell `i`, run it with Ctrl+Enter, wait until it ends (its prompt shows a new number); its output text"
    before,c = prompt(page, i),cell(page, i)
    c.scroll_into_view_if_needed()
    c.locator('.jp-InputPrompt').first.click()
    expect(c).to_have_class(re.compile(r'\bjp-mod-active\b'), timeout=10_000)
    page.keyboard.press('Control+Enter')
    for _ in range(3):  # a key press lost while the page is busy leaves the prompt as it was: press again
        try: wait_for(lambda: prompt(page, i) != before, 15, f'cell {i} to start'); break
        except AssertionError:
            accept_kernel_dialog(page)
            c.locator('.jp-InputPrompt').first.click()
            page.keyboard.press('Control+Enter')
    deadline = time.time() + timeout
    while not (re.fullmatch(r'\[\d+\]:', p := prompt(page, i)) and p != before):
        accept_kernel_dialog(page)
        if time.time() > deadline: raise AssertionError(f"cell {i} did not finish in {timeout} s; output so far:\n{output_text(page, i)}")
        time.sleep(0.25)
    errors = c.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
    assert errors.count() == 0, f"cell {i} raised:\n{errors.first.inner_text()}"
    return output_text(page, i)

def tagged(page, i:int, tag:str, timeout:float=10) -> dict:
    "The JSON that cell `i` printed after `tag`"
    pat,deadline = re.compile(rf'^{tag} (\{{.*\}})\s*$', re.M),time.time()+timeout
    while not (m := pat.search(text := output_text(page, i))):
        if time.time() > deadline: raise AssertionError(f"no '{tag} {{...}}' line in the output of cell {i}:\n{text}")
        time.sleep(0.25)
    return json.loads(m.group(1))

def shot(page, name:str, c=None):
    if c is not None: c.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS/f'browser_cleaner_{name}.png'), full_page=True)
    if c is not None: c.screenshot(path=str(ARTIFACTS/f'browser_cleaner_{name}_cell.png'))

def button(row, action:str): return row.locator('button.jupyter-button', has_text=re.compile(rf'^\s*{action}\s*$'))

# --- the test -------------------------------------------------------------------------------------------------------

def test_cleaner_in_jupyterlab(page):
    try: check_cleaner(page)
    except BaseException:
        try: page.screenshot(path=str(ARTIFACTS/'browser_cleaner_failure.png'), full_page=True)
        except Exception: pass
        raise

def check_cleaner(page):
    page.locator('.jp-NotebookPanel .jp-Cell').nth(REOPENED).wait_for(state='attached', timeout=60_000)
    wait_for(lambda: kernel_idle(page), 90, 'the kernel to start (idle)')
    run_cell(page, SETUP, timeout=240)
    setup = tagged(page, SETUP, 'SETUP')
    assert setup['widgets'], "has_widget_frontend() is False in the JupyterLab kernel"
    assert setup['n_flagged'] >= 4, setup

    # The panel renders: 4 rows, each with a thumbnail and the three buttons
    run_cell(page, PANEL)
    pc = cell(page, PANEL)
    rows = pc.locator('.finetune-cleaner-row')
    expect(rows).to_have_count(4, timeout=30_000)
    for k in range(4):
        for a in ('keep', 'relabel', 'remove'): expect(button(rows.nth(k), a)).to_be_visible()
        expect(rows.nth(k).locator('img')).to_have_count(1)
    assert 'Error displaying widget' not in page.locator('body').inner_text()
    shot(page, '1_panel', pc)
    run_cell(page, STATE)
    st = tagged(page, STATE, 'STATE')
    assert st['file'] is None and st['kernel'] == [], f"no decision before any click: {st}"
    (s0, i0, _), (s1, i1, sug1), (s2, i2, sug2) = st['rows'][:3]

    # A click on remove, on relabel (to the suggested class), and on relabel after choosing a class in the menu
    button(rows.nth(0), 'remove').click()
    expect(rows.nth(0).locator('.widget-html-content', has_text=re.compile(r'^\s*remove\s*$'))).to_be_visible(timeout=30_000)
    button(rows.nth(1), 'relabel').click()
    expect(rows.nth(1).locator('.widget-html-content', has_text='relabel →')).to_be_visible(timeout=30_000)
    other = next(v for v in setup['vocab'] if v != sug2)
    rows.nth(2).locator('select').select_option(other)
    button(rows.nth(2), 'relabel').click()
    expect(rows.nth(2).locator('.widget-html-content', has_text=f'relabel → {other}')).to_be_visible(timeout=30_000)
    shot(page, '2_decided', pc)

    # The kernel and the file have the three decisions
    run_cell(page, STATE)
    st = tagged(page, STATE, 'STATE')
    expected = [[s0, i0, 'remove'], [s1, i1, 'relabel', sug1], [s2, i2, 'relabel', other]]
    got = [d[:3] if d[2] == 'remove' else d for d in st['kernel']]
    assert got == expected, f"the clicks did not make these decisions in the kernel: {st['kernel']} (expected {expected})"
    saved = [[d['split'], d['idx'], d['action']] + ([d['label']] if d['action'] == 'relabel' else []) for d in st['file']]
    assert saved == expected, f"the saved file does not hold the decisions: {st['file']}"

    # A new DataCleaner on the same file shows them
    run_cell(page, REOPEN)
    rc = cell(page, REOPEN)
    rrows = rc.locator('.finetune-cleaner-row')
    expect(rrows).to_have_count(4, timeout=30_000)
    expect(rrows.nth(0).locator('.widget-html-content', has_text=re.compile(r'^\s*remove\s*$'))).to_be_visible()
    expect(rrows.nth(2).locator('.widget-html-content', has_text=f'relabel → {other}')).to_be_visible()
    run_cell(page, REOPENED)
    ro = tagged(page, REOPENED, 'REOPEN')
    assert ro['kernel'] == st['kernel'], ro
    shot(page, '3_reopened', rc)
