"""The saved audit and report pages, opened in a real browser, run nothing that came from the data (#20).

The class names of the data are script: an `<img onerror>` and a `<script>` that set `window.__pwned` and the page's title.
Headless Chromium (Debian's, at /usr/bin/chromium, driven by Playwright; one launch, no server) opens `audit.html` and
`report.html` from disk and checks that neither ran and that the names are on the page as text.

Needs `bash tests/install_browser.sh` (Chromium from apt) and the `playwright` pip package: it fails, never skips, when either is missing."""
import os
import pytest
from test_trust_data import HOSTILE, hostile  # noqa: F401 (the fixture)

try:
    from playwright.sync_api import sync_playwright
    _PW_ERROR = None
except ImportError as e: _PW_ERROR = e

CHROMIUM = '/usr/bin/chromium'

def test_saved_pages_run_no_script_from_data(hostile, tmp_path):
    if _PW_ERROR is not None: pytest.fail(f"The Python package playwright is missing ({_PW_ERROR})", pytrace=False)
    if not os.path.exists(CHROMIUM): pytest.fail(f"{CHROMIUM} is missing: run `bash tests/install_browser.sh`", pytrace=False)
    pages = {'audit': (hostile['audit'].save(tmp_path/'audit')['audit.html'], 'Data audit'),
             'report': (hostile['report'].save(tmp_path/'report')['report.html'], 'Fine-tuning report')}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=['--no-sandbox', '--disable-gpu', '--disable-background-networking'])
        try:
            for name,(path,title) in pages.items():
                pg = browser.new_page()
                dialogs = []
                pg.on('dialog', lambda d: (dialogs.append(d.message), d.dismiss()))
                pg.goto(path.as_uri(), wait_until='load')
                pg.wait_for_timeout(300)  # an onerror fires after the failed load of src=x: give it time
                assert pg.evaluate('window.__pwned') is None, f"{name}: script from a class name ran"
                assert pg.title() == title and not dialogs, (name, pg.title(), dialogs)
                assert pg.locator('script, img[onerror], [onload]').count() == 0, name
                text = pg.inner_text('body')
                for c in HOSTILE: assert c in text, f"{name}: {c!r} is not shown as text"
                pg.close()
        finally: browser.close()
