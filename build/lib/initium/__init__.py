"""initium: start neural networks from structure instead of chance.

Public API (DESIGN.md section 4)::

    import initium
    from initium.nn import Siren, FourierMLP, PEMLP

    model = Siren(in_features=2, out_features=3)
    coords = initium.tasks.grid(256, 256)
    initium.noise_pretrain(model, coords, steps=500, noise="gaussian", seed=0)
    initium.create("noise(steps=300,noise=spectral)")(model, coords)
    initium.rwf(model, mean=1.0, std=0.1, seed=0)
    initium.remove_rwf(model)
    initium.list_methods()
    zoo = initium.zoo.Zoo("runs/zoo")      # trained nets: catalog.sqlite + safetensors
    initium.vae.train("runs/zoo", "runs/vae")              # a VAE per layer over the zoo's weight slices
    initium.create("vae(path=runs/vae)", seed=3)(model)    # sample a new net's weights from it
"""

__version__ = "0.1.0"

import sys as _sys

from . import graph as graph
from . import nn as nn
from . import tasks as tasks
from . import zoo as zoo
from .cache import InitCache as InitCache
from .methods import create as create
from .methods import fa as fa
from .methods import ghn as ghn
from .methods import list_methods as list_methods
from .methods import vae as vae
from .methods.noise import noise_pretrain as noise_pretrain
from .methods.rwf import remove_rwf as remove_rwf
from .methods.rwf import rwf as rwf

# One home per family (DESIGN.md section 3): ``initium.fa`` *is* ``initium.methods.fa`` (so are ``ghn`` and
# ``vae``), also for ``import initium.fa`` and ``from initium.fa import ...``.
_sys.modules[__name__ + ".fa"] = fa
_sys.modules[__name__ + ".ghn"] = ghn
_sys.modules[__name__ + ".vae"] = vae

__all__ = [
    "InitCache", "__version__", "create", "fa", "ghn", "list_methods", "nn", "noise_pretrain", "remove_rwf", "rwf",
    "tasks", "vae", "zoo",
]  # fmt: skip
