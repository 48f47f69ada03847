"""`finetune_nb docs` pages show the tutorials' kept outputs (issue 26): opened offline in Chromium, a tutorial's page
has its tables and its charts as images, and the contents page lists the pages in the reading order of `index.ipynb`."""
import subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture(scope='module')
def docs(tmp_path_factory):
    dest = tmp_path_factory.mktemp('docs')
    r = subprocess.run(['finetune_nb', 'docs', '--dest', str(dest)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return dest

def test_tutorial_page_shows_tables_and_images(docs, browser):
    pg = browser.new_page()
    try:
        pg.route('http*://**', lambda route: route.abort())   # offline: nothing may come from the network
        pg.goto((docs/'tutorial_vision.html').as_uri())
        imgs = pg.locator('.jp-OutputArea-output img')
        assert pg.locator('.jp-OutputArea-output table').count() >= 1
        assert imgs.count() >= 1
        assert pg.evaluate("() => [...document.querySelectorAll('.jp-OutputArea-output img')].every(i => i.complete && i.naturalWidth > 0)")
    finally: pg.close()

def test_contents_follow_the_reading_order(docs):
    html = (docs/'contents.html').read_text()
    pos = [html.index(f'href="{n}.html"') for n in ('index', 'tutorial_vision', 'tutorial_update', '00_models', '02_groups', '19_cli')]
    assert pos == sorted(pos), pos

def test_docs_outside_the_repository_fail_in_one_line(tmp_path):
    r = subprocess.run(['finetune_nb', 'docs', '--dest', str(tmp_path/'out')], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == '' and not (tmp_path/'out').exists()
    assert r.stderr.startswith('finetune_nb docs: error: no notebooks in') and r.stderr.count('\n') == 1, r.stderr
