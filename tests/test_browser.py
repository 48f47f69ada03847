"""End-to-end test of the two ipywidgets panels (`LayerPicker`, `LivePanel`) in a real browser.

JupyterLab is started on a free port with the Python that runs pytest; Chromium (Debian's, at /usr/bin/chromium),
driven by Playwright, opens `tests/browser_panels.ipynb` (copied into a temporary folder) and runs its cells one by
one. The test checks that both panels render, that the live chart moves while the fit runs in its worker thread,
that the Stop button ends the fit early with the model intact, and that the picker's checkboxes and Apply button
change `requires_grad` in the kernel. Then the Stop button must work while the cell is busy: during a blocking
`learn.fit(..., cbs=LivePanel())`, and during `panel.wait()` after the two cells `panel.start(...)` and `panel.wait()`
were run together ("Run Selected Cell and All Below", as Run All runs them); each click must end the fit early with
the model intact, and the click-to-stop latency is printed. Screenshots go to `test_artifacts/` (git-ignored), with the server's log.

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
NB = HERE/'browser_panels.ipynb'
ARTIFACTS = REPO/'test_artifacts'
CHROMIUM = '/usr/bin/chromium'
INSTALL_HINT = 'run `bash tests/install_browser.sh` (and `pip install playwright`, a dev requirement)'

# Code cells of the notebook, by their index among all cells (cell 0 is markdown)
SETUP, PICKER, GRAD, START, RESULT, BLOCKING, BG_START, BG_WAIT = 1, 2, 3, 4, 5, 6, 7, 8
ASKED_EPOCHS = 400  # of the blocking fit and of the fit `panel.wait()` waits for: minutes, unless Stop ends them
TOTAL_EPOCHS = 302  # fine_tune_progressive(epochs=300) on 3 groups: 1 + 1 + 300 epochs

def _require_browser():
    "Fail (never skip) when Chromium or Playwright is missing"
    if _PW_ERROR is not None: pytest.fail(f"The Python package playwright is missing ({_PW_ERROR}): {INSTALL_HINT}", pytrace=False)
    if not os.path.exists(CHROMIUM): pytest.fail(f"{CHROMIUM} is missing: {INSTALL_HINT}", pytrace=False)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _write_json(path:Path, d:dict):
    path.parent.mkdir(parents=True, exist_ok=True); path.write_text(json.dumps(d))

@pytest.fixture(scope='module')
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    for f in ARTIFACTS.glob('browser_*'): f.unlink()
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
    log = open(artifacts/'browser_jupyter_server.log', 'w')
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
            (artifacts/'browser_console.log').write_text('\n'.join(console))
            browser.close()

# --- helpers -------------------------------------------------------------------------------------------------------

def shot(page, artifacts:Path, name:str, cell=None):
    "A full-page screenshot (the app fills the viewport) and, with `cell`, one of that cell"
    if cell is not None: cell.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts/f'browser_{name}.png'), full_page=True)
    if cell is not None: cell.screenshot(path=str(artifacts/f'browser_{name}_cell.png'))

def cell(page, i:int): return page.locator('.jp-NotebookPanel .jp-Notebook .jp-Cell').nth(i)

def prompt(page, i:int) -> str: return cell(page, i).locator('.jp-InputPrompt').first.inner_text().strip()

def accept_kernel_dialog(page):
    "Click 'Select' if JupyterLab asks which kernel to use"
    dlg = page.locator('.jp-Dialog')
    if dlg.count() and 'kernel' in dlg.first.inner_text().lower():
        dlg.locator('button.jp-mod-accept').first.click()

def run_cell(page, i:int, timeout:float=120) -> str:
    "Select cell `i`, run it (Ctrl+Enter: run without advancing), wait until it ends; return its output text"
    return wait_cell(page, i, start_cell(page, i), timeout)

def start_cell(page, i:int) -> str:
    "Select cell `i` and run it (Ctrl+Enter), returning at once; gives the prompt it had before, for `wait_cell`"
    before = prompt(page, i)
    c = cell(page, i)
    c.scroll_into_view_if_needed()
    c.locator('.jp-InputPrompt').first.click()
    expect(c).to_have_class(re.compile(r'\bjp-mod-active\b'), timeout=10_000)
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
    c = cell(page, i)
    deadline = time.time() + timeout
    while True:
        accept_kernel_dialog(page)
        p = prompt(page, i)
        if re.fullmatch(r'\[\d+\]:', p) and p != before: break
        if time.time() > deadline:
            raise AssertionError(f"cell {i} did not finish in {timeout} s (prompt {p!r}); output so far:\n{output_text(page, i)}")
        time.sleep(0.25)
    errors = c.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
    assert errors.count() == 0, f"cell {i} raised:\n{errors.first.inner_text()}"
    return output_text(page, i)

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

STATUS_JS = """c => { const b = [...c.querySelectorAll('.widget-html-content')].find(e => e.firstElementChild && e.firstElementChild.tagName === 'B');
                      return b ? b.innerText : null; }"""
LOSS_POINTS_JS = """c => { const s = [...c.querySelectorAll('svg')].find(s => { const t = s.querySelector('text'); return t && t.textContent === 'loss'; });
                           const l = s && s.querySelector('polyline'); return l ? l.getAttribute('points') : null; }"""

def live_status(page, i:int=START) -> str: return cell(page, i).evaluate(STATUS_JS) or ''
def loss_points(page, i:int=START) -> str: return cell(page, i).evaluate(LOSS_POINTS_JS) or ''
def stop_button(page, i:int): return cell(page, i).locator('button.jupyter-button', has_text=re.compile(r'^\s*Stop\s*$'))

def wait_for(pred, timeout:float, what:str, info=lambda: ''):
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline: raise AssertionError(f"timed out after {timeout} s waiting for {what}. {info()}")
        time.sleep(0.25)

# --- the tests ------------------------------------------------------------------------------------------------------

def test_browser_tools_installed():
    "Chromium and Playwright are there (a clear failure, not a skip, where they are not)"
    _require_browser()

def test_panels_in_jupyterlab(page, artifacts):
    try: check_panels(page, artifacts)
    except BaseException:
        try: page.screenshot(path=str(artifacts/'browser_failure.png'), full_page=True)
        except Exception: pass
        raise

def kernel_idle(page) -> bool:
    accept_kernel_dialog(page)
    return page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').count() > 0

def check_panels(page, artifacts):
    t0 = time.time()
    # The notebook opens, and its kernel starts
    page.locator('.jp-NotebookPanel .jp-Cell').nth(RESULT).wait_for(state='attached', timeout=60_000)
    wait_for(lambda: kernel_idle(page), 90, 'the kernel to start (idle)')
    run_cell(page, SETUP, timeout=150)
    setup = tagged(page, SETUP, 'SETUP')
    assert setup['widgets'], "has_widget_frontend() is False in the JupyterLab kernel"
    assert setup['trainable'] == [2], setup
    n_groups = len(setup['groups'])
    assert n_groups == 3, setup

    # 1a. The layer picker renders: a checkbox per group (only the head's ticked), an Apply button
    run_cell(page, PICKER)
    pc = cell(page, PICKER)
    checks = pc.locator('.widget-checkbox input[type=checkbox]')
    expect(checks).to_have_count(n_groups, timeout=30_000)
    for k in range(n_groups): expect(checks.nth(k)).to_be_visible()
    assert [checks.nth(k).is_checked() for k in range(n_groups)] == [False, False, True]
    apply_btn = pc.locator('button.jupyter-button', has_text=re.compile(r'^\s*Apply\s*$'))
    expect(apply_btn).to_be_visible()
    no_widget_errors(page)
    shot(page, artifacts, '1_picker', pc)

    # 4. Ticking group 0 and clicking Apply makes group 0 train in the kernel (before the fit starts)
    run_cell(page, GRAD)
    before = tagged(page, GRAD, 'GRAD')
    assert before['trainable'] == [2] and not all(before['requires_grad'][0]), before
    checks.nth(0).click()
    expect(checks.nth(0)).to_be_checked()
    apply_btn.click()
    expect(pc.locator('.widget-html-content', has_text='applied')).to_be_visible(timeout=30_000)
    run_cell(page, GRAD)
    after = tagged(page, GRAD, 'GRAD')
    assert after['trainable'] == [0, 2], f"the picker's Apply did not make group 0 trainable: {after}"
    assert all(after['requires_grad'][0]), f"group 0 should require grad after Apply: {after}"
    assert after['requires_grad'][1:] == before['requires_grad'][1:], f"only group 0 should change: {before} -> {after}"
    shot(page, artifacts, '2_picker_applied', pc)

    # 1b. The live panel renders (the fit runs in a worker thread: the cell ends at once) with a Stop button
    run_cell(page, START, timeout=60)
    lc = cell(page, START)
    stop = lc.locator('button.jupyter-button', has_text=re.compile(r'^\s*Stop\s*$'))
    expect(stop).to_be_visible(timeout=30_000)
    no_widget_errors(page)

    # 2. While the status says running, the loss chart changes
    info = lambda: f"status={live_status(page)!r}, points={loss_points(page)[:120]!r}"
    wait_for(lambda: live_status(page).startswith('running') and loss_points(page), 90, 'the running status and a loss curve', info)
    pts1,st1 = loss_points(page),live_status(page)
    time.sleep(1.5)
    wait_for(lambda: loss_points(page) != pts1, 30, 'the loss chart to change', info)
    pts2,st2 = loss_points(page),live_status(page)
    assert st2.startswith('running'), f"the fit ended before Stop was clicked: {st2!r}"
    assert pts1 != pts2 and st1 != st2, (st1, st2)
    expect(stop).to_be_enabled()
    no_widget_errors(page)
    shot(page, artifacts, '3_running', lc)

    # 3. Stop ends the fit early; the model is intact
    stop.click()
    wait_for(lambda: live_status(page).startswith('stopped'), 60, "the status 'stopped' after clicking Stop", info)
    expect(stop).to_be_disabled(timeout=10_000)
    shot(page, artifacts, '4_stopped', lc)
    run_cell(page, RESULT, timeout=90)
    res = tagged(page, RESULT, 'RESULT')
    assert res['stopped'] is True and res['running'] is False, res
    assert res['thread_alive'] is False, f"the worker thread still runs after Stop: {res}"
    assert res['total_epochs'] == TOTAL_EPOCHS, res
    assert 1 <= res['epochs_done'] < TOTAL_EPOCHS//3, f"Stop did not end the fit early: {res}"
    assert res['validate_finite'] and res['params_finite'], f"the model is not intact after Stop: {res}"
    no_widget_errors(page)
    shot(page, artifacts, '5_result', cell(page, RESULT))
    print(f"browser test body: {time.time()-t0:.1f} s; result {res}")

def click_stop_when_running(page, artifacts, i:int, name:str) -> float:
    "Wait until the panel in cell `i` runs with Stop enabled, click Stop; return the times of the click and of the status `stopped`"
    info = lambda: f"status={live_status(page, i)!r}"
    wait_for(lambda: live_status(page, i).startswith('running') and loss_points(page, i), 90, f'the panel of cell {i} to run', info)
    stop = stop_button(page, i)
    expect(stop).to_be_enabled(timeout=10_000)   # not 'Stop unavailable': the click can reach the busy kernel
    no_widget_errors(page)
    shot(page, artifacts, f'{name}_running', cell(page, i))
    t_click = time.time()
    stop.click()
    wait_for(lambda: live_status(page, i).startswith('stopped'), 60, f"the status 'stopped' in cell {i} after clicking Stop", info)
    t_shown = time.time()
    expect(stop).to_be_disabled(timeout=10_000)
    shot(page, artifacts, f'{name}_stopped', cell(page, i))
    return t_click, t_shown

def check_stopped_early(res:dict, t_click:float, t_shown:float, what:str):
    "The fit of `res` stopped early at the click, the model intact; print the latencies"
    assert res['stop_blocked'] == '', f"{what}: the Stop subshell is not available in this kernel: {res}"
    assert res['stopped'] is True and res['running'] is False, f"{what}: {res}"
    assert 1 <= res['epochs'] < ASKED_EPOCHS//4, f"{what}: Stop did not end the fit early: {res}"
    assert res['validate_finite'] and res['params_finite'], f"{what}: the model is not intact after Stop: {res}"
    assert res['t_stop'] is not None and res['t_stop'] >= t_click - 0.5, f"{what}: the stop request is older than the click: {res}"
    lat = (res['t_stop'] - t_click)*1000
    print(f"{what}: click to stop request in the kernel {lat:.0f} ms, click to 'stopped' on the page {(t_shown-t_click)*1000:.0f} ms; "
          f"{res['epochs']} of {ASKED_EPOCHS} epochs, {res['steps']} batches")
    return lat

def test_stop_while_busy(page, artifacts):
    "Stop works while the cell is busy: in a blocking fit, and in `panel.wait()` after Run All"
    try: check_stop_while_busy(page, artifacts)
    except BaseException:
        try: page.screenshot(path=str(artifacts/'browser_failure_busy.png'), full_page=True)
        except Exception: pass
        raise

def run_all_below(page, i:int):
    "Select cell `i` and run it and every cell below it, queued, from the Run menu (as Run All would)"
    c = cell(page, i)
    c.scroll_into_view_if_needed()
    c.locator('.jp-InputPrompt').first.click()
    expect(c).to_have_class(re.compile(r'\bjp-mod-active\b'), timeout=10_000)
    page.locator('.lm-MenuBar-item', has_text=re.compile(r'^Run$')).click()
    page.locator('.lm-Menu-item:visible', has_text='Run Selected Cell and All Below').click()

def check_stop_while_busy(page, artifacts):
    # (a) A blocking learn.fit(..., cbs=LivePanel()): the cell is busy until the fit ends
    before = start_cell(page, BLOCKING)
    t_click,t_shown = click_stop_when_running(page, artifacts, BLOCKING, '6_blocking')
    wait_cell(page, BLOCKING, before, timeout=120)
    lat_a = check_stopped_early(tagged(page, BLOCKING, 'BLOCKING'), t_click, t_shown, 'blocking fit')

    # (b) Run All: panel.start(...) in one cell, panel.wait() in the next, which keeps the kernel busy
    b_start,b_wait = prompt(page, BG_START),prompt(page, BG_WAIT)
    run_all_below(page, BG_START)
    wait_for(lambda: re.fullmatch(r'\[\d+\]:', prompt(page, BG_START)) and prompt(page, BG_START) != b_start, 60, 'the start cell to run')
    wait_for(lambda: prompt(page, BG_WAIT) == '[*]:', 30, 'the wait cell to be queued or running')
    time.sleep(1.0)  # the wait cell starts as soon as the start cell ends: now it blocks in panel.wait()
    assert prompt(page, BG_WAIT) == '[*]:', f"panel.wait() ended before Stop: {output_text(page, BG_WAIT)}"
    t_click,t_shown = click_stop_when_running(page, artifacts, BG_START, '7_run_all')
    wait_cell(page, BG_WAIT, b_wait, timeout=120)
    lat_b = check_stopped_early(tagged(page, BG_WAIT, 'WAITED'), t_click, t_shown, 'panel.wait() after Run All')
    shot(page, artifacts, '8_run_all_result', cell(page, BG_WAIT))
    (artifacts/'browser_stop_latency.json').write_text(json.dumps(dict(blocking_ms=lat_a, run_all_wait_ms=lat_b)))
