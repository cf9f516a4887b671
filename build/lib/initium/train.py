"""The one training engine: full-batch steps and minibatch epochs are two modes of one loop.

Every training job of initium goes through :func:`loop` (usually by way of :func:`fit`): image
fitting, PDE and operator tasks, classification, target-noise pretraining, feedback-alignment
noise pretraining, stacked runs (:mod:`initium.batched`). The loop owns what every job needs once:

- **the data schedule**: :class:`Steps` (one update per step on a full batch, or on a batch drawn
  for that step; the step's loss is that of the update's own forward pass) or :class:`Epochs`
  (shuffled minibatches; the loss after ``k`` epochs is measured on the whole set, no grad);
- **the divergence guard**: the loss of every unit (step or epoch) goes into a tensor on the
  model's device and is read back only at the evaluation points, so on a GPU the host queues
  steps ahead of the device; a run that diverges between two evaluations is caught at the next;
- **progress**: one :class:`Progress` event per unit to the hook set with :func:`progress_hook`
  (the CLI renders them; nothing is printed here);
- **options**: gradient clipping (``clip_grad``, the global L2 norm), an lr schedule
  (``lr_decay=(gamma, every)`` or any ``schedule(opt, units)``), and :class:`Checkpoint`: model,
  optimiser, schedule, RNG and history state saved atomically (safetensors + JSON) at every
  evaluation point, so a killed job resumes losing at most one evaluation interval, and on the
  CPU ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import precision as _precision
from ._io import atomic_write_bytes, atomic_write_json, sha256, tensors_to_bytes

__all__ = [
    "MAX_LR", "Checkpoint", "Epochs", "ForwardLoss", "Progress", "ProgressFn", "Schedule", "StepFn", "Steps",
    "TrainingDiverged", "adam", "check_fit_args", "check_lr", "cosine", "fit", "loop", "mse",
    "progress_hook", "sgd", "step_decay",
]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One progress event: ``done`` of ``total`` units of ``phase`` (``"train"``, ``"noise"``,
    ``"fa-noise"``, ``"sweep"`` ...). The runner fills ``label`` (which run) and ``runs`` (how many
    runs the loop trains at once: a stacked group counts all of them)."""

    phase: str
    done: int
    total: int
    label: str = ""
    runs: int = 1


ProgressFn = Callable[[Progress], None]
"""``progress(event)``: set by the CLI (a progress bar) or a logger; never printed here."""

ForwardLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``forward_loss(model, inputs, target) -> (loss, prediction)``: one step's forward pass."""

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``step_fn(inputs, target) -> (loss, prediction)``: the forward pass of one update."""

Schedule = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]
"""``schedule(optimizer, units) -> scheduler``, stepped once per unit (step or epoch)."""

_PROGRESS: contextvars.ContextVar[ProgressFn | None] = contextvars.ContextVar("initium_progress", default=None)


@contextlib.contextmanager
def progress_hook(fn: ProgressFn | None) -> Iterator[None]:
    """Route every training unit inside the block to ``fn`` (a progress bar, a logger)."""
    token = _PROGRESS.set(fn)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; ``step`` is the first unit whose loss was (found at the
    next evaluation point, where ``history`` ends)."""

    def __init__(self, step: int, history: torch.Tensor) -> None:
        super().__init__(f"loss is not finite at step {step}; lower the learning rate")
        self.step = step
        self.history = history


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((pred - target) ** 2)


# --- data schedules --------------------------------------------------------------------------------


Batch = tuple[torch.Tensor, torch.Tensor]


