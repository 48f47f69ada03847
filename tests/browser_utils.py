"""The harness the browser tests share: a JupyterLab server, Debian's Chromium driven by Playwright, and helpers that run a
notebook's cells one by one and read the `TAG {json}` line each cell prints.

The fixtures are in `tests/conftest.py`: one JupyterLab server (serving a copy of every `tests/browser_*.ipynb`) and one
Chromium for all the browser tests of a pytest session, and a page of its own for each test module, on the notebook its
`NOTEBOOK` names. Screenshots, the server's log and each page's console go to `test_artifacts/browser_*` (git-ignored).

Needs: `bash tests/install_browser.sh` (Chromium from apt) and the `playwright` pip package (dev requirements).
The browser tests fail, never skip, when either is missing."""
import json, os, re, signal, socket, subprocess, sys, time, urllib.request
from contextlib import contextmanager
from pathlib import Path
import pytest

try:
    from playwright.sync_api import sync_playwright, expect
    PW_ERROR = None
except ImportError as e: PW_ERROR,sync_playwright,expect = e,None,None

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE.parent/'test_artifacts'
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--no-first-run', '--disable-dev-shm-usage']
INSTALL_HINT = 'run `bash tests/install_browser.sh` (and `pip install playwright`, a dev requirement)'

def require_browser():
    "Fail (never skip) when Chromium or Playwright is missing"
    if PW_ERROR is not None: pytest.fail(f"The Python package playwright is missing ({PW_ERROR}): {INSTALL_HINT}", pytrace=False)
    if not os.path.exists(CHROMIUM): pytest.fail(f"{CHROMIUM} is missing: {INSTALL_HINT}", pytrace=False)

# --- the server and the pages ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def write_json(path:Path, d:dict):
    path.parent.mkdir(parents=True, exist_ok=True); path.write_text(json.dumps(d))

def lab_settings(home:Path) -> dict:
    "Write settings for one server under `home`: every cell rendered (no windowing, so all outputs are in the DOM), no news pop-up; its environment"
    write_json(home/'settings/@jupyterlab/notebook-extension/tracker.jupyterlab-settings', {'windowingMode': 'none'})
    write_json(home/'settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings',
               {'fetchNews': 'false', 'checkForUpdates': False})
    # Where JupyterLab sends widget messages (default perCommTarget); the Stop button must work with each setting:
    # FINETUNE_NB_COMMS_OVER_SUBSHELLS=disabled|perComm|perCommTarget runs the tests with another
    if os.environ.get('FINETUNE_NB_COMMS_OVER_SUBSHELLS'):
        write_json(home/'settings/@jupyterlab/apputils-extension/kernels-settings.jupyterlab-settings',
                   {'commsOverSubshells': os.environ['FINETUNE_NB_COMMS_OVER_SUBSHELLS']})
    return dict(os.environ, MPLBACKEND='Agg', PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1',
                JUPYTERLAB_SETTINGS_DIR=str(home/'settings'), JUPYTERLAB_WORKSPACES_DIR=str(home/'workspaces'),
                JUPYTER_RUNTIME_DIR=str(home/'runtime'), JUPYTER_CONFIG_DIR=str(home/'config'),
                JUPYTER_DATA_DIR=str(home/'data'), IPYTHONDIR=str(home/'ipython'))

@contextmanager
def jupyterlab(root:Path, home:Path, log_path:Path, timeout:float=60):
    "A JupyterLab server (the Python that runs pytest) on a free port, serving `root`, with its settings under `home`; yields its URL"
    port = free_port()
    cmd = [sys.executable, '-m', 'jupyterlab', '--allow-root', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
           '--ServerApp.port_retries=0', "--ServerApp.token=''", "--ServerApp.password=''",
           f'--ServerApp.root_dir={root}', '--ServerApp.disable_check_xsrf=True']
    log = open(log_path, 'w')
    proc = subprocess.Popen(cmd, env=lab_settings(home), cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {proc.returncode}; see {log_path}:\n" + log_path.read_text()[-3000:], pytrace=False)
            try:
                with urllib.request.urlopen(f'{url}/api/status', timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.time() > deadline: pytest.fail(f"JupyterLab did not answer on {url} within {timeout} s; see {log_path}", pytrace=False)
            time.sleep(0.5)
        yield url
    finally:
        # SIGTERM lets the server shut its kernels down; then kill whatever is left of its process group
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try: proc.wait(timeout=20)
            except subprocess.TimeoutExpired: pass
        try: os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError): pass
        proc.wait(timeout=10)
        log.close()

@contextmanager
def chromium():
    "Debian's Chromium, headless, driven by Playwright"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try: yield browser
        finally: browser.close()

def shutdown_kernels(url:str, path:str):
    "Shut down the kernels of the server's sessions on notebook `path` (closing a page leaves its kernel running)"
    with urllib.request.urlopen(f'{url}/api/sessions', timeout=10) as r: sessions = json.load(r)
    for s in sessions:
        if s.get('path') == path:
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/sessions/{s['id']}", method='DELETE'), timeout=30).close()

@contextmanager
def notebook_page(browser, url:str, path:str, console_log:Path):
    "A new page (a context of its own) on notebook `path`, its kernel started; at the end its console is saved, the page closed, the kernel shut down"
    console,n_cells = [],len(json.loads((HERE/path).read_text())['cells'])
    pg = browser.new_page(viewport={'width': 1400, 'height': 1900})
    try:
        pg.set_default_timeout(30_000)
        pg.on('console', lambda m: console.append(f'[{m.type}] {m.text}'))
        pg.on('pageerror', lambda e: console.append(f'[pageerror] {e}'))
        pg.goto(f'{url}/lab/tree/{path}?reset', wait_until='domcontentloaded', timeout=60_000)
        cell(pg, n_cells-1).wait_for(state='attached', timeout=60_000)  # the notebook opens ...
        wait_for(lambda: kernel_idle(pg), 90, 'the kernel to start (idle)')  # ... and its kernel starts
        yield pg
    finally:
        console_log.write_text('\n'.join(console))
        try: pg.close()
        except Exception: pass  # the browser is closed already
        try: shutdown_kernels(url, path)
        except OSError: pass  # the server is stopped already

# --- cells ----------------------------------------------------------------------------------------------------------

def wait_for(pred, timeout:float, what:str, info=lambda: ''):
    "Poll `pred` until it is true; fail after `timeout` s, saying `what` was awaited and `info()`"
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline: raise AssertionError(f"timed out after {timeout} s waiting for {what}. {info()}")
        time.sleep(0.25)

def shot(page, name:str, cell=None):
    "A full-page screenshot `test_artifacts/{name}.png` (the app fills the viewport) and, with `cell`, one of that cell"
    if cell is not None: cell.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS/f'{name}.png'), full_page=True)
    if cell is not None: cell.screenshot(path=str(ARTIFACTS/f'{name}_cell.png'))

