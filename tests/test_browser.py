"""End-to-end test of the two ipywidgets panels (`LayerPicker`, `LivePanel`) in a real browser.

JupyterLab is started on a free port with the Python that runs pytest; Chromium (Debian's, at /usr/bin/chromium),
driven by Playwright, opens `tests/browser_panels.ipynb` (copied into a temporary folder) and runs its cells one by
one. The test checks that both panels render, that the live chart moves while the fit runs in its worker thread,
that the Stop button ends the fit early with the model intact, and that the picker's checkboxes and Apply button
change `requires_grad` in the kernel. Then the Stop button must work while the cell is busy: during a blocking
`learn.fit(..., cbs=LivePanel())`, and during `panel.wait()` after the two cells `panel.start(...)` and `panel.wait()`
were run together ("Run Selected Cell and All Below", as Run All runs them); each click must end the fit early with
the model intact, and the click-to-stop latency is printed. Screenshots go to `test_artifacts/browser_*` (git-ignored).

The harness (one JupyterLab server and one Chromium for every browser test of the session) is `tests/browser_utils.py`,
its fixtures in `tests/conftest.py`. Needs: `bash tests/install_browser.sh` (Chromium from apt) and the `playwright` pip
package (dev requirements); it fails, never skips, when either is missing."""
import json, re, time
from browser_utils import (expect, require_browser, shot, cell, prompt, button, start_cell, run_cell, wait_cell, run_all_below,
                           output_text, tagged, no_widget_errors, wait_for)  # the shared harness; its fixtures are in conftest.py

NOTEBOOK = 'browser_panels.ipynb'  # opened by the `page` fixture, its kernel started
# Code cells of the notebook, by their index among all cells (cell 0 is markdown)
SETUP, PICKER, GRAD, START, RESULT, BLOCKING, BG_START, BG_WAIT = 1, 2, 3, 4, 5, 6, 7, 8
ASKED_EPOCHS = 400  # of the blocking fit and of the fit `panel.wait()` waits for: minutes, unless Stop ends them
TOTAL_EPOCHS = 302  # fine_tune_progressive(epochs=300) on 3 groups: 1 + 1 + 300 epochs

STATUS_JS = """c => { const b = [...c.querySelectorAll('.widget-html-content')].find(e => e.firstElementChild && e.firstElementChild.tagName === 'B');
                      return b ? b.innerText : null; }"""
LOSS_POINTS_JS = """c => { const s = [...c.querySelectorAll('svg')].find(s => { const t = s.querySelector('text'); return t && t.textContent === 'loss'; });
                           const l = s && s.querySelector('polyline'); return l ? l.getAttribute('points') : null; }"""

def live_status(page, i:int=START) -> str: return cell(page, i).evaluate(STATUS_JS) or ''
def loss_points(page, i:int=START) -> str: return cell(page, i).evaluate(LOSS_POINTS_JS) or ''
def stop_button(page, i:int): return button(cell(page, i), 'Stop')

# --- the tests ------------------------------------------------------------------------------------------------------

def test_browser_tools_installed():
    "Chromium and Playwright are there (a clear failure, not a skip, where they are not)"
    require_browser()

def test_panels_in_jupyterlab(page):
    t0 = time.time()
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
    apply_btn = button(pc, 'Apply')
    expect(apply_btn).to_be_visible()
    no_widget_errors(page)
    shot(page, 'browser_1_picker', pc)

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
    shot(page, 'browser_2_picker_applied', pc)

    # 1b. The live panel renders (the fit runs in a worker thread: the cell ends at once) with a Stop button
    run_cell(page, START, timeout=60)
    lc = cell(page, START)
    stop = stop_button(page, START)
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
    shot(page, 'browser_3_running', lc)

    # 3. Stop ends the fit early; the model is intact
    stop.click()
    wait_for(lambda: live_status(page).startswith('stopped'), 60, "the status 'stopped' after clicking Stop", info)
    expect(stop).to_be_disabled(timeout=10_000)
    shot(page, 'browser_4_stopped', lc)
    run_cell(page, RESULT, timeout=90)
    res = tagged(page, RESULT, 'RESULT')
    assert res['stopped'] is True and res['running'] is False, res
    assert res['thread_alive'] is False, f"the worker thread still runs after Stop: {res}"
    assert res['total_epochs'] == TOTAL_EPOCHS, res
    assert 1 <= res['epochs_done'] < TOTAL_EPOCHS//3, f"Stop did not end the fit early: {res}"
    assert res['validate_finite'] and res['params_finite'], f"the model is not intact after Stop: {res}"
    no_widget_errors(page)
    shot(page, 'browser_5_result', cell(page, RESULT))
    print(f"browser test body: {time.time()-t0:.1f} s; result {res}")

def click_stop_when_running(page, i:int, name:str) -> float:
    "Wait until the panel in cell `i` runs with Stop enabled, click Stop; return the times of the click and of the status `stopped`"
    info = lambda: f"status={live_status(page, i)!r}"
    wait_for(lambda: live_status(page, i).startswith('running') and loss_points(page, i), 90, f'the panel of cell {i} to run', info)
    stop = stop_button(page, i)
    expect(stop).to_be_enabled(timeout=10_000)   # not 'Stop unavailable': the click can reach the busy kernel
    no_widget_errors(page)
    shot(page, f'browser_{name}_running', cell(page, i))
    t_click = time.time()
    stop.click()
    wait_for(lambda: live_status(page, i).startswith('stopped'), 60, f"the status 'stopped' in cell {i} after clicking Stop", info)
    t_shown = time.time()
    expect(stop).to_be_disabled(timeout=10_000)
    shot(page, f'browser_{name}_stopped', cell(page, i))
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
    "Stop works while the cell is busy: in a blocking fit, and in `panel.wait()` after Run All (the notebook's setup cell has run)"
    # (a) A blocking learn.fit(..., cbs=LivePanel()): the cell is busy until the fit ends
    before = start_cell(page, BLOCKING)
    t_click,t_shown = click_stop_when_running(page, BLOCKING, '6_blocking')
    wait_cell(page, BLOCKING, before, timeout=120)
    lat_a = check_stopped_early(tagged(page, BLOCKING, 'BLOCKING'), t_click, t_shown, 'blocking fit')

    # (b) Run All: panel.start(...) in one cell, panel.wait() in the next, which keeps the kernel busy
    b_start,b_wait = prompt(page, BG_START),prompt(page, BG_WAIT)
    run_all_below(page, BG_START)
    wait_for(lambda: re.fullmatch(r'\[\d+\]:', prompt(page, BG_START)) and prompt(page, BG_START) != b_start, 60, 'the start cell to run')
    wait_for(lambda: prompt(page, BG_WAIT) == '[*]:', 30, 'the wait cell to be queued or running')
    time.sleep(1.0)  # the wait cell starts as soon as the start cell ends: now it blocks in panel.wait()
    assert prompt(page, BG_WAIT) == '[*]:', f"panel.wait() ended before Stop: {output_text(page, BG_WAIT)}"
    t_click,t_shown = click_stop_when_running(page, BG_START, '7_run_all')
    wait_cell(page, BG_WAIT, b_wait, timeout=120)
    lat_b = check_stopped_early(tagged(page, BG_WAIT, 'WAITED'), t_click, t_shown, 'panel.wait() after Run All')
    shot(page, 'browser_8_run_all_result', cell(page, BG_WAIT))
    (artifacts/'browser_stop_latency.json').write_text(json.dumps(dict(blocking_ms=lat_a, run_all_wait_ms=lat_b)))
