"""The live panel's Stop button reaches a busy kernel through a subshell (`finetune_nb.live.stop_subshell`,
`route_to_subshell`), which rests on private ipykernel internals.

`test_ipykernel_internals` fails (it never skips) when an ipykernel upgrade removes or changes what finetune_nb uses:
the panel would then fall back to a disabled Stop button during a busy cell, so the fallback must be a decision, not a
surprise. The other tests start a real kernel (jupyter_client, no browser), send the click a frontend sends on the Stop
button's comm, and check that it ends a blocking `learn.fit(cbs=panel)`, and a fit that `panel.wait()` waits for, early.
`tests/test_browser.py` does the same through JupyterLab in Chromium."""
import inspect, json, os, sys, time
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parent.parent

def _params(f): return list(inspect.signature(f).parameters)

def test_ipykernel_internals():
    "What `stop_subshell` and `route_to_subshell` use is in the installed ipykernel, with the signatures they expect"
    import ipykernel
    from ipykernel.kernelbase import Kernel
    from ipykernel.comm.comm import BaseComm, Comm
    from ipykernel.subshell_manager import SubshellManager
    from ipykernel.shellchannel import ShellChannelThread
    from ipykernel.thread import BaseThread
    v = ipykernel.__version__
    why = f"ipykernel {v} changed an internal that finetune_nb.live uses for the Stop button: update stop_subshell/route_to_subshell"
    # The kernel holds a shell channel thread (None without subshells), whose `manager` is a SubshellManager ...
    assert 'shell_channel_thread' in Kernel.class_traits(), why
    assert isinstance(inspect.getattr_static(ShellChannelThread, 'manager'), property), why
    assert 'self.io_loop' in inspect.getsource(BaseThread.__init__), why
    # ... that creates subshells on that thread and lists them
    assert _params(SubshellManager._create_subshell) == ['self'], why
    assert _params(SubshellManager.list_subshell) == ['self'], why
    assert "SHELL_CHANNEL_THREAD_NAME" in inspect.getsource(SubshellManager._create_subshell), why  # runs on that thread
    # The shell channel routes a comm message to the subshell that `comm._reply_subshell_for(data, default)` returns
    src = inspect.getsource(Kernel.shell_channel_thread_main)
    assert 'getattr(comm, "_reply_subshell_for"' in src and 'route(content.get("data"), subshell_id)' in src, why
    assert _params(BaseComm._reply_subshell_for) == ['self', 'data', 'default'], why
    assert issubclass(Comm, BaseComm), why
    # ipywidgets' comms are ipykernel's
    import comm, ipykernel.ipkernel  # importing ipykernel's kernel installs its comm factory
    assert comm.create_comm.__module__ == 'ipykernel.ipkernel', why
    # and finetune_nb's own feature check agrees
    from finetune_nb.live import _kernel_routes_comms
    from ipykernel.ipkernel import IPythonKernel
    assert _kernel_routes_comms(IPythonKernel.__new__(IPythonKernel)), why

# --- a real kernel, driven as a frontend drives it ------------------------------------------------------------------

SETUP = """
import os, time, json, math, threading, torch
torch.set_num_threads(1)
from fastai.basics import Callback
from finetune_nb.all import *
from finetune_nb.live import LiveView  # a building block: not in the star import
from finetune_nb.test_utils import *
from finetune_nb.extension import last_live_panel
class Running(Callback):
    "Print once, at the 5th training batch, that the fit runs and the comm of its panel's Stop button (the test then clicks)"
    order = 80
    def after_batch(self):
        if self.training and self.train_iter == 5:
            p = [cb for cb in self.learn.cbs if isinstance(cb, LivePanel)][0]
            print('RUNNING', time.time(), p.view.stop.comm.comm_id, json.dumps(p.view.stop_blocked), flush=True)
import finetune_nb.live as live
def make_panel(route=True):
    panel = LivePanel(png=False)
    orig = live.route_to_subshell
    if not route: live.route_to_subshell = lambda *a, **k: 'not routed (the test control)'
    try: panel.view = LiveView(panel); panel.view.display()
    finally: live.route_to_subshell = orig
    print('PANEL', json.dumps(dict(comm=panel.view.stop.comm.comm_id, blocked=panel.view.stop_blocked,
                                   python=sys.executable)), flush=True)
    return panel
def result(panel, learn, asked):
    print('RESULT', json.dumps(dict(stopped=panel.state.stopped, steps=panel.state.step, asked=asked,
          t_stop=panel.state.t_stop, epochs=len(learn.recorder.values), disabled=panel.view.stop.disabled,
          finite=all(bool(torch.isfinite(p).all()) for p in learn.model.parameters()))), flush=True)
import sys
"""

