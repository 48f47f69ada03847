"""End-to-end test of the data cleaner panel (`finetune_nb.cleaner.DataCleaner`) in a real browser.

In JupyterLab (started with the Python that runs pytest), Chromium (Debian's, at /usr/bin/chromium), driven by
Playwright, opens `tests/browser_cleaner.ipynb` (a copy) and runs its cells one by one. It audits a small set of
corrupted digits, shows the cleaner, clicks remove on one row, relabel on another (to the suggested class) and relabel
on a third after choosing a class in its menu, and checks that each click changed the decisions in the kernel and in
the saved file; then a new `DataCleaner` on the same file shows the decisions.
Screenshots go to `test_artifacts/browser_cleaner_*.png` (git-ignored). The shared harness (one JupyterLab server and
one Chromium for every browser test of the session) is `tests/browser_utils.py`, its fixtures in `tests/conftest.py`.

Needs `bash tests/install_browser.sh` (Chromium from apt) and the `playwright` pip package: it fails, never skips, when either is missing."""
import re
from browser_utils import expect, shot, cell, button, run_cell, tagged, no_widget_errors  # the shared harness

NOTEBOOK = 'browser_cleaner.ipynb'  # opened by the `page` fixture, its kernel started
SETUP, PANEL, STATE, REOPEN, REOPENED = 1, 2, 3, 4, 5   # code cells, by index among all cells (cell 0 is markdown)

def test_cleaner_in_jupyterlab(page):
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
    no_widget_errors(page)
    shot(page, 'browser_cleaner_1_panel', pc)
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
    shot(page, 'browser_cleaner_2_decided', pc)

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
    shot(page, 'browser_cleaner_3_reopened', rc)
