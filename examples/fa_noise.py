"""Feedback alignment with random-noise pretraining in a few lines: a 64-256-256-10 MLP on
scikit-learn's digits, trained by backprop, by feedback alignment (FA), and by FA after 3000
steps of pretraining on a fixed set of 4096 Gaussian noise inputs with random labels (the
defaults); prints the W-B angle of the last layer and the test accuracy after each of the first
3 epochs.

    OMP_NUM_THREADS=1 python examples/fa_noise.py
"""

import torch

from initium import fa
from initium.nn import ClassifierMLP
from initium.tasks import TASKS

task = TASKS.build("classify", {"dataset": "digits"})  # 70/30 train/test, 20% of train for validation
task.setup(torch.device("cpu"))

for rule, pretrain in (("bp", False), ("fa", False), ("fa", True)):
    torch.manual_seed(0)
    model = ClassifierMLP(in_shape=(1, 8, 8), out_features=10, hidden=(256, 256))
    if rule != "bp":
        model = fa.convert(model, mode=rule, seed=0)  # Linear -> FALinear, B fixed and random
    if pretrain:
        fa.noise_pretrain(model, input_shape=(1, 8, 8), num_classes=10, steps=3000, noise_set=4096, seed=0)
    angle = fa.alignment(model).get("net.5")  # None for backprop: no B
    accs = []
    task.fit(model, steps=3, lr=0.01, evaluate_at=range(4),
             on_eval=lambda k, _pred, m=model, a=accs: a.append(task.evaluate_model(m)["test_acc"]))  # fmt: skip
    label = f"{rule}{' + noise' if pretrain else ''}"
    shown = "—" if angle is None else f"{angle:.1f}"
    print(f"{label:11s} last-layer W-B angle {shown:>5} deg, test accuracy by epoch: "
          + ", ".join(f"{a:.3f}" for a in accs[1:]))  # fmt: skip