@pytest.fixture(scope='module')
def kernel():
    from jupyter_client.manager import start_new_kernel
    km,kc = start_new_kernel(kernel_name='python3', env=dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg'), cwd=str(REPO))
    try:
        _run(kc, SETUP, 120)
        yield kc
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)

def _send(kc, code): return kc.execute(code, store_history=False)

def _lines(kc, msg_id, until, timeout, on_line=lambda l: None):
    "Stream lines of `msg_id`'s output, calling `on_line`, until a line starts with `until`; re-raise the cell's error"
    deadline,buf = time.time()+timeout,''
    while time.time() < deadline:
        try: m = kc.get_iopub_msg(timeout=1)
        except Exception: continue
        if m['parent_header'].get('msg_id') != msg_id: continue
        if m['msg_type'] == 'error': raise AssertionError('\n'.join(m['content']['traceback']))
        if m['msg_type'] == 'stream':
            buf += m['content']['text']
            *done,buf = buf.split('\n')
            for l in done:
                on_line(l)
                if l.startswith(until): return l
    raise AssertionError(f"no line starting with {until!r} within {timeout} s")

def _run(kc, code, timeout=60, until=None):
    mid = _send(kc, code)
    line = _lines(kc, mid, until, timeout) if until else None
    reply = kc.get_shell_msg(timeout=timeout)
    while reply['parent_header'].get('msg_id') != mid: reply = kc.get_shell_msg(timeout=timeout)
    assert reply['content']['status'] == 'ok', reply['content']
    return line

def _click(kc, comm_id):
    "The message a frontend sends when the Stop button is clicked (on the main shell: no subshell_id)"
    kc.shell_channel.send(kc.session.msg('comm_msg', dict(comm_id=comm_id, data=dict(method='custom', content=dict(event='click')))))
    return time.time()

def _panel(kc, route=True):
    info = json.loads(_run(kc, f"panel = make_panel({route})", until='PANEL').split(' ', 1)[1])
    assert info['python'] == sys.executable, info
    if route: assert info['blocked'] == '', f"the Stop subshell is not available in this kernel: {info['blocked']}"
    return info['comm']

def _stop_after_running(kc, mid, comm_id=None, timeout=120):
    "Click Stop (on `comm_id`, default: the one the RUNNING line names) once the cell says RUNNING; return the RESULT of the cell"
    clicked = {}
    def on_line(l):
        if l.startswith('RUNNING') and not clicked: clicked['t'] = _click(kc, comm_id or l.split()[2])
    res = json.loads(_lines(kc, mid, 'RESULT', timeout, on_line).split(' ', 1)[1])
    assert clicked, "the fit never said RUNNING"
    res['latency_ms'] = (res['t_stop']-clicked['t'])*1000 if res['t_stop'] else None
    return res

N_EPOCHS = 400  # 4 batches an epoch: minutes of training, unless Stop ends it

