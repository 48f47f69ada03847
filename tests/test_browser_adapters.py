"""Browser test of adapters in the layer picker (#15): in JupyterLab, a group is switched to LoRA in `LayerPicker`'s
dropdown, Apply is clicked, and the kernel's model has LoRA adapters on that group's layers, its own weights frozen, and
exactly the planned number of trainable weights. The harness (JupyterLab on a free port, Debian's Chromium driven by
Playwright, cell-by-cell runs, screenshots in `test_artifacts/`) comes from `tests/test_browser.py`, whose helpers it imports.

Needs: `bash tests/install_browser.sh` (Chromium from apt) and the `playwright` pip package (dev requirements).
It fails, never skips, when either is missing."""
import json, os, re, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

try:
    from playwright.sync_api import sync_playwright, expect
    _PW_ERROR = None
except ImportError as e: _PW_ERROR = e

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NB = HERE/'browser_adapters.ipynb'
ARTIFACTS = REPO/'test_artifacts'
CHROMIUM = '/usr/bin/chromium'
INSTALL_HINT = 'run `bash tests/install_browser.sh` (and `pip install playwright`, a dev requirement)'

from test_browser import (_require_browser, _free_port, _write_json, cell, prompt, accept_kernel_dialog, run_cell, start_cell,
                          wait_cell, output_text, tagged, no_widget_errors, wait_for, kernel_idle)  # the shared harness

# Code cells of the notebook, by their index among all cells (cell 0 is markdown)
SETUP, PICKER, GRAD = 1, 2, 3

@pytest.fixture(scope='module')
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    for f in ARTIFACTS.glob('browser_adapters_*'): f.unlink()
    return ARTIFACTS

@pytest.fixture(scope='module')
def lab_server(tmp_path_factory, artifacts):
    "A JupyterLab server (same Python as pytest) serving a copy of the notebook; yields its URL; stopped at the end"
    _require_browser()
    tmp = tmp_path_factory.mktemp('lab')
    root,home = tmp/'root',tmp/'home'
    root.mkdir(); home.mkdir()
    shutil.copy(NB, root/NB.name)
    # Settings of this server only: render every cell (no windowing, so all outputs are in the DOM), no news pop-up
    _write_json(home/'settings/@jupyterlab/notebook-extension/tracker.jupyterlab-settings', {'windowingMode': 'none'})
    _write_json(home/'settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings',
                {'fetchNews': 'false', 'checkForUpdates': False})
    # Where JupyterLab sends widget messages (default perCommTarget); the Stop button must work with each setting:
    # FINETUNE_NB_COMMS_OVER_SUBSHELLS=disabled|perComm|perCommTarget runs the test with another
    if os.environ.get('FINETUNE_NB_COMMS_OVER_SUBSHELLS'):
        _write_json(home/'settings/@jupyterlab/apputils-extension/kernels-settings.jupyterlab-settings',
                    {'commsOverSubshells': os.environ['FINETUNE_NB_COMMS_OVER_SUBSHELLS']})
    env = dict(os.environ, MPLBACKEND='Agg', PYTHONUNBUFFERED='1',
               JUPYTERLAB_SETTINGS_DIR=str(home/'settings'), JUPYTERLAB_WORKSPACES_DIR=str(home/'workspaces'),
               JUPYTER_RUNTIME_DIR=str(home/'runtime'), JUPYTER_CONFIG_DIR=str(home/'config'),
               JUPYTER_DATA_DIR=str(home/'data'), IPYTHONDIR=str(home/'ipython'))
    port = _free_port()
    cmd = [sys.executable, '-m', 'jupyterlab', '--allow-root', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
           '--ServerApp.port_retries=0', "--ServerApp.token=''", "--ServerApp.password=''",
           f'--ServerApp.root_dir={root}', '--ServerApp.disable_check_xsrf=True']
    log = open(artifacts/'browser_adapters_jupyter_server.log', 'w')
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {proc.returncode}; see {log.name}:\n"
                            + Path(log.name).read_text()[-3000:], pytrace=False)
            try:
                with urllib.request.urlopen(f'{url}/api/status', timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.time() > deadline: pytest.fail(f"JupyterLab did not answer on {url} within 60 s; see {log.name}", pytrace=False)
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

@pytest.fixture(scope='module')
def page(lab_server, artifacts):
    "A Chromium page (Playwright) on the notebook; browser closed at the end, the console saved as an artifact"
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
            (artifacts/'browser_adapters_console.log').write_text('\n'.join(console))
            browser.close()

# --- helpers -------------------------------------------------------------------------------------------------------

def shot(page, artifacts:Path, name:str, cell=None):
    "A full-page screenshot (the app fills the viewport) and, with `cell`, one of that cell"
    if cell is not None: cell.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts/f'browser_adapters_{name}.png'), full_page=True)
    if cell is not None: cell.screenshot(path=str(artifacts/f'browser_adapters_{name}_cell.png'))