def cell(page, i:int): return page.locator('.jp-NotebookPanel .jp-Notebook .jp-Cell').nth(i)
def prompt(page, i:int) -> str: return cell(page, i).locator('.jp-InputPrompt').first.inner_text().strip()
def button(loc, label:str): return loc.locator('button.jupyter-button', has_text=re.compile(rf'^\s*{label}\s*$'))

def accept_kernel_dialog(page):
    "Click 'Select' if JupyterLab asks which kernel to use"
    dlg = page.locator('.jp-Dialog')
    if dlg.count() and 'kernel' in dlg.first.inner_text().lower():
        dlg.locator('button.jp-mod-accept').first.click()

def kernel_idle(page) -> bool:
    accept_kernel_dialog(page)
    return page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').count() > 0

def select_cell(page, i:int):
    c = cell(page, i)
    c.scroll_into_view_if_needed()
    c.locator('.jp-InputPrompt').first.click()
    expect(c).to_have_class(re.compile(r'\bjp-mod-active\b'), timeout=10_000)
    return c

def run_cell(page, i:int, timeout:float=120) -> str:
    "Select cell `i`, run it (Ctrl+Enter: run without advancing), wait until it ends; return its output text"
    return wait_cell(page, i, start_cell(page, i), timeout)

def start_cell(page, i:int) -> str:
    "Select cell `i` and run it (Ctrl+Enter), returning at once; gives the prompt it had before, for `wait_cell`"
    before = prompt(page, i)
    c = select_cell(page, i)
    page.keyboard.press('Control+Enter')
    # The prompt shows [*] (or a new number) as soon as JupyterLab takes the request; a key press lost while the
    # page is busy (slow machine) leaves '[ ]' or the old number: press again (it is safe, nothing was queued)
    for _ in range(3):
        try: wait_for(lambda: prompt(page, i) != before, 15, f'cell {i} to start'); break
        except AssertionError:
            accept_kernel_dialog(page)
            c.locator('.jp-InputPrompt').first.click()
            page.keyboard.press('Control+Enter')
    return before

def wait_cell(page, i:int, before:str, timeout:float=120) -> str:
    "Wait until cell `i` (whose prompt was `before`) has run; fail on an error in its output; return its output text"
    deadline = time.time() + timeout
    while True:
        accept_kernel_dialog(page)
        p = prompt(page, i)
        if re.fullmatch(r'\[\d+\]:', p) and p != before: break
        if time.time() > deadline:
            raise AssertionError(f"cell {i} did not finish in {timeout} s (prompt {p!r}); output so far:\n{output_text(page, i)}")
        time.sleep(0.25)
    errors = cell(page, i).locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
    assert errors.count() == 0, f"cell {i} raised:\n{errors.first.inner_text()}"
    return output_text(page, i)

def run_all_below(page, i:int):
    "Select cell `i` and run it and every cell below it, queued, from the Run menu (as Run All would)"
    select_cell(page, i)
    page.locator('.lm-MenuBar-item', has_text=re.compile(r'^Run$')).click()
    page.locator('.lm-Menu-item:visible', has_text='Run Selected Cell and All Below').click()

def output_text(page, i:int) -> str:
    outs = cell(page, i).locator('.jp-OutputArea-output')
    return '\n'.join(outs.nth(k).inner_text() for k in range(outs.count()))

def tagged(page, i:int, tag:str, timeout:float=10) -> dict:
    "The JSON that cell `i` printed after `tag` (waiting a little for the output to render)"
    pat,deadline = re.compile(rf'^{tag} (\{{.*\}})\s*$', re.M),time.time()+timeout
    while not (m := pat.search(text := output_text(page, i))):
        if time.time() > deadline: raise AssertionError(f"no '{tag} {{...}}' line in the output of cell {i}:\n{text}")
        time.sleep(0.25)
    return json.loads(m.group(1))

def no_widget_errors(page):
    body = page.locator('body').inner_text()
    assert 'Error displaying widget' not in body, "a widget failed to render: 'Error displaying widget' on the page"
