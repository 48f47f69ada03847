"""A tiny progressive fine-tune for `tests/test_resume.py`, which kills it with SIGKILL and resumes it in a new process.

python tests/resume_script.py CKPT_DIR OUT [--resume] [--batch-sleep S] [--hang-at-save N]

Writes OUT.json (history, per-batch losses, the batches it trained on) and OUT.pth (final weights) when it finishes.
"""
import argparse, json, os, time
from pathlib import Path

def hang_in_save(folder:Path, n:int, marker:Path):
    "Make the `n`-th write of `folder/resume.pth` stop after its temporary file is written, before the rename"
    real,seen = os.replace,[0]  # `atomic_file` (under `torch_save_atomic`) puts the file in place with `os.replace`
    def rename(src, dst, *args, **kwargs):
        if Path(dst) == folder/'resume.pth':
            seen[0] += 1
            if seen[0] == n:
                marker.write_text(str(src))
                time.sleep(600)  # the test kills us here
        return real(src, dst, *args, **kwargs)
    os.replace = rename

def main():
    p = argparse.ArgumentParser()
    p.add_argument('ckpt_dir'); p.add_argument('out')
    p.add_argument('--resume', action='store_true')
    p.add_argument('--batch-sleep', type=float, default=0., help="seconds to sleep in every training batch")
    p.add_argument('--hang-at-save', type=int, default=0, help="hang inside the N-th write of resume.pth")
    a = p.parse_args()
    import torch
    torch.set_num_threads(1)  # the same in every process, and fast for a tiny model on a shared machine
    from fastai.basics import set_seed, Callback
    from fastai.callback.progress import ProgressCallback
    from finetune_nb.test_utils import synth_dls, tiny_learner
    from finetune_nb.schedule import Schedule, Phase
    import finetune_nb.finetune  # noqa: F401 (`Schedule.run`)
    ckpt = Path(a.ckpt_dir)
    if a.hang_at_save: hang_in_save(ckpt, a.hang_at_save, Path(a.out + '.saving'))

    class Batches(Callback):
        "Note every training batch (phase, epoch, batch, sums of inputs and targets), sleeping `sleep` seconds in each"
        order = -20
        def __init__(self, sleep): self.sleep,self.seen = sleep,[]
        def before_batch(self):
            if not self.training: return
            self.seen.append([self.learn.ft_phase, self.epoch, self.iter, float(self.xb[0].sum()), int(self.yb[0].sum())])
            if self.sleep: time.sleep(self.sleep)

    set_seed(0)  # before the DataLoaders: each makes its shuffling generator from the global seed
    learn = tiny_learner(synth_dls(n=96, bs=16, num_workers=0))
    learn.remove_cb(ProgressCallback)
    sch = Schedule([Phase(1, 1, 1e-2, name='head'), Phase(2, 3, 1e-2, name='top 2'), Phase('all', 3, 5e-3, name='all')])
    rec = Batches(a.batch_sleep)
    with learn.no_logging(): hist = sch.run(learn, cbs=rec, resume=a.resume, ckpt_dir=ckpt, keep='all')  # the tests read every phase's checkpoints
    torch.save(learn.model.state_dict(), a.out + '.pth')
    Path(a.out + '.json').write_text(json.dumps(dict(
        history=hist.drop(columns='phase_time').to_dict('records'), losses=learn.ft_log.losses, batches=rec.seen)))

if __name__ == '__main__': main()
