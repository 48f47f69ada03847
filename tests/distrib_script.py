"Progressive unfreezing under `learn.distrib_ctx()`: run with `torchrun --nproc_per_node 2 tests/distrib_script.py OUT.json`"
import json, sys
import torch, torch.distributed as dist
torch.set_num_threads(1)
from fastai.basics import *
from fastai.distributed import *
from finetune_nb.all import *
from finetune_nb.test_utils import *

# fastai's DistributedDL broadcasts the shuffled indices as a CUDA tensor (NCCL needs one); with gloo on the CPU a CPU tensor
# is what works, so this test swaps in the CPU version of the same broadcast.
@patch
def _broadcast(self:DistributedDL, t, rank):
    t = LongTensor(t)
    dist.broadcast(t, rank)
    return t.tolist()

class NoteGroups(Callback):
    order = 5
    def before_fit(self): self.seen = getattr(self, 'seen', []) + [[i for i in range(self.learn.n_groups) if i in self.learn.trainable_groups]]

learn = tiny_learner(synth_dls(n=128, bs=16, num_workers=0))  # no loader processes to outlive the run
learn.remove_cb(ProgressCallback)
conv0 = learn.model.features[0].weight.detach().clone()
note = NoteGroups()
with learn.distrib_ctx(sync_bn=False, cpu=True):  # gloo on the CPU; on GPUs drop `cpu=True`
    hist = learn.fine_tune_progressive(epochs=1, lr_max=1e-2, cbs=note)
w = torch.cat([p.detach().flatten() for p in learn.model.parameters()])
sums = [None]*dist.get_world_size()
dist.all_gather_object(sums, float(w.double().sum()))
if dist.get_rank() == 0:
    Path(sys.argv[1]).write_text(json.dumps(dict(world_size=dist.get_world_size(), phases=note.seen, sums=sums,
        epochs=len(hist), conv_changed=not torch.equal(learn.model.features[0].weight, conv0))))
# End cleanly: every rank waits for the others, then frees the process group before the interpreter exits. Without this,
# gloo's threads can still be running at exit on a loaded machine, and the process aborts ("terminate called without an
# active exception", SIGABRT). No other thread is left: no progress bar (removed above), no panel, no loader workers.
sys.stdout.flush(); sys.stderr.flush()
dist.barrier()
dist.destroy_process_group()
