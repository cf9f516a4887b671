"""The task interface the runner drives. Tasks never import a method; the runner joins them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .. import batched, train
from .._registry import Registry
from ..memory import MemoryEstimate
from ..nn import ARCHS
from ..precision import PRECISIONS
from ..records import MetricSpec

__all__ = ["TASKS", "Task", "grid"]


def grid(*sizes: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Coordinates of a regular grid in ``[-1, 1]^d``: ``grid(H, W)`` is ``(H*W, 2)``, rows in
    'ij' (row-major) order, so ``target.reshape(H*W, C)`` lines up with it."""
    if not sizes or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sizes):
        raise ValueError(f"grid takes positive int sizes, e.g. grid(256, 256); got {sizes!r}")
    axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


class Task:
    """A problem to train on: data, a model builder, the loss and the metrics.

    Subclasses set ``name`` and the class attributes below, take their config dataclass in
    ``__init__`` (validating it) and implement :meth:`setup`, :meth:`build_model`,
    :meth:`evaluate`. The base holds only what more than one task needs; a hook that one task
    alone would use belongs in that task.
    """

    name: ClassVar[str] = ""
    # the headline metric (a key of evaluate()'s result) and how the report shows it: unit,
    # direction, format, thresholds, checkpoints, summary columns, step unit, axis cap, plots. Every
    # record carries it, so the report reads results without the task.
    metric: ClassVar[MetricSpec] = MetricSpec("psnr")
    default_arch: ClassVar[str] = "siren"
    lr_decay: ClassVar[tuple[float, int] | None] = None  # (gamma, every): lr *= gamma every N steps
    snapshot_steps: ClassVar[tuple[int, ...]] = ()  # steps whose predictions the report shows
    # runs of one architecture can train together (stacked parameters under torch.func.vmap): the
    # step is the default forward_loss (no autograd inside it) and the default fit
    batchable: ClassVar[bool] = True
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS  # the --precision values its fit honours

    config: Any
    inputs: torch.Tensor
    target: torch.Tensor
    # a fixed (inputs, targets) batch on which the run's learning rule measures the model at every
    # evaluation (initium.methods.LearningRule.measure); None: no such measurements
    probe: tuple[torch.Tensor, torch.Tensor] | None = None

    def setup(self, device: torch.device) -> None:
        """Load or generate the data onto ``device`` (errors on bad data are raised here)."""
        raise NotImplementedError

    def parse_arch(self, spec: str) -> tuple[str, dict[str, Any]]:
        """``--arch`` -> ``(registered architecture, options)``, checked against the registry before
        any work (unknown names and options fail here). A task with names of its own overrides it."""
        parts = ARCHS.parse(spec)
        if len(parts) != 1:
            raise ValueError(f"--arch takes one architecture, got {spec!r}")
        return parts[0]

    def build_model(self, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def estimate_memory(self, arch: str, arch_kwargs: dict[str, Any]) -> MemoryEstimate | None:
        """The memory one run will hold, from the config and the architecture alone: the runner
        calls it before :meth:`setup` and refuses work that cannot fit the machine
        (:func:`initium.memory.check_fits`) before anything is loaded or allocated. ``None``
        (the default): the task's data stays small whatever its options. A task may also raise
        ``ValueError`` here for what its config and the architecture cannot do together, where
        that is known before loading (a net too deep for the image size)."""
        return None

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.mean((pred - target) ** 2)

    def forward_loss(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, prediction)`` of one training step. Override where the loss needs more than the
        prediction (a PDE residual needs derivatives of the model with respect to its inputs)."""
        pred = model(inputs)
        return self.loss(pred, target), pred

    def resolve_steps(self, steps: int | None) -> int:
        """The training length of a run: ``steps`` as given (``--steps``), else 2000 steps. A task
        that counts its length otherwise (classify's epochs) overrides it."""
        return 2000 if steps is None else steps

    def fit(
        self,
        model: nn.Module,
        *,
        steps: int,
        lr: float,
        evaluate_at: Collection[int] = (),
        on_eval: Callable[[int, torch.Tensor], None] | None = None,
        compile: bool = False,
        precision: str = "fp32",
    ) -> torch.Tensor:
        """Train ``model`` for ``steps`` steps (``metric.step_unit``) and return the loss
        history, ``steps + 1`` values on the CPU; call ``on_eval(step, prediction at the training
        inputs)`` at the steps in ``evaluate_at``; raise :class:`initium.train.TrainingDiverged` on a
        non-finite loss. By default: :func:`initium.train.fit`, full-batch Adam. A task with another
        training scheme (minibatch epochs) overrides this."""
        return train.fit(
            model, self.inputs, self.target, steps=steps, lr=lr, forward_loss=self.forward_loss,
            lr_decay=self.lr_decay, evaluate_at=evaluate_at, on_eval=on_eval, compile=compile, precision=precision,
        )  # fmt: skip

    def fit_batched(
        self,
        models: Sequence[nn.Module],
        *,
        steps: int,
        lr: float,
        evaluate_at: Collection[int] = (),
        on_eval: Sequence[Callable[[int, torch.Tensor], None]] | None = None,
        compile: bool = False,
        precision: str = "fp32",
    ) -> torch.Tensor:
        """:meth:`fit` for several models of one architecture at once (stacked parameters,
        :func:`initium.batched.fit_batched`); the history is ``(steps + 1, len(models))``. Only for
        tasks with :attr:`batchable` set."""
        if not self.batchable:
            raise ValueError(f"task {self.name!r} does not train runs batched; use --no-batch")
        return batched.fit_batched(
            models, self.inputs, self.target, steps=steps, lr=lr, forward_loss=self.forward_loss,
            lr_decay=self.lr_decay, evaluate_at=evaluate_at, on_eval=on_eval, compile=compile, precision=precision,
        )  # fmt: skip

    def check_model(self, model: nn.Module, arch: str) -> None:
        """Raise before training if ``model`` cannot serve this task (by default: its output at
        the inputs must have the target's shape)."""
        with torch.no_grad():
            shape = tuple(model(self.inputs).shape)
        if shape != tuple(self.target.shape):
            raise ValueError(f"--arch {arch!r} outputs shape {shape}, but the task needs {tuple(self.target.shape)}")

    def step_metric(self, loss_history: torch.Tensor) -> torch.Tensor | None:
        """The headline metric after every step, derived from the loss history, or ``None`` when the
        loss does not determine it (then the metric is known at the evaluation steps only)."""
        return None

    def evaluate(self, pred: torch.Tensor) -> dict[str, float]:
        """Metrics of the prediction at the training inputs, at an evaluation step."""
        return {}

    def evaluate_model(self, model: nn.Module) -> dict[str, float]:
        """Metrics that need the model itself (held-out points, another grid), at an evaluation
        step. Called with the model as it is at that step, in train mode and under no_grad."""
        return {}

    def analyse(self, model: nn.Module) -> dict[str, Any]:
        """JSON-ready analysis of the trained model (e.g. NTK eigenvalues), stored in the record."""
        return {}

    def stored(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        """Tensors of the trained model to keep beside its record: ``{field: {name: tensor}}``; the
        runner writes each group as ``OUT/<field>/<run>.safetensors`` and puts that path in the
        record's ``field`` (e.g. :data:`initium.records.LOGITS`). Default: nothing."""
        return {}

    def summarize_run(self, curve: dict[str, list[Any]]) -> dict[str, Any]:
        """JSON-ready fields merged into a run's record, read off its evaluation curve
        (``{"step": [...], name: [...]}``, ``None`` where not finite): e.g. the peak of a metric
        that rises, then falls."""
        return {}

    def snapshot(self, pred: torch.Tensor) -> torch.Tensor | None:
        """A uint8 (H, W, C) picture of a prediction for the report, or ``None``."""
        return None

    def reference(self) -> torch.Tensor | None:
        """The picture the snapshots are compared with (uint8 (H, W, C), shown beside them in the
        report), or ``None``. Called after :meth:`setup`."""
        return None

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}


TASKS: Registry[Task] = Registry("task")