def test_stop_blocking_fit(kernel):
    "A click on Stop during a blocking `learn.fit(cbs=panel)` ends the fit at the next batch, the model intact"
    cid = _panel(kernel)
    mid = _send(kernel, f"learn = tiny_learner()\nwith learn.no_bar(), learn.no_logging(): learn.fit({N_EPOCHS}, 1e-3, cbs=[Running(), panel])\n"
                        "result(panel, learn, 4*N)".replace('N', str(N_EPOCHS)))
    res = _stop_after_running(kernel, mid, cid)
    print(f"blocking fit: click to stop flag {res['latency_ms']:.1f} ms; {res['steps']} of {4*N_EPOCHS} batches")
    assert res['stopped'] and res['finite'], res
    assert res['steps'] < 100 and res['epochs'] < N_EPOCHS, f"Stop did not end the fit early: {res}"
    assert res['latency_ms'] is not None and res['latency_ms'] < 5000, res
    assert res['disabled'], res  # after the fit, the button is disabled

def test_stop_while_waiting(kernel):
    "Run All: `panel.start(...)` in one cell and `panel.wait()` in the next; a click during `wait` ends the fit early"
    cid = _panel(kernel)
    m1 = _send(kernel, f"learn = tiny_learner()\npanel.start(learn.fit, {N_EPOCHS}, 1e-3, cbs=Running());")
    m2 = _send(kernel, f"panel.wait(timeout=600)\nresult(panel, learn, {4*N_EPOCHS})")   # queued behind the first, as by Run All
    # RUNNING is printed by the worker thread with the first cell's parent: listen on both
    clicked,out = {},{}
    deadline,buf = time.time()+120,''
    while time.time() < deadline and 'res' not in out:
        try: m = kernel.get_iopub_msg(timeout=1)
        except Exception: continue
        if m['parent_header'].get('msg_id') not in (m1, m2): continue
        if m['msg_type'] == 'error': raise AssertionError('\n'.join(m['content']['traceback']))
        if m['msg_type'] != 'stream': continue
        for l in m['content']['text'].splitlines():
            if l.startswith('RUNNING') and not clicked: clicked['t'] = _click(kernel, cid)
            if l.startswith('RESULT'): out['res'] = json.loads(l.split(' ', 1)[1])
    assert clicked and 'res' in out, f"no RUNNING/RESULT: {clicked} {out}"
    res = out['res']
    res['latency_ms'] = (res['t_stop']-clicked['t'])*1000 if res['t_stop'] else None
    print(f"panel.wait after Run All: click to stop flag {res['latency_ms']:.1f} ms; {res['steps']} of {4*N_EPOCHS} batches")
    assert res['stopped'] and res['finite'], res
    assert res['steps'] < 100 and res['epochs'] < N_EPOCHS, f"Stop did not end the fit early: {res}"

def test_control_without_subshell(kernel):
    "The control: without the routing, the same click waits behind the busy cell, so the fit runs to its end (why the routing exists)"
    n = 15
    cid = _panel(kernel, route=False)
    mid = _send(kernel, f"learn = tiny_learner()\nwith learn.no_bar(), learn.no_logging(): learn.fit({n}, 1e-3, cbs=[Running(), panel])\n"
                        f"result(panel, learn, {4*n})")
    res = _stop_after_running(kernel, mid, cid)
    assert not res['stopped'] and res['steps'] == 4*n and res['t_stop'] is None, res
    assert res['disabled'], res

def test_stop_under_load_ext(kernel):
    "Under `%load_ext finetune_nb`, the automatic panel of a plain blocking `learn.fit` stops at a click too"
    _run(kernel, "%load_ext finetune_nb")
    try:
        mid = _send(kernel, f"learn = tiny_learner()\nlearn.fit({N_EPOCHS}, 1e-3, cbs=Running())\n"
                            f"result(last_live_panel(learn), learn, {4*N_EPOCHS})")
        res = _stop_after_running(kernel, mid)
    finally: _run(kernel, "%unload_ext finetune_nb")
    print(f"%load_ext, blocking fit: click to stop flag {res['latency_ms']:.1f} ms; {res['steps']} of {4*N_EPOCHS} batches")
    assert res['stopped'] and res['finite'], res
    assert res['steps'] < 100 and res['epochs'] < N_EPOCHS, f"Stop did not end the fit early: {res}"
