"""The one training loop: full-batch Adam on ``loss_fn(model(inputs), target)``.

The per-step loss is written into a tensor on the model's device and read back only at the
evaluation steps (the checkpoints), so the loop issues no host synchronisation between them: on a
GPU the host queues steps ahead of the device. At each evaluation the loss is checked (the NaN
guard) and ``on_eval(step, prediction)`` is called with the prediction of the model after ``step``
updates (taken from the forward pass the next update needs anyway). A run that diverges between
two evaluations is caught at the next one.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Collection, Iterator

import torch
from torch import nn

from . import precision as _precision

__all__ = [
    "ForwardLoss", "ProgressFn", "StepFn", "TrainingDiverged", "adam", "check_fit_args", "fit", "loop", "mse",
    "progress_hook",
]  # fmt: skip

ProgressFn = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: called after every step; set by the CLI, never printed here."""

ForwardLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``forward_loss(model, inputs, target) -> (loss, prediction)``: one step's forward pass."""

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``step_fn(inputs, target) -> (loss, prediction)``: the forward pass of one step."""

_PROGRESS: contextvars.ContextVar[ProgressFn | None] = contextvars.ContextVar("initium_progress", default=None)


@contextlib.contextmanager
def progress_hook(fn: ProgressFn | None) -> Iterator[None]:
    """Route every :func:`fit` step inside the block to ``fn`` (a progress bar, a logger)."""
    token = _PROGRESS.set(fn)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; ``step`` is the first step whose loss was (found at the
    next evaluation step, where ``history`` ends)."""

    def __init__(self, step: int, history: torch.Tensor) -> None:
        super().__init__(f"loss is not finite at step {step}; lower the learning rate")
        self.step = step
        self.history = history


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((pred - target) ** 2)


def fit(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | Callable[[int], torch.Tensor],
    *,
    steps: int,
    lr: float,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mse,
    forward_loss: ForwardLoss | None = None,
    lr_decay: tuple[float, int] | None = None,
    evaluate_at: Collection[int] = (),
    on_eval: Callable[[int, torch.Tensor], None] | None = None,
    compile: bool = False,
    precision: str = "fp32",
    phase: str = "train",
) -> torch.Tensor:
    """Train ``model`` for ``steps`` full-batch Adam steps; return the loss history on the CPU.

    ``history[k]`` is the loss of the model after ``k`` updates, ``k = 0 .. steps``. ``target`` is a
    tensor, or a function of the step that returns one (fresh noise every step). The step's
    forward pass is ``loss_fn(model(inputs), target)`` unless ``forward_loss`` replaces it.
    ``lr_decay=(gamma, every)`` multiplies the learning rate by ``gamma`` every ``every`` steps. ``compile``
    wraps the forward-and-loss in ``torch.compile``; ``precision`` (``fp32``, ``tf32``, ``bf16``:
    :mod:`initium.precision`) sets its arithmetic. The NaN guard reads the loss back at the
    evaluation steps and at the end; nowhere else.
    """
    check_fit_args(steps=steps, lr=lr, lr_decay=lr_decay, precision=precision)
    target_at = target if callable(target) else (lambda _step: target)

    def step_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with _precision.autocast(precision, x.device):
            if forward_loss is not None:
                return forward_loss(model, x, y)
            pred = model(x)
            return loss_fn(pred, y), pred

    step_fn = torch.compile(step_loss) if compile else step_loss
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adam(params, lr)
    model.train()
    with _precision.matmul_precision(precision):
        return loop(step_fn, step_loss, inputs, target_at, opt, steps=steps, lr_decay=lr_decay,
                    evaluate_at=evaluate_at, on_eval=on_eval, phase=phase)  # fmt: skip


def check_fit_args(*, steps: int, lr: float, lr_decay: tuple[float, int] | None, precision: str) -> None:
    """The checks :func:`fit` and :func:`initium.batched.fit_batched` share, before any work."""
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if precision not in _precision.PRECISIONS:
        raise ValueError(f"precision must be one of {_precision.PRECISIONS}, got {precision!r}")
    if lr_decay is not None and not (0 < lr_decay[0] <= 1 and isinstance(lr_decay[1], int) and lr_decay[1] >= 1):
        raise ValueError(f"lr_decay must be (gamma in (0, 1], every >= 1), got {lr_decay!r}")


def adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel on CUDA (one launch for all parameters instead of several per
    tensor); elsewhere PyTorch's default (for-each) implementation."""
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.Adam(params, lr=lr, fused=True if fused else None)


def loop(
    step_fn: StepFn,
    final_fn: StepFn,
    inputs: torch.Tensor,
    target_at: Callable[[int], torch.Tensor],
    opt: torch.optim.Optimizer,
    *,
    steps: int,
    lr_decay: tuple[float, int] | None,
    evaluate_at: Collection[int],
    on_eval: Callable[[int, torch.Tensor], None] | None,
    phase: str,
) -> torch.Tensor:
    """The step loop shared by :func:`fit` and :func:`initium.batched.fit_batched`.

    ``step_fn(inputs, target) -> (loss, prediction)`` is one forward pass; ``loss`` is a scalar, or
    one loss per run for stacked runs (their sum is backpropagated: the runs share no parameter, so
    each gets its own gradient). ``final_fn`` is the same function uncompiled, for the last forward
    pass, which needs no graph. Returns the loss history, ``(steps + 1, *loss.shape)``, on the CPU.
    """
    sched = torch.optim.lr_scheduler.StepLR(opt, lr_decay[1], lr_decay[0]) if lr_decay else None
    evals = set(evaluate_at)
    progress = _PROGRESS.get()
    history: torch.Tensor | None = None
    for step in range(steps + 1):
        y = target_at(step)
        if step == steps:  # the final model: one more forward, no update
            with torch.no_grad():
                loss, pred = final_fn(inputs, y)
        else:
            loss, pred = step_fn(inputs, y)
        if history is None:
            history = torch.empty((steps + 1, *loss.shape), device=loss.device)
        history[step] = loss.detach()
        if step in evals or step == steps:
            if not bool(torch.isfinite(history[step]).all()):  # the loop's one host sync, at evaluations only
                seen = history[: step + 1].cpu()
                bad = ~torch.isfinite(seen.reshape(step + 1, -1)).all(dim=1)
                raise TrainingDiverged(int(bad.nonzero()[0]), seen)
            if on_eval is not None and step in evals:
                on_eval(step, pred.detach())
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        if sched is not None:
            sched.step()
        if progress is not None:
            progress(phase, step + 1, steps)
    assert history is not None
    return history.cpu()
