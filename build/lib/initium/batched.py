"""Train K runs of one architecture together: stacked parameters under ``torch.func.vmap``.

Runs that differ only in seed, init or target share the architecture, so their parameters stack
into tensors with a leading run axis (``torch.func.stack_module_state``) and one vmapped forward
pass computes all K losses. The sum of the losses is backpropagated: the runs share no parameter,
so each slice receives exactly its own run's gradient, and Adam, being elementwise, updates each
slice exactly as K separate optimisers would. The curves therefore match one-by-one training up to
float rounding (batched matmuls sum in another order).

This pays where one run leaves the device idle (small images, 1-D regression, DeepONets): K runs
then cost little more than one. Where one run already fills the device it saves nothing; see
BENCHMARKS.md for where the runner turns it on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from . import precision as _precision
from .train import ForwardLoss, Steps, adam, check_fit_args, loop, mse, step_decay

__all__ = ["fit_batched", "signature"]


def signature(model: nn.Module) -> tuple[Any, ...]:
    """What must agree for two models to train stacked: module types and their settings (as
    ``extra_repr`` shows them: a sine's ``w0``, an adaptive activation's ``scale``, which live in
    plain attributes that stacking cannot carry per run), parameter and buffer names, shapes, dtypes
    and devices (and which parameters are frozen). A module whose settings act only when it is
    set up (RWF's ``RowScale``: its seed draws ``s`` once) says so with ``init_only_settings = True``.
    """
    return (
        tuple(
            (type(m).__name__, "" if getattr(m, "init_only_settings", False) else m.extra_repr())
            for m in model.modules()
        ),
        tuple((n, tuple(p.shape), p.dtype, str(p.device), p.requires_grad) for n, p in model.named_parameters()),
        tuple((n, tuple(b.shape), b.dtype, str(b.device)) for n, b in model.named_buffers()),
    )


class _Functional(nn.Module):
    """``base`` evaluated with the given parameters and buffers (one run's slice under vmap), so
    that a task's ``forward_loss(model, inputs, target)`` runs unchanged on stacked runs."""

    def __init__(self, base: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.base = base
        self.state = {**params, **buffers}

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, self.state, args)


def _write_back(models: Sequence[nn.Module], stacked: dict[str, torch.Tensor]) -> None:
    """Copy each run's slice of the stacked tensors into its own model."""
    with torch.no_grad():
        for k, model in enumerate(models):
            own = dict(model.named_parameters()) | dict(model.named_buffers())
            for name, tensor in stacked.items():
                own[name].copy_(tensor[k])


def fit_batched(
    models: Sequence[nn.Module],
    inputs: torch.Tensor,
    target: torch.Tensor | Sequence[torch.Tensor],
    *,
    steps: int,
    lr: float,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mse,
    forward_loss: ForwardLoss | None = None,
    lr_decay: tuple[float, int] | None = None,
    evaluate_at: Collection[int] = (),
    on_eval: Sequence[Callable[[int, torch.Tensor], None]] | None = None,
    compile: bool = False,
    precision: str = "fp32",
    phase: str = "train",
) -> torch.Tensor:
    """:func:`initium.train.fit` for K models at once; trains them in place.

    ``target`` is one tensor for all runs or one per run. ``on_eval[k](step, prediction)`` is
    called for run ``k`` at the evaluation steps, after the run's model has been updated to that
    step (so it can be evaluated on other inputs too). Returns the loss history ``(steps + 1, K)``
    on the CPU. A non-finite loss in any run raises :class:`initium.train.TrainingDiverged` for the
    batch (train the runs one by one to see which).
    """
    models = list(models)
    if not models:
        raise ValueError("fit_batched needs at least one model")
    sig = signature(models[0])
    for k, m in enumerate(models[1:], 1):
        if signature(m) != sig:
            raise ValueError(f"model {k} differs from model 0 in structure; only runs of one architecture stack")
    if on_eval is not None and len(on_eval) != len(models):
        raise ValueError(f"on_eval has {len(on_eval)} callbacks for {len(models)} models")
    check_fit_args(steps=steps, lr=lr, lr_decay=lr_decay, precision=precision)
    per_run = not isinstance(target, torch.Tensor)
    if per_run and len(target) != len(models):
        raise ValueError(f"target has {len(target)} tensors for {len(models)} models")
    y = torch.stack(list(target)) if per_run else target

    for m in models:
        m.train()
    params, buffers = stack_module_state(models)  # leaves with a leading run axis
    base = copy.deepcopy(models[0])

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> Any:
        model = _Functional(base, p, b)
        if forward_loss is not None:
            return forward_loss(model, x, t)
        pred = model(x)
        return loss_fn(pred, t), pred

    stacked = vmap(one, in_dims=(0, 0, None, 0 if per_run else None))

    def step_loss(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with _precision.autocast(precision, x.device):
            return stacked(params, buffers, x, t)

    step_fn = torch.compile(step_loss) if compile else step_loss
    opt = adam([p for p in params.values() if p.requires_grad], lr)

    def evaluate(step: int, pred: torch.Tensor) -> None:
        _write_back(models, params | buffers)
        for k, callback in enumerate(on_eval or ()):
            callback(step, pred[k])

    try:
        with _precision.matmul_precision(precision):
            return loop(
                step_fn, opt, Steps(inputs, y), steps=steps, final_fn=step_loss,
                schedule=step_decay(*lr_decay) if lr_decay else None, evaluate_at=evaluate_at, on_eval=evaluate,
                phase=phase,
            )  # fmt: skip
    finally:
        _write_back(models, params | buffers)
