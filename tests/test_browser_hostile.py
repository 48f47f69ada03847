"""The saved audit and report pages, opened in a real browser, run nothing that came from the data (#20).

The class names of the data are script: an `<img onerror>` and a `<script>` that set `window.__pwned` and the page's title.
Headless Chromium (the session's, from `tests/conftest.py`; no server) opens `audit.html` and `report.html` from disk and
checks that neither ran and that the names are on the page as text.

Needs `bash tests/install_browser.sh` (Chromium from apt) and the `playwright` pip package: it fails, never skips, when either is missing."""
import pytest
from test_trust_data import HOSTILE, hostile  # noqa: F401 (the fixture)

@pytest.mark.parametrize('name,title', [('audit', 'Data audit'), ('report', 'Fine-tuning report')])
def test_saved_page_runs_no_script_from_data(hostile, browser, tmp_path, name, title):
    path = hostile[name].save(tmp_path/name)[f'{name}.html']
    pg = browser.new_page()
    try:
        dialogs = []
        pg.on('dialog', lambda d: (dialogs.append(d.message), d.dismiss()))
        pg.goto(path.as_uri(), wait_until='load')
        pg.wait_for_timeout(300)  # an onerror fires after the failed load of src=x: give it time
        assert pg.evaluate('window.__pwned') is None, f"{name}: script from a class name ran"
        assert pg.title() == title and not dialogs, (name, pg.title(), dialogs)
        assert pg.locator('script, img[onerror], [onload]').count() == 0, name
        text = pg.inner_text('body')
        for c in HOSTILE: assert c in text, f"{name}: {c!r} is not shown as text"
    finally: pg.close()