def test_browser_tools_installed():
    "Chromium and Playwright are there (a clear failure, not a skip, where they are not)"
    _require_browser()

def test_picker_lora_in_jupyterlab(page, artifacts):
    try: check_picker_lora(page, artifacts)
    except BaseException:
        try: page.screenshot(path=str(artifacts/'browser_adapters_failure.png'), full_page=True)
        except Exception: pass
        raise

def check_picker_lora(page, artifacts):
    page.locator('.jp-NotebookPanel .jp-Cell').nth(GRAD).wait_for(state='attached', timeout=60_000)
    wait_for(lambda: kernel_idle(page), 90, 'the kernel to start (idle)')
    run_cell(page, SETUP, timeout=150)
    setup = tagged(page, SETUP, 'SETUP')
    assert setup['widgets'], "has_widget_frontend() is False in the JupyterLab kernel"
    assert setup['trainable'] == [2] and len(setup['groups']) == 3, setup
    run_cell(page, PICKER)
    pc = cell(page, PICKER)
    checks,hows = pc.locator('.widget-checkbox input[type=checkbox]'),pc.locator('.widget-dropdown select')
    expect(checks).to_have_count(3, timeout=30_000)
    assert hows.count() >= 3, "a 'how' dropdown per group"
    assert [hows.nth(k).input_value() for k in range(3)] == ['full']*3
    run_cell(page, GRAD)
    before = tagged(page, GRAD, 'GRAD')
    assert before['lora_layers'] == [] and before['trainable'][2] == 51 and before['trainable_groups'] == [2], before
    # Group 1 trains, through LoRA: tick it, choose 'lora', Apply
    checks.nth(1).check()
    hows.nth(1).select_option('lora')
    apply_btn = pc.locator('button.jupyter-button', has_text=re.compile(r'^\s*Apply\s*$'))
    lora_count = 16 + (8*8*9 + 16*8 + 32) + 51  # group 0's BatchNorm ('train' policy), group 1's adapters and BatchNorm, the head
    wait_for(lambda: f"{lora_count:,} of" in pc.inner_text(), 20, 'the preview to count the adapters exactly', lambda: pc.inner_text())
    shot(page, artifacts, '1_lora_chosen', pc)
    apply_btn.click()
    wait_for(lambda: 'applied' in pc.inner_text(), 30, "'applied' in the picker", lambda: pc.inner_text())
    shot(page, artifacts, '2_applied', pc)
    run_cell(page, GRAD)
    after = tagged(page, GRAD, 'GRAD')
    assert after['lora_layers'] == ['features.3.0'], after
    assert after['base_frozen'] is True, after
    # group 1: LoRA of rank 8 on its 8->16 3x3 conv (8*8*9 + 16*8) and its BatchNorm (the 'train' policy); the head as before
    assert after['trainable'][1:] == [8*8*9 + 16*8 + 32, 51], after
    assert after['trainable'] == after['planned'], after
    assert after['trainable_groups'] == [1, 2], after
    no_widget_errors(page)
