"`finetune_nb train DATA` and `finetune_nb predict` as a new user meets them: a folder of their own images in, a model, an export, a report and predictions out; every bad input one line and exit status 2, with nothing written"
import csv, os, subprocess, sys
from pathlib import Path
import numpy as np, PIL.Image, pytest

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}

def run(*args, timeout=600, cwd=None):
    return subprocess.run(['finetune_nb', *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout, cwd=cwd)

def write_digits(root:Path, classes=(0, 1, 7), n=10, split=False) -> Path:
    "A user's folder: scikit-learn digits as 32 px PNGs, one sub-folder per class (under train/ and valid/ with `split`)"
    from sklearn.datasets import load_digits
    d = load_digits()
    for c in classes:
        imgs = d.images[d.target == c][:n]
        for i,im in enumerate(imgs):
            sub = root/(('valid' if i % 4 == 0 else 'train') if split else '')/f'digit_{c}'
            sub.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray((im*16).clip(0, 255).astype(np.uint8)).resize((32, 32)).save(sub/f'{i}.png')
    return root

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "One training run on a user's folder with train/ and valid/, shared by the tests that read what it wrote"
    tmp = tmp_path_factory.mktemp('train')
    data,out = write_digits(tmp/'imgs', split=True),tmp/'run'
    r = run('train', 'imgs', '--epochs', 1, '--size', 32, '--bs', 8, '--out', 'run', cwd=tmp)  # DATA as a user types it; stdout is a pipe: plain lines, no bars
    return data, out, r

def test_train_writes_model_export_report(trained):
    data,out,r = trained
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'on imgs (3 classes: digit_0, digit_1, digit_7' in r.stdout and '21 train / 9 valid images' in r.stdout, r.stdout  # the user's split: every 4th image in valid/
    for f in ('model.pth', 'export.pkl', 'history.csv', 'training.png', 'summary.json', 'report/report.html'): assert (out/f).exists(), f
    assert 'phase 0 (head)  epoch 1/1  train_loss' in r.stdout and '\r' not in r.stdout and '█' not in r.stdout  # a log file reads line by line
    assert not any(p.name.endswith('.pth') for p in data.rglob('*')), 'nothing written into the data folder'

def test_export_predicts_without_finetune_nb(trained):
    _,out,_ = trained
    code = ("import sys; sys.modules['finetune_nb'] = None\n"  # finetune_nb cannot be imported
            "from fastai.vision.all import load_learner\n"
            f"l = load_learner({str(out/'export.pkl')!r}); print(list(l.dls.vocab))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0 and "['digit_0', 'digit_1', 'digit_7']" in r.stdout, r.stderr[-2000:]

def test_predict_csv(trained, tmp_path):
    data,out,_ = trained
    (tmp_path/'bad.png').write_bytes(b'')
    r = run('predict', out/'model.pth', data/'valid', tmp_path/'bad.png', '--out', tmp_path/'p.csv')
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path/'p.csv')))
    assert len(rows) == 10 and {r['label'] for r in rows[:-1]} <= {'digit_0', 'digit_1', 'digit_7'}
    assert all(0 < float(r['probability']) <= 1 for r in rows if r['label'])
    assert [r for r in rows if not r['label']][0]['error'].startswith('cannot be read')
    r = run('predict', out/'model.pth', tmp_path/'nothing_here')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'no such file or folder' in r.stderr

def bad_inputs(tmp:Path) -> list:
    one = write_digits(tmp/'one_class', classes=(3,), n=4)
    single = write_digits(tmp/'single', n=3); [f.unlink() for f in list((single/'digit_7').iterdir())[1:]]
    empty_img = write_digits(tmp/'zero_byte', n=3); (empty_img/'digit_0'/'z.png').write_bytes(b'')
    bomb = write_digits(tmp/'bomb', n=3); PIL.Image.new('1', (15000, 15000)).save(bomb/'digit_1'/'bomb.png')
    (tmp/'empty').mkdir()
    (tmp/'outside.csv').write_text('path,label\n../etc/passwd,a\nx.png,b\n')
    return [(tmp/'nope', 'no such folder'), (tmp/'empty', 'found 0 class folders'), (one, 'found 1 class folder'),
            (single, "class 'digit_7' has only one image"), (empty_img, 'cannot be read'), (bomb, 'cannot be read'),
            (tmp/'outside.csv', "is outside the CSV's folder")]

