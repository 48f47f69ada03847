"""Data is untrusted input (#20): class names and item names from a data set never run as HTML nor as spreadsheet formulas,
the cleaner's decisions fit only the data set they were made on and a broken decisions file fails in one clear line, and the
image-folder walk never follows a symlink loop nor reads outside the folder it was given."""
import csv, json, os, re
from html.parser import HTMLParser
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch

os.environ.setdefault('OMP_NUM_THREADS', '1')
torch.set_num_threads(1)

PWN = "window.__pwned=1;document.title='pwned'"
HOSTILE = [f'<img src=x onerror="{PWN}">', f'<script>{PWN}</script>', '"\'&amp;', "=cmd|'calc'!A0"]
FORMULA = ('=', '+', '-', '@', '\t', '\r')

def hostile_dls(train, valid):
    "Digits 0-3 at 16 px whose classes are named `HOSTILE`: `train` and `valid` are positions in the digits"
    from finetune_nb.data import array_dls
    from finetune_nb.data import digits_arrays
    imgs,ys = digits_arrays()
    names = np.array(HOSTILE, dtype=object)[np.minimum(ys, 3)]
    return array_dls(imgs, names, train, valid, size=16, bs=64)

def hostile_positions(seed=0, n=40, n_valid=10, noise=4):
    "Positions of `n` training and `n_valid` validation digits of each class 0-3, with `noise` training digits of class 0 put in class 1's place"
    from finetune_nb.data import digits_arrays
    _,ys = digits_arrays()
    rng = np.random.default_rng(seed)
    per = [rng.permutation(np.flatnonzero(ys == c)) for c in range(4)]
    return np.concatenate([p[:n] for p in per]), np.concatenate([p[n:n+n_valid] for p in per])

def hostile_learner(train, valid):
    from fastai.basics import Learner, CrossEntropyLossFlat, accuracy
    from finetune_nb.test_utils import TinyNet
    from finetune_nb.groups import auto_splitter
    dls = hostile_dls(train, valid)
    return Learner(dls, TinyNet(dls.c), loss_func=CrossEntropyLossFlat(), splitter=auto_splitter, metrics=accuracy)

@pytest.fixture(scope='module')
def hostile():
    "An audit and a report of data whose class names are hostile"
    from fastai.basics import set_seed
    from finetune_nb.audit import audit_data
    from finetune_nb.report import finetune_report
    set_seed(0)
    learn = hostile_learner(*hostile_positions())
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    audit = audit_data(learn, folds=3)
    assert len(audit.label_issues), "the test needs flagged items, whose label and suggested columns carry the hostile names"
    return dict(learn=learn, audit=audit, report=finetune_report(learn, k=8))

class _Page(HTMLParser):
    "The elements and the text of a page"
    def __init__(self, page:str):
        super().__init__(); self.tags,self.text = [],[]
        self.feed(page); self.close()
    def handle_starttag(self, tag, attrs): self.tags.append((tag, dict(attrs)))
    def handle_startendtag(self, tag, attrs): self.tags.append((tag, dict(attrs)))
    def handle_data(self, data): self.text.append(data)

def assert_inert(page:str):
    "No element from data in `page`: no script, no event handler, no image but ours (data: URIs); the names are there as text"
    p = _Page(page)
    assert not [t for t,_ in p.tags if t in ('script', 'iframe', 'object', 'embed')], [t for t,_ in p.tags]
    assert not [(t, a) for t,a in p.tags if any(k.startswith('on') for k in a)]
    assert all(a.get('src', '').startswith('data:image/png;base64,') for t,a in p.tags if t == 'img')
    text = ''.join(p.text)
    for name in HOSTILE: assert name in text, f"{name!r} is not shown as text"

# --- item 1: HTML ---------------------------------------------------------------------------------------------------

def test_audit_html_escapes_data(hostile, tmp_path):
    a = hostile['audit']
    assert_inert(a._repr_html_())
    assert_inert(a.save(tmp_path)['audit.html'].read_text(encoding='utf-8'))