class Steps:
    """One update per step. ``inputs`` and ``target`` are tensors (full-batch training) or
    functions of the step that return one (fresh noise every step, a minibatch stream). The loss
    recorded for step ``k`` is that of the forward pass of update ``k`` (the model after ``k``
    updates), so it costs nothing extra. For :class:`Checkpoint` resumption the functions must
    depend on the step alone, or draw from ``generator``, whose state the checkpoint keeps."""

    update_measures = True

    def __init__(
        self,
        inputs: torch.Tensor | Callable[[int], torch.Tensor],
        target: torch.Tensor | Callable[[int], torch.Tensor],
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        inputs_at = inputs if callable(inputs) else (lambda _k: inputs)
        target_at = target if callable(target) else (lambda _k: target)
        self.batch: Callable[[int], Batch] = lambda k: (inputs_at(k), target_at(k))
        self.generator = generator

    @classmethod
    def drawn(cls, batch: Callable[[int], Batch], *, generator: torch.Generator | None = None) -> Steps:
        """Steps on ``batch(step) -> (inputs, target)``: a minibatch stream, one batch per update."""
        steps = cls(torch.empty(0), torch.empty(0), generator=generator)
        steps.batch = batch
        return steps

    def measure(self, step: int) -> Batch:
        return self.batch(step)


class Epochs:
    """Epochs of minibatches of ``batch_size`` in a fresh random order each epoch (drawn from
    ``generator``, or the global RNG, seeded by the runner, like PyTorch's ``DataLoader``); the last
    batch may be short. The loss recorded for epoch ``k`` is measured on the whole set, without a
    graph, with the model after ``k`` epochs."""

    update_measures = False

    def __init__(
        self,
        inputs: torch.Tensor,
        target: torch.Tensor,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if len(inputs) != len(target):
            raise ValueError(f"inputs and target differ in length: {len(inputs)} vs {len(target)}")
        self.inputs, self.target, self.batch_size, self.generator = inputs, target, batch_size, generator

        self.share: tuple[int, int] | None = None  # (rank, world_size) under data parallelism: set by fit

    def measure(self, epoch: int) -> Batch:
        return self.inputs, self.target

    def _order(self) -> torch.Tensor:
        x = self.inputs
        device = x.device if self.generator is None else self.generator.device
        order = torch.randperm(len(x), generator=self.generator, device=device).to(x.device)
        if self.share is not None and self.generator is None:
            # the global RNG may differ over the ranks: rank 0's order is everyone's (one broadcast per epoch)
            dist.broadcast(order, src=0)
        return order

    def batches(self, epoch: int) -> Iterator[Batch]:
        x, y = self.inputs, self.target
        order = self._order()
        for i in range(0, len(x), self.batch_size):
            idx = order[i : i + self.batch_size]
            yield x[idx], y[idx]

    def shares(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
        """This rank's share of every global batch of ``batches`` (data parallelism): the strided
        ``idx[rank::world]``, with the weight ``world * n_rank / n_batch`` for its mean loss, so that
        the ranks' averaged gradient (DDP averages) is exactly that of the global batch's mean loss,
        even for a short last batch. A rank whose share is empty (a last batch shorter than the world)
        computes one sample at weight 0: every rank must take part in every all-reduce."""
        assert self.share is not None
        rank, world = self.share
        x, y = self.inputs, self.target
        order = self._order()
        for i in range(0, len(x), self.batch_size):
            idx = order[i : i + self.batch_size]
            mine = idx[rank::world]
            if len(mine) == 0:
                yield x[idx[:1]], y[idx[:1]], 0.0
            else:
                yield x[mine], y[mine], world * len(mine) / len(idx)


Data = Steps | Epochs


# --- optimisers and schedules ----------------------------------------------------------------------


def adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel on CUDA (one launch for all parameters instead of several per
    tensor); elsewhere PyTorch's default (for-each) implementation."""
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.Adam(params, lr=lr, fused=True if fused else None)


def sgd(params: list[torch.Tensor], lr: float, momentum: float = 0.9) -> torch.optim.SGD:
    """SGD with (heavy-ball) momentum, as the classification and FA papers train."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def cosine(opt: torch.optim.Optimizer, units: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A :data:`Schedule`: cosine annealing from the initial lr to 0 over the run's ``units``."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, units))


def step_decay(gamma: float, every: int) -> Schedule:
    """A :data:`Schedule`: the lr times ``gamma`` every ``every`` units (the PINN papers' decay)."""
    return lambda opt, _units: torch.optim.lr_scheduler.StepLR(opt, every, gamma)


# --- checkpoints -----------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Save the loop's state in ``folder`` (``state.safetensors`` + ``state.json``, each written
    atomically, the JSON carrying the tensors' sha256) at every evaluation point, or every
    ``every`` units; a loop started with a checkpoint that exists resumes from it. ``extra`` and
    ``restore`` carry the caller's own JSON-ready state (e.g. the curve its ``on_eval`` builds),
    saved and restored with the loop's. The files are removed when the loop ends."""

    folder: Path | str
    every: int | None = None
    extra: Callable[[], Any] | None = None
    restore: Callable[[Any], None] | None = None
    resumed_from: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if self.every is not None and (not isinstance(self.every, int) or self.every < 1):
            raise ValueError(f"Checkpoint every must be an int >= 1 (or None: at evaluations), got {self.every!r}")

    @property
    def _tensors(self) -> Path:
        return Path(self.folder) / "state.safetensors"

    @property
    def _meta(self) -> Path:
        return Path(self.folder) / "state.json"

    def due(self, unit: int, evals: Collection[int]) -> bool:
        return unit % self.every == 0 if self.every else unit in evals

    def save(self, unit: int, history: torch.Tensor, state: _LoopState) -> None:
        tensors = {f"model.{k}": v for k, v in state.tensors.items()}
        tensors["history"] = history
        opt = state.opt.state_dict()
        opt_meta: dict[str, Any] = {"param_groups": opt["param_groups"], "state": {}}
        for pid, slots in opt["state"].items():
            for name, value in slots.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{pid}.{name}"] = value
                else:
                    opt_meta["state"].setdefault(str(pid), {})[name] = value
        tensors["rng.torch"] = torch.get_rng_state()
        if state.generator is not None:
            tensors["rng.data"] = state.generator.get_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
        data = tensors_to_bytes(tensors)
        atomic_write_bytes(self._tensors, data)
        meta = {
            "unit": unit,
            "sha256": sha256(data),
            "optimizer": opt_meta,
            "scheduler": state.sched.state_dict() if state.sched is not None else None,
            "extra": self.extra() if self.extra is not None else None,
        }
        atomic_write_json(self._meta, meta)

    def load(self, state: _LoopState) -> tuple[int, torch.Tensor] | None:
        """Restore the saved state into the loop's tensors, optimiser, schedule and RNGs; return
        ``(unit, history so far)``, or ``None`` when there is nothing (usable) to resume."""
        if not self._meta.exists() or not self._tensors.exists():
            return None
        try:
            meta = json.loads(self._meta.read_text())
            data = self._tensors.read_bytes()
            if not isinstance(meta, dict) or meta.get("sha256") != sha256(data):
                raise ValueError("the tensors do not match the checksum in state.json")
            saved = load(data)
            missing = [k for k in state.tensors if f"model.{k}" not in saved]
            if missing:
                raise ValueError(f"it lacks {missing[:3]}: it was saved for another model")
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            log.warning("checkpoint in %s is unusable (%s); starting from scratch", self.folder, exc)
            return None
        with torch.no_grad():
            for k, t in state.tensors.items():
                t.copy_(saved[f"model.{k}"])
        opt_state: dict[Any, dict[str, Any]] = {}
        for key, value in saved.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = value
        for pid, slots in meta["optimizer"]["state"].items():
            opt_state.setdefault(int(pid), {}).update(slots)
        state.opt.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
        if state.sched is not None and meta["scheduler"] is not None:
            state.sched.load_state_dict(meta["scheduler"])
        torch.set_rng_state(saved["rng.torch"])
        if state.generator is not None and "rng.data" in saved:
            state.generator.set_state(saved["rng.data"])
        cuda = [saved[k] for k in sorted(k for k in saved if k.startswith("rng.cuda."))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        if self.restore is not None:
            self.restore(meta["extra"])
        self.resumed_from = int(meta["unit"])
        log.info("resuming from %s at unit %d", self.folder, self.resumed_from)
        return self.resumed_from, saved["history"]

    def remove(self) -> None:
        for path in (self._meta, self._tensors):
            path.unlink(missing_ok=True)


@dataclass
class _LoopState:
    """What a checkpoint saves and restores besides the history."""

    tensors: Mapping[str, torch.Tensor]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator | None


# --- the loop --------------------------------------------------------------------------------------


def loop(
    step_fn: StepFn,
    opt: torch.optim.Optimizer,
    data: Data,
    *,
    steps: int,
    final_fn: StepFn | None = None,
    schedule: Schedule | None = None,
    clip_grad: float | None = None,
    evaluate_at: Collection[int] = (),
    on_eval: Callable[[int, torch.Tensor], None] | None = None,
    phase: str = "train",
    checkpoint: Checkpoint | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Train for ``steps`` units (updates for :class:`Steps`, epochs for :class:`Epochs`); return
    the loss history ``(steps + 1, *loss.shape)`` on the CPU, ``history[k]`` the loss of the model
    after ``k`` units.

    ``step_fn(inputs, target) -> (loss, prediction)`` is one forward pass; ``loss`` is a scalar, or
    one loss per run for stacked runs (their sum is backpropagated: the runs share no parameter, so
    each gets its own gradient). ``final_fn`` is the same function uncompiled, for the forward passes
    that need no graph (the last step; every epoch's measurement). ``on_eval(k, prediction)`` is
    called at the units in ``evaluate_at`` with the prediction at ``data.measure(k)``; the loss is
    checked there and at the end (:class:`TrainingDiverged`), nowhere else. ``state`` names the
    tensors a ``checkpoint`` saves and restores in place (a model's ``state_dict()``).
    """
    final_fn = final_fn or step_fn
    evals = set(evaluate_at)
    emit = _PROGRESS.get()
    params = [p for group in opt.param_groups for p in group["params"]]
    sched = schedule(opt, steps) if schedule is not None else None
    ckpt_state = _LoopState(state or {}, opt, sched, data.generator)
    start, history = 0, None
    if checkpoint is not None:
        if state is None:
            raise ValueError("a checkpoint needs the state to save: pass state=model.state_dict()")
        resumed = checkpoint.load(ckpt_state)
        if resumed is not None:
            start, prefix = resumed
            history = torch.empty((steps + 1, *prefix.shape[1:]), device=params[0].device if params else "cpu")
            history[:start] = prefix.to(history.device)

    def update(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        opt.step()

    share = data.share if isinstance(data, Epochs) else None
    writes = share is None or share[0] == 0  # data-parallel ranks hold the same state: rank 0 writes it
    for k in range(start, steps + 1):
        if checkpoint is not None and k > start and history is not None and checkpoint.due(k, evals) and writes:
            checkpoint.save(k, history[:k].cpu(), ckpt_state)  # one read-back, at an evaluation point
        if k < steps and data.update_measures:
            loss, pred = step_fn(*data.measure(k))
        else:
            with torch.no_grad():
                loss, pred = final_fn(*data.measure(k))
        if history is None:
            history = torch.empty((steps + 1, *loss.shape), device=loss.device)
        history[k] = loss.detach()
        if k in evals or k == steps:
            if not bool(torch.isfinite(history[k]).all()):  # the loop's one host sync, at evaluations only
                seen = history[: k + 1].cpu()
                bad = ~torch.isfinite(seen.reshape(k + 1, -1)).all(dim=1)
                raise TrainingDiverged(int(bad.nonzero()[0]), seen)
            if on_eval is not None and k in evals:
                on_eval(k, pred.detach())
        if k == steps:
            break
        if data.update_measures:
            update(loss)
        elif share is None:
            for x, y in data.batches(k):
                update(step_fn(x, y)[0])
        else:
            for x, y, weight in data.shares(k):
                update(step_fn(x, y)[0] * weight)
        if sched is not None:
            sched.step()
        if emit is not None:
            emit(Progress(phase, k + 1, steps))
    assert history is not None
    if checkpoint is not None and writes:
        checkpoint.remove()
    return history.cpu()


MAX_LR = float(torch.finfo(torch.float32).max) * (1 - 0.9)
"""The largest learning rate the optimisers' arithmetic takes, about 3.4e37: Adam's first update
hands ``lr / (1 - beta1) = 10 lr`` to its float32 kernels as a scalar, and past float32's largest
number (3.4e38) that conversion fails (``RuntimeError: value cannot be converted to type float
without overflow``) in the middle of the first step. SGD's ``lr`` alone is well inside it."""


def check_lr(lr: float, what: str = "lr") -> None:
    """Raise ``ValueError`` (naming ``what``) unless ``lr`` is a number in ``(0, MAX_LR]``."""
    if not (isinstance(lr, int | float) and not isinstance(lr, bool) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"{what} must be > 0 and finite, got {lr!r}")
    if lr > MAX_LR:
        raise ValueError(
            f"{what} {lr:g} overflows the optimiser's float32 arithmetic (Adam's first step is lr / (1 - beta1)"
            f" = 10 lr, past float32's largest number 3.4e38); give at most {MAX_LR:.3g}"
        )


def check_fit_args(*, steps: int, lr: float, lr_decay: tuple[float, int] | None, precision: str) -> None:
    """The checks :func:`fit` and :func:`initium.batched.fit_batched` share, before any work."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    check_lr(lr)
    if precision not in _precision.PRECISIONS:
        raise ValueError(f"precision must be one of {_precision.PRECISIONS}, got {precision!r}")
    if lr_decay is not None and not (0 < lr_decay[0] <= 1 and isinstance(lr_decay[1], int) and lr_decay[1] >= 1):
        raise ValueError(f"lr_decay must be (gamma in (0, 1], every >= 1), got {lr_decay!r}")


_OPTIMIZERS: dict[str, Callable[[list[torch.Tensor], float, float], torch.optim.Optimizer]] = {
    "adam": lambda params, lr, _momentum: adam(params, lr),
    "sgd": sgd,
}


def fit(
    model: nn.Module,
    inputs: torch.Tensor | Data,
    target: torch.Tensor | Callable[[int], torch.Tensor] | None = None,
    *,
    steps: int,
    lr: float,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mse,
    forward_loss: ForwardLoss | None = None,
    batch_size: int | None = None,
    optimizer: str = "adam",
    momentum: float = 0.9,
    lr_decay: tuple[float, int] | None = None,
    schedule: Schedule | None = None,
    clip_grad: float | None = None,
    evaluate_at: Collection[int] = (),
    on_eval: Callable[[int, torch.Tensor], None] | None = None,
    compile: bool = False,
    precision: str = "fp32",
    phase: str = "train",
    checkpoint: Checkpoint | None = None,
    data_parallel: bool = False,
) -> torch.Tensor:
    """Train ``model`` in place for ``steps`` units; return the loss history on the CPU.

    The data: ``fit(model, inputs, target, ...)`` trains full-batch (one update per step on all of
    ``inputs``; ``target`` may be a function of the step: fresh noise every step); with
    ``batch_size`` it trains ``steps`` epochs of shuffled minibatches instead; or pass a
    :class:`Steps` / :class:`Epochs` as ``inputs`` (and no ``target``). ``history[k]`` is the loss
    of the model after ``k`` units, ``k = 0 .. steps``.

    The step's forward pass is ``loss_fn(model(inputs), target)`` unless ``forward_loss`` replaces
    it. ``optimizer``: ``"adam"`` (fused on CUDA) or ``"sgd"`` (with ``momentum``).
    ``lr_decay=(gamma, every)`` multiplies the learning rate by ``gamma`` every ``every`` units; a
    ``schedule`` (e.g. :func:`cosine`) replaces it. ``clip_grad`` clips the global gradient norm.
    ``compile`` wraps the forward-and-loss in ``torch.compile``; ``precision`` (``fp32``, ``tf32``,
    ``bf16``: :mod:`initium.precision`) sets its arithmetic. ``checkpoint`` saves model, optimiser,
    schedule and RNG state at the evaluation points and resumes from them (:class:`Checkpoint`).

    ``data_parallel``: when a ``torch.distributed`` process group of several ranks is joined
    (:func:`initium.distributed.init`), train the one model on all of them with
    ``DistributedDataParallel`` (:func:`_data_parallel`): each epoch's shuffled order is the same on
    every rank, each rank takes its share of every global batch (:meth:`Epochs.shares`), and the
    averaged gradient is that of the global batch, so the run follows the one-process run with the
    same ``batch_size`` up to float rounding. Every rank measures the loss on the whole set (the
    same history everywhere); rank 0 alone writes the checkpoint, every rank reads it. Minibatch
    epochs only (:class:`Epochs`). Without a process group (or with one rank) it is a no-op, so the
    same call serves one process and torchrun.
    """
    check_fit_args(steps=steps, lr=lr, lr_decay=lr_decay, precision=precision)
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
    if clip_grad is not None and not (clip_grad > 0 and math.isfinite(clip_grad)):
        raise ValueError(f"clip_grad must be a finite number > 0 (or None), got {clip_grad!r}")
    if lr_decay is not None and schedule is not None:
        raise ValueError("give lr_decay or schedule, not both")
    if isinstance(inputs, Steps | Epochs):
        if target is not None or batch_size is not None:
            raise ValueError("with a Steps or Epochs data schedule, pass no target and no batch_size")
        data: Data = inputs
    elif batch_size is not None:
        if callable(target) or target is None:
            raise ValueError("minibatch epochs (batch_size=...) need a target tensor")
        data = Epochs(inputs, target, batch_size)
    else:
        if target is None:
            raise ValueError("fit(model, inputs, target, ...) needs a target")
        data = Steps(inputs, target)

    def step_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with _precision.autocast(precision, x.device):
            if forward_loss is not None:
                return forward_loss(model, x, y)
            pred = model(x)
            return loss_fn(pred, y), pred

    step_fn: StepFn = step_loss
    if data_parallel and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        step_fn = _data_parallel(model, step_loss, data)
    step_fn = torch.compile(step_fn) if compile else step_fn
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _OPTIMIZERS[optimizer](params, lr, momentum)
    if lr_decay is not None:
        schedule = step_decay(*lr_decay)
    model.train()
    try:
        with _precision.matmul_precision(precision):
            return loop(
                step_fn, opt, data, steps=steps, final_fn=step_loss, schedule=schedule, clip_grad=clip_grad,
                evaluate_at=evaluate_at, on_eval=on_eval, phase=phase, checkpoint=checkpoint,
                state=model.state_dict() if checkpoint is not None else None,
            )  # fmt: skip
    finally:
        if isinstance(data, Epochs):
            data.share = None  # the deal was this fit's: the same Epochs may serve a one-process fit next


class _StepModule(nn.Module):
    """The step's forward-and-loss as a module holding ``model``, so that DDP wraps all of it: a
    ``forward_loss`` that calls another method of the model (a VAE's ``loss``) still runs inside
    DDP's forward, and its gradients are all-reduced."""

    def __init__(self, model: nn.Module, step: StepFn) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.step(x, y)


def _data_parallel(model: nn.Module, step: StepFn, data: Data) -> StepFn:
    """``step`` under ``DistributedDataParallel`` (which first broadcasts rank 0's parameters and
    buffers, so every rank starts from the same model), and ``data`` dealt over the ranks."""
    if not isinstance(data, Epochs):
        raise ValueError("data_parallel trains minibatch epochs (Epochs, or batch_size=...), not Steps")
    device = next(model.parameters()).device
    rank, world = dist.get_rank(), dist.get_world_size()
    data.share = (rank, world)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(_StepModule(model, step), device_ids=ids)
