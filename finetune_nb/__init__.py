"""finetune_nb: notebook-first fine-tuning of pretrained PyTorch models with fastai. Importing it changes nothing in fastai."""
__version__ = "0.1.0"

def load_ipython_extension(ip):
    "`%load_ext finetune_nb`: learners show their layer picker, and every fit its live panel"
    from finetune_nb.extension import load_ipython_extension
    load_ipython_extension(ip)

def unload_ipython_extension(ip):
    "`%unload_ext finetune_nb`: undo `%load_ext finetune_nb`"
    from finetune_nb.extension import unload_ipython_extension
    unload_ipython_extension(ip)