def test_report_html_escapes_data(hostile, tmp_path):
    r = hostile['report']
    assert_inert(r._repr_html_())
    assert_inert(r.save(tmp_path)['report.html'].read_text(encoding='utf-8'))

def test_page_title_and_notes_escaped():
    from finetune_nb.report import html_page
    page = html_page(HOSTILE[1], '<p>body</p>')
    assert '<script>' not in page and '&lt;script&gt;' in page

# --- item 9: CSV formula injection ----------------------------------------------------------------------------------

def csv_cells(path:Path) -> list:
    with open(path, newline='', encoding='utf-8') as f: return [c for row in csv.reader(f) for c in row]

def is_number(s:str) -> bool:
    try: float(s); return True
    except ValueError: return False

def assert_no_formula(paths):
    for p in paths:
        bad = [c for c in csv_cells(p) if c.startswith(FORMULA) and not is_number(c)]
        assert not bad, f"{p.name}: cells a spreadsheet runs as formulas: {bad[:3]}"

def test_audit_csv_no_formula(hostile, tmp_path):
    paths = hostile['audit'].save(tmp_path)
    csvs = [p for k,p in paths.items() if k.endswith('.csv')]
    assert_no_formula(csvs)
    for k in ('scores.csv', 'balance.csv'): assert "'=cmd|'calc'!A0" in csv_cells(paths[k]), k

def test_audit_fixes_csv_round_trip(hostile, tmp_path):
    "fixes.csv, read back with pandas, still applies: the quote in front of a formula-like class is taken off"
    from finetune_nb.fixes import apply_fixes
    a = hostile['audit']
    fx = a.suggest_fixes()
    fx.loc[0, ['action', 'label']] = ['relabel', HOSTILE[3]]
    from finetune_nb.report import save_page
    p = save_page(tmp_path, tables={'fixes': (fx, False)})['fixes.csv']
    assert_no_formula([p])
    new = apply_fixes(a.dls, pd.read_csv(p))
    r = fx.iloc[0]
    ds = new.train_ds if r.split == 'train' else new.valid_ds
    assert str(a.vocab[int(ds[list(ds.keep).index(r.idx)][1])]) == HOSTILE[3]

def test_report_csv_no_formula(hostile, tmp_path):
    paths = hostile['report'].save(tmp_path)
    assert_no_formula([p for k,p in paths.items() if k.endswith('.csv')])
    conf = list(csv.reader(open(paths['confusion.csv'], newline='')))
    assert "'=cmd|'calc'!A0" in conf[0] and "'=cmd|'calc'!A0" in [r[0] for r in conf]

def test_csv_cell():
    from finetune_nb.report import csv_cell, csv_uncell
    for s in ['=1+1', '+1', '-x', '@SUM(A1)', '\tx', '\rx', "'=x", "'x"]:
        assert csv_cell(s).startswith("'") and csv_uncell(csv_cell(s)) == s
    for v in ['abc', 'a=b', -1.5, 3, None]: assert csv_cell(v) == v

# --- item 12: decisions fit one data set ----------------------------------------------------------------------------

def same_labels_other_items(train, valid):
    "Other digits at the same positions with the same classes: every training item swapped for an unused one of its class"
    from finetune_nb.data import digits_arrays
    _,ys = digits_arrays()
    used,new = set(train) | set(valid),[]
    for i in train:
        j = next(j for j in np.flatnonzero(np.minimum(ys, 3) == min(ys[i], 3)) if j not in used)
        used.add(j); new.append(j)
    return np.array(new), valid

