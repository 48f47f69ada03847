"The project's own promises: README in sync with index.ipynb, CI running the README's test command, one constraints file"
import re, subprocess
from pathlib import Path
root = Path(__file__).parent.parent

def readme_commands(text): return re.findall(r'```sh\n(.+?)\n```', text)

def test_readme_is_rendered_from_index():
    from finetune_nb.docs import readme_md
    assert (root/'README.md').read_text() == readme_md(root/'nbs'/'index.ipynb'), "README.md is stale: run `finetune_nb readme`"

def test_two_readme_commands():
    cmds = readme_commands((root/'README.md').read_text())
    assert len(cmds) == 2, cmds
    assert cmds[0] == 'pip install -c constraints.txt -e ".[dev]" && finetune_nb demo'
    extras = sorted(l.split('_requirements')[0] for l in (root/'settings.ini').read_text().splitlines() if '_requirements =' in l)
    m = re.match(r'pip install -c constraints\.txt -e "\.\[(.+?)\]" && ', cmds[1])
    assert m and sorted(m.group(1).split(',')) == extras, (cmds[1], extras)  # the test command installs every extra the notebooks use

def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = readme_commands((root/'README.md').read_text())[1]
    lines = (root/'.ci'/'run').read_text().splitlines()
    assert test_cmd in lines
    # bash's errexit ignores a failure before the last `&&` of a line: CI must check the line's status itself
    assert lines[lines.index(test_cmd)+1].startswith('status=$?'), lines[lines.index(test_cmd)+1]

def test_constraints_pin_the_toolchain():
    c = (root/'constraints.txt').read_text()
    for pin in ('nbdev==2.4.14', 'fastcore>=1.14.5,<2', 'execnb<0.2', 'plum-dispatch<2.10'): assert pin in c.splitlines()
    import fastcore, nbdev, execnb
    assert nbdev.__version__ == '2.4.14' and int(fastcore.__version__.split('.')[0]) < 2

def test_readme_command_checks():
    r = subprocess.run(['finetune_nb', 'readme', '--check'], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0 and 'up to date' in r.stdout, r

def test_html_docs_build(tmp_path):
    r = subprocess.run(['finetune_nb', 'docs', '--dest', str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    contents = (tmp_path/'contents.html').read_text()
    nbs = sorted(p.stem for p in (root/'nbs').glob('*.ipynb'))
    for n in nbs: assert f'href="{n}.html"' in contents and (tmp_path/f'{n}.html').stat().st_size > 10_000
    front = (tmp_path/'index.html').read_text()
    assert 'finetune_learner' in front and 'href="02_groups.html"' in front   # the front page links the tutorials' pages
    assert 'auto_splitter' in (tmp_path/'02_groups.html').read_text()
    assert 'src="images/live_panel.png"' in front and (tmp_path/'images'/'live_panel.png').stat().st_size > 10_000