def test_bad_input_one_line_nothing_written(tmp_path):
    for data,msg in bad_inputs(tmp_path):
        out = tmp_path/f'out_{data.name}'
        r = run('train', data, '--out', out, timeout=120)
        assert r.returncode == 2, (data, r.stderr[-2000:])
        assert len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, (data, r.stderr)
        assert not out.exists(), data

def test_update_own_model_then_predict(trained, tmp_path):
    "`finetune_nb update --data NEW --model RUN`: a new class arrives; the kept model predicts it, and the registry holds the model before"
    import shutil, torch
    data,out,_ = trained
    run_dir = tmp_path/'run'; shutil.copytree(out, run_dir)
    new = write_digits(tmp_path/'new', classes=(0, 1, 3, 7), n=24, split=True)
    r = run('update', '--data', new, '--model', run_dir, '--epochs', 3, '--replay', 20, '--tol', 1, '--class-tol', 1, '--quiet', cwd=tmp_path)  # not train's folder: its relative DATA was recorded as an absolute path
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Saved the updated model (4 classes)' in r.stdout, r.stdout[-2000:]
    saved = torch.load(run_dir/'model.pth', weights_only=True)
    assert saved['vocab'] == ['digit_0', 'digit_1', 'digit_7', 'digit_3'], saved['vocab']  # the old classes keep their places
    assert (run_dir/'registry'/'versions.json').exists()
    r = run('predict', run_dir/'model.pth', new/'valid'/'digit_3')
    assert r.returncode == 0, r.stderr[-2000:]
    assert {l.split(',')[1] for l in r.stdout.splitlines()[1:]} <= {'digit_0', 'digit_1', 'digit_3', 'digit_7'}
    r = run('update', '--data', new, '--model', tmp_path/'nowhere')
    assert r.returncode == 2 and '--data needs --model' in r.stderr and len(r.stderr.strip().splitlines()) == 1

def test_audit_honours_train_valid(tmp_path):
    "`finetune_nb audit --data` on a folder with train/ and valid/ keeps the user's split: a near-copy across it is a leak"
    import shutil, pandas as pd
    data = write_digits(tmp_path/'split', split=True)
    shutil.copy(data/'train'/'digit_7'/'1.png', data/'valid'/'digit_7'/'copy_of_1.png')
    r = run('audit', '--data', data, '--folds', 2, '--size', 32, '--out', tmp_path/'o')
    assert r.returncode == 0, r.stderr[-2000:]
    bal = pd.read_csv(tmp_path/'o'/'balance.csv').set_index('class')
    assert bal.valid.tolist() == [3, 3, 4] and bal.train.tolist() == [7, 7, 7], bal  # every 4th image, and the copy, in valid/
    leaks = pd.read_csv(tmp_path/'o'/'leaks.csv')
    assert any('train/digit_7/1.png' in t and 'valid/digit_7/copy_of_1.png' in v for t,v in zip(leaks.train_item, leaks.valid_item)), leaks

def test_train_predict_hugging_face_folder(tmp_path):
    "`--arch` a Hugging Face image classifier saved to a folder (offline, random weights): train, then predict with its architecture"
    from transformers import ViTConfig, ViTForImageClassification
    hf = tmp_path/'vit'
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)).save_pretrained(hf)
    data = write_digits(tmp_path/'imgs', n=8)
    r = run('train', data, '--arch', hf, '--epochs', 1, '--size', 32, '--bs', 8, '--out', tmp_path/'run', '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'Fine-tuning {hf} on {data} (3 classes' in r.stdout, r.stdout[:500]
    r = run('predict', tmp_path/'run'/'model.pth', data/'digit_7')
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.splitlines()) == 9 and {l.split(',')[1] for l in r.stdout.splitlines()[1:]} <= {'digit_0', 'digit_1', 'digit_7'}