def test_decisions_refused_on_other_data(hostile, tmp_path):
    from finetune_nb.audit import audit_data
    from finetune_nb.fixes import apply_fixes
    from finetune_nb.cleaner import CleanerState
    a = hostile['audit']
    path = tmp_path/'decisions.json'
    st = CleanerState(a, path)
    for r in st.items.itertuples(): st.decide(r.split, r.idx, 'remove')
    other = hostile_learner(*same_labels_other_items(*hostile_positions()))
    b = audit_data(other, folds=3)
    assert b.vocab == a.vocab and b.n_items == a.n_items and b.scores.sort_values(['split', 'idx']).label.tolist() == a.scores.sort_values(['split', 'idx']).label.tolist()
    with pytest.raises(ValueError, match='holds decisions for other data') as e: CleanerState(b, path)
    assert '\n' not in str(e.value)
    assert len(CleanerState(a, path).decisions) == len(st.items)  # the same data still reads them
    with pytest.raises(ValueError, match='other data'): apply_fixes(other.dls, st.fixes())
    with pytest.raises(ValueError, match='other data'): apply_fixes(other.dls, a.suggest_fixes())

# --- item 15: a broken decisions file, in one line ------------------------------------------------------------------

@pytest.mark.parametrize('case', ['deep', 'not_list', 'not_dicts', 'no_label', 'bad_idx'])
def test_bad_decisions_file_one_line(hostile, tmp_path, case):
    from finetune_nb.cleaner import CleanerState
    a = hostile['audit']
    path = tmp_path/'decisions.json'
    head = CleanerState(a, path)._header()
    r = a.scores.iloc[0]
    ok = dict(split=r.split, idx=int(r.idx), action='keep', label=r.label, given=r.label)
    text = {'deep': '[' * 100000,
            'not_list': json.dumps(dict(head, decisions={'a': 1})),
            'not_dicts': json.dumps(dict(head, decisions=[1, 2])),
            'no_label': json.dumps(dict(head, decisions=[{k:v for k,v in ok.items() if k != 'label'}])),
            'bad_idx': json.dumps(dict(head, decisions=[dict(ok, idx='0')]))}[case]
    path.write_text(text)
    with pytest.raises(ValueError) as e: CleanerState(a, path)
    msg = str(e.value)
    assert '\n' not in msg and str(path) in msg and len(msg) < 300, msg
    if case == 'no_label': assert "'label'" in msg
    if case == 'bad_idx': assert "'idx'" in msg

# --- item 8: the image-folder walk ----------------------------------------------------------------------------------

def write_images(root:Path, classes=('a', 'b'), n=6) -> Path:
    import PIL.Image
    from finetune_nb.data import digits_arrays
    imgs,_ = digits_arrays()
    for k,c in enumerate(classes):
        (root/c).mkdir(parents=True)
        for i in range(n): PIL.Image.fromarray(imgs[k*n+i]).save(root/c/f'{i}.png')
    return root

def test_symlink_loop_not_followed(tmp_path):
    from finetune_nb.audit import image_files, image_folder_problem
    from finetune_nb.cli import _audit_checks, _audit_dls
    d = write_images(tmp_path/'d')
    outside = write_images(tmp_path/'outside', classes=('x',), n=3)
    os.symlink(d/'a', d/'a'/'sub')                       # a loop
    os.symlink(outside/'x', d/'x')                       # a class folder that lies outside
    os.symlink(outside/'x'/'0.png', d/'b'/'stray.png')   # a file that lies outside
    files,notes = image_files(d)
    assert sorted(f.relative_to(d).as_posix() for f in files) == sorted(f'{c}/{i}.png' for c in 'ab' for i in range(6))
    text = ' '.join(notes)
    assert 'a/sub' in text and 'stray.png' in text and len(notes) == 2, notes
    assert image_folder_problem(d) is None
    _audit_checks(str(d), noise=0., size=64, bs=64, folds=5, valid_pct=0.2, top=10)
    dls,notes2 = _audit_dls(str(d), size=64, bs=64, valid_pct=0.2, seed=0)
    assert len(dls.train_ds) + len(dls.valid_ds) == 12 and list(dls.vocab) == ['a', 'b'] and notes2 == notes
