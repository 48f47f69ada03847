"`%load_ext finetune_nb` in a real IPython shell: the learner shows its layer picker, fits get the live panel, `%unload_ext` undoes it"
import subprocess, sys
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

@pytest.fixture
def ip():
    "An IPython shell (history in memory), always left with the extension unloaded"
    c = Config(); c.HistoryManager.hist_file = ':memory:'
    shell = InteractiveShell.instance(config=c)
    yield shell
    import finetune_nb.extension as ext
    ext.unload_ipython_extension(shell)   # even when the test failed half-way
    ext.ext_settings.panel_kwargs.pop('widgets', None)
    InteractiveShell.clear_instance()

def run(ip, code:str):
    "Run `code` as a cell; return what it printed, the displayed value included"
    with capture_output() as c: r = ip.run_cell(code, store_history=True)
    r.raise_error()
    return c.stdout

PROBE = '''
from fastai.basics import Callback
class CbNames(Callback):
    "Record the class names of the callbacks of each fit"
    def __init__(self): super().__init__(); self.fits = []
    def before_fit(self): self.fits.append([type(c).__name__ for c in self.learn.cbs])
names = CbNames()
'''

def test_import_is_cheap():
    code = "import sys, finetune_nb; print(sorted({'fastai', 'torch'} & set(sys.modules)), callable(finetune_nb.load_ipython_extension))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.stdout.split() == ['[]', 'True'], r.stderr

def test_load_fit_display_unload(ip):
    from fastai.learner import Learner
    fit0 = Learner.fit
    run(ip, 'from finetune_nb.test_utils import tiny_learner, synth_dls\nlearn = tiny_learner(synth_dls(n=32))   # 2 batches an epoch\n' + PROBE)
    usual = run(ip, 'learn')
    assert usual.startswith('Out[') and '<fastai.learner.Learner at ' in usual and 'groups train' not in usual
    run(ip, '%load_ext finetune_nb')
    run(ip, '%load_ext finetune_nb')   # harmless
    run(ip, '%load_ext finetune_nb.extension')   # the same extension under its module's name: also harmless
    assert Learner.fit.__wrapped__ is fit0
    shown = run(ip, 'learn')
    assert '3 of 3 groups train, 1,491 of 1,491 parameters' in shown and 'classifier' in shown   # the picker's text form

    out = run(ip, 'learn.fit(1, 1e-2, cbs=names)')
    names = ip.user_ns['names']
    assert 'Done: epoch 1/1 · batch 2/2' in out   # the panel's text line, beside fastai's table
    assert names.fits[-1].count('LivePanel') == 1 and 'ProgressCallback' in names.fits[-1]
    assert {'GroupRecorder', 'FeatureCache', 'DivergenceGuard', 'OverfitWatch'} <= set(names.fits[-1])   # finetune_callbacks joined the watched fit
    from fastai.basics import defaults
    assert all(c.__module__.startswith('fastai.') for c in defaults.callbacks), defaults.callbacks   # fastai's defaults untouched
    import finetune_nb.extension as ext
    learn = ip.user_ns['learn']
    panel = ext.last_live_panel(learn)
    assert (panel.state.step, len(panel.state.rows), panel.state.running) == (2, 1, False)
    assert not hasattr(learn, 'live_panel')   # only in the learner during the fit

    run(ip, 'learn.fine_tune(1, 1e-2, cbs=names)')   # two fits, one panel
    p2 = ext.last_live_panel(learn)
    assert p2 is not panel and all(f.count('LivePanel') == 1 for f in names.fits[-2:]) and p2.state.step == 4

    run(ip, '%unload_ext finetune_nb')
    assert Learner.fit is fit0
    assert Learner not in ip.display_formatter.mimebundle_formatter.type_printers
    assert ext._new_cell not in ip.events.callbacks['pre_run_cell']
    run(ip, 'learn.fit(1, 1e-2, cbs=names)')
    assert 'LivePanel' not in names.fits[-1] and ext.last_live_panel(learn) is None
    assert not {'GroupRecorder', 'FeatureCache', 'DivergenceGuard', 'OverfitWatch'} & set(names.fits[-1])   # unloading took them out
    after = run(ip, 'learn')
    assert after.split(': ', 1)[1] == usual.split(': ', 1)[1]   # the usual repr, only the prompt number differs

def test_opt_outs(ip):
    run(ip, '%load_ext finetune_nb')
    run(ip, 'from finetune_nb.test_utils import tiny_learner, synth_dls\nfrom finetune_nb.live import LivePanel\n'
            'from finetune_nb.extension import no_live_panel, configure_extension\n' + PROBE)
    run(ip, 'learn = tiny_learner(synth_dls(n=32), cbs=LivePanel(png=False, text_every=1e9))\nlearn.fit(1, cbs=names)')   # its own panel, not a second one
    assert ip.user_ns['names'].fits[-1].count('LivePanel') == 1
    run(ip, 'learn = tiny_learner(synth_dls(n=32))\nwith no_live_panel(): learn.fit(1, cbs=names)')
    assert 'LivePanel' not in ip.user_ns['names'].fits[-1]
    run(ip, 'configure_extension(panel=False)\nlearn.fit(1, cbs=names)\nconfigure_extension(panel=True)')
    assert 'LivePanel' not in ip.user_ns['names'].fits[-1]
    run(ip, 'configure_extension(picker=False)')
    assert '<fastai.learner.Learner at ' in run(ip, 'learn')
    run(ip, 'configure_extension(picker=True)')
    with pytest.raises(TypeError, match="LivePanel has no option 'fsp'"): run(ip, 'configure_extension(fsp=2)')

def test_widget_view_hides_fastai_bar(ip):
    "With the widget view, the panel shows progress and epochs, so fastai's bar and table are off during the fit, and back after"
    run(ip, '%load_ext finetune_nb')
    run(ip, 'from finetune_nb.test_utils import tiny_learner, synth_dls\nfrom finetune_nb.extension import configure_extension, last_live_panel\n'
            'configure_extension(widgets=True)\nlearn = tiny_learner(synth_dls(n=32))\n' + PROBE)
    out = run(ip, 'learn.fit(1, 1e-2, cbs=names)')
    fit_cbs = ip.user_ns['names'].fits[-1]
    assert 'LivePanel' in fit_cbs and 'ProgressCallback' not in fit_cbs
    assert 'train_loss' not in out   # no fastai table
    learn = ip.user_ns['learn']
    assert hasattr(learn, 'progress') and ip.user_ns['last_live_panel'](learn).view is not None
