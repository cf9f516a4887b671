"""Random weight factorization on a 1-D signal with three frequencies: plain vs RWF.

python examples/rwf.py        # about 10 s on 2 CPU cores
"""

import logging

import torch

import initium
from initium.nn import MLP
from initium.tasks.regress_1d import Regress1D
from initium.train import fit

logging.basicConfig(level=logging.INFO, format="%(message)s")
task = Regress1D()
task.setup(torch.device("cpu"))

for name in ("plain", "rwf"):
    torch.manual_seed(0)
    model = MLP(1, 1, hidden=128, layers=3)
    if name == "rwf":
        initium.rwf(model, mean=1.0, std=0.1, seed=0)  # same function, W = diag(exp(s)) V per layer
    history = fit(model, task.inputs, task.target, steps=3000, lr=1e-3)
    logging.info("%-5s  MSE after 1000 / 3000 steps: %.4f / %.4f", name, history[1000], history[3000])
    if name == "rwf":
        initium.remove_rwf(model)  # plain nn.Linear weights again, same outputs
