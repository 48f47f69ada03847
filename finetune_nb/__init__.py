"""finetune_nb: notebook-first fine-tuning of pretrained PyTorch models with fastai. Importing it changes nothing in fastai, except that the one warning below is not shown."""
__version__ = "0.1.0"

import warnings
# fastai's import calls `torch.jit.script`, which torch deprecates with a FutureWarning that users can do nothing about: it was the first
# output of every script, notebook and command (issue 23). This one warning is hidden, by message, category and module, before anything
# here imports fastai; every other warning, FutureWarnings from the user's own code included, shows as before.
warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning, module=r'torch\.jit')

def load_ipython_extension(ip):
    "`%load_ext finetune_nb`: learners show their layer picker, and every fit its live panel"
    from finetune_nb.extension import load_ipython_extension
    load_ipython_extension(ip)

def unload_ipython_extension(ip):
    "`%unload_ext finetune_nb`: undo `%load_ext finetune_nb`"
    from finetune_nb.extension import unload_ipython_extension
    unload_ipython_extension(ip)
