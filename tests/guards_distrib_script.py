"A schedule whose second phase diverges, under `learn.distrib_ctx()`: run with `torchrun --nproc_per_node 2 tests/guards_distrib_script.py OUT.json`"
import json, sys
import torch, torch.distributed as dist
torch.set_num_threads(1)
from fastai.basics import *
from fastai.distributed import *
from finetune_nb.all import *
from finetune_nb.test_utils import *
from finetune_nb.guards import *

@patch
def _broadcast(self:DistributedDL, t, rank):  # gloo on the CPU needs a CPU tensor (see distrib_script.py)
    t = LongTensor(t)
    dist.broadcast(t, rank)
    return t.tolist()

class AtFitStart(Callback):
    order = 5
    def before_fit(self): self.w = {k.removeprefix('module.'):v.clone() for k,v in self.learn.model.state_dict().items()}

learn = tiny_learner(synth_dls(n=128, bs=16, num_workers=0))  # no loader processes to outlive the run
learn.remove_cb(ProgressCallback)
at = AtFitStart()
sch = Schedule([Phase(1, 1, 1e-2, name='head'), Phase('all', 2, 1e10, lrs='flat', sched='constant', name='boom'),
                Phase('all', 1, 1e-3, name='never')])
with learn.distrib_ctx(sync_bn=False, cpu=True):
    hist = sch.run(learn, cbs=at)
d = learn.diverged
res = dict(kind=d.kind if d else None, epoch=d.epoch if d else None, batch=d.batch if d else None, phase=d.phase if d else None,
           phases=hist.phase.tolist(), restored=all(torch.equal(v, at.w[k]) for k,v in learn.model.state_dict().items()),
           finite=all(torch.isfinite(p).all().item() for p in learn.model.parameters()),
           wsum=float(torch.cat([p.detach().flatten() for p in learn.model.parameters()]).double().sum()))
out = [None]*dist.get_world_size()
dist.all_gather_object(out, res)
if dist.get_rank() == 0: Path(sys.argv[1]).write_text(json.dumps(out))
# End cleanly: every rank waits for the others, then frees the process group before the interpreter exits. Without this,
# gloo's threads can still be running at exit on a loaded machine, and the process aborts ("terminate called without an
# active exception", SIGABRT). No other thread is left: no progress bar (removed above), no panel, no loader workers.
sys.stdout.flush(); sys.stderr.flush()
dist.barrier()
dist.destroy_process_group()
