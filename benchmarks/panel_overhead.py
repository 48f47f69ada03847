"""Cost of watching training: time per epoch on the demo task with no progress callbacks, with fastai's defaults
(ProgressCallback + ShowGraphCallback) and with LivePanel, measured inside a Jupyter kernel (where the widgets and
fastai's HTML progress really render to messages), interleaved in rotating order, in one run.

    python benchmarks/panel_overhead.py --epochs 2 --repeats 6
"""
import argparse, json, sys, time
from pathlib import Path

def measure(epochs=2, repeats=3, size=64):
    "Seconds per epoch for each way of watching, interleaved over `repeats` rounds"
    import warnings; warnings.filterwarnings('ignore')
    from fastai.vision.all import ProgressCallback, ShowGraphCallback, set_seed
    from finetune_nb.all import digits_dls, finetune_learner, LivePanel, has_widget_frontend
    dls = digits_dls(size=size)
    res = {'none': [], 'fastai': [], 'live_panel': []}
    names = list(res)
    for r in range(repeats):
        for name in names[r % 3:] + names[:r % 3]:   # rotate the order, so no way of watching always runs first
            set_seed(r)
            learn = finetune_learner(dls)
            learn.remove_cb(ProgressCallback)
            cbs = {'none': [], 'fastai': [ProgressCallback(), ShowGraphCallback()], 'live_panel': [LivePanel(png=False)]}[name]
            t0 = time.perf_counter()
            learn.fit_one_cycle(epochs, 1e-3, cbs=cbs)
            res[name].append((time.perf_counter()-t0)/epochs)
    return dict(frontend=has_widget_frontend(), epochs=epochs, repeats=repeats, per_epoch=res)

def redraw_cost(n=50):
    "Milliseconds per LivePanel redraw (four charts from full 400-point series, table, status) and per batch of bookkeeping"
    import warnings; warnings.filterwarnings('ignore')
    import torch
    from finetune_nb.live import LivePanel, LiveView, BoundedSeries
    p = LivePanel(widgets=True)
    st = p.state
    for i in range(5000):
        st.loss.add(i, torch.tensor(1/(i+1))); st.lrs.add(i, [1e-4, 4e-4, 1e-3, 1e-2])
        if i % 10 == 0: st.grads.add(i, torch.rand(4))
        if i % 100 == 0: st.valid.add(i, 0.5); st.metrics.setdefault('accuracy', BoundedSeries(400)).add(i, 0.9); st.rows.append(dict(epoch=i, valid_loss=0.5))
    st.step,st.group_names,st.n_batches,st.n_epochs,st.total_epochs = 5000,['a', 'b', 'c', 'd'],100,50,50
    view = LiveView(p)
    t0 = time.perf_counter()
    for _ in range(n): view.update()
    return (time.perf_counter()-t0)/n*1000

def in_kernel(epochs, repeats):
    "Run `measure` in a fresh IPython kernel and return its result"
    from jupyter_client.manager import start_new_kernel
    km,kc = start_new_kernel(kernel_name='python3')
    try:
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import panel_overhead, json; print(json.dumps(panel_overhead.measure({epochs}, {repeats})))"
        out = []
        kc.execute_interactive(code, timeout=3600, output_hook=lambda m: out.append(m['content'].get('text', '')) if m['msg_type']=='stream' else None)
        return json.loads([l for l in ''.join(out).splitlines() if l.startswith('{')][-1])
    finally: km.shutdown_kernel(now=True)

if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--repeats', type=int, default=6)
    a = p.parse_args()
    print(f"one LivePanel redraw (widgets updated, no frontend attached): {redraw_cost():.1f} ms")
    r = in_kernel(a.epochs, a.repeats)
    import statistics as s
    base = s.median(r['per_epoch']['none'])
    print(f"inside a Jupyter kernel (widget frontend: {r['frontend']}), {a.repeats} interleaved rounds of {a.epochs} epochs")
    for k,v in r['per_epoch'].items():
        print(f"{k:>11}: median {s.median(v):6.2f} s/epoch  ({s.median(v)/base:.3f}x none)  runs: {', '.join(f'{x:.2f}' for x in v)}")
