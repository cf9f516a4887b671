"""task x methods x seeds -> ``results.jsonl``. The only place that seeds the global RNGs.

Everything that can be wrong with a run (names, options, shapes, data, cache folder) is checked
before the first training step. Runs already in ``results.jsonl`` with the same settings are
skipped, so a killed sweep resumes where it stopped, losing at most the run in progress; the file
is rewritten atomically after every run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, batched, fa
from ._io import atomic_write_bytes, atomic_write_text, tensors_to_bytes
from .methods import create
from .precision import resolve_precision
from .records import RESULTS, PlotSpec, load_results, metric_series, steps_to, value_at
from .tasks import TASKS, Task
from .train import ProgressFn, TrainingDiverged, progress_hook

__all__ = [
    "RESULTS", "RunConfig", "batch_default", "eval_steps", "load_results", "metric_series", "resolve_device", "run",
    "steps_to", "value_at",
]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """One sweep. ``arch`` and each of ``methods`` are specs (``"siren(hidden=128)"``,
    ``"noise(steps=300)"``; ``None``: the task's default); ``task_options`` are the task config's fields.
    ``rules`` are the learning rules (``initium.fa.MODES``: ``bp``, ``fa``, ``dfa`` ...), one for all
    methods or one per method, paired in order; ``None``: backprop. ``steps=None``: the task's own
    length (``Task.resolve_steps``: 2000 steps for image-fit, ``--epochs`` for classify)."""

    task: str
    out: Path
    arch: str | None = None
    methods: tuple[str, ...] = ("default", "noise")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int | None = None
    lr: float | None = None
    eval_every: int | None = None
    device: str | None = None
    compile: bool = False
    precision: str | None = None  # fp32, tf32, bf16; None: the device's default (initium.precision)
    batch: bool | None = None  # train runs of one architecture stacked; None: where it pays
    thresholds: tuple[float, ...] | None = None  # "steps to" columns; None: the task's own
    task_options: dict[str, Any] = field(default_factory=dict)
    rules: tuple[str, ...] | None = None


def resolve_device(device: str | None) -> torch.device:
    """``None`` -> CUDA when present, else CPU (decided now, never at import)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r} is not a device name (cpu, cuda, cuda:1, mps)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device!r}: MPS is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device!r}: initium runs on cpu, cuda or mps")
    return dev


def eval_steps(steps: int, every: int | None, checkpoints: tuple[int, ...]) -> list[int]:
    """Evaluation steps: 0, every ``every`` (default ``steps // 100``), the checkpoints, the end."""
    every = every or max(1, steps // 100)
    return sorted(set(range(0, steps + 1, every)) | {c for c in checkpoints if c <= steps} | {steps})


def environment(device: torch.device) -> dict[str, Any]:
    """What a run ran on: versions, the device and its name, and the CPU threads (every record's ``env``)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "initium": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
    }


def _identity(rec: dict[str, Any]) -> str:
    """What makes two runs the same run (for resuming)."""
    keys = ("task", "task_config", "arch", "arch_config", "method", "seed", "steps", "lr", "eval_every", "compile")
    ident = {k: rec.get(k) for k in keys}
    # records from before --precision: fp32 matmuls (on CUDA, convolutions then took cuDNN's TF32 default)
    ident["precision"] = rec.get("precision", "fp32")
    ident["rule"] = rec.get("rule", "bp")  # records from before learning rules were backprop
    ident["device"] = rec.get("device") or rec.get("env", {}).get("device")  # older records: in env only
    return json.dumps(ident, sort_keys=True, default=str)


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels, so a timer measures their work, not their launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rules(cfg: RunConfig) -> tuple[str, ...]:
    """One learning rule per method: ``--rule fa`` for all, or ``--rule bp,fa,fa`` paired in order."""
    n = len(cfg.methods)
    rules = tuple(cfg.rules) if cfg.rules else ("bp",)
    if len(rules) == 1:
        rules = rules * n
    if len(rules) != n:
        raise ValueError(
            f"--rule names {len(rules)} rules for {n} methods; give one rule for all or one per method"
            f" (e.g. --rule bp,fa,fa --methods default,default,fa-noise)"
        )
    for rule in rules:
        if rule not in fa.MODES:
            raise ValueError(f"--rule: unknown learning rule {rule!r}; expected one of: {', '.join(fa.MODES)}")
    return rules


def _prepare(cfg: RunConfig) -> tuple[Task, str, dict[str, Any], torch.device, int, tuple[str, ...]]:
    """Check every name, option and input, and load the data: all before any training."""
    if cfg.steps is not None and (not isinstance(cfg.steps, int) or cfg.steps < 1):
        raise ValueError(f"--steps must be an int >= 1, got {cfg.steps!r}")
    if not cfg.seeds or any(not isinstance(s, int) or s < 0 for s in cfg.seeds):
        raise ValueError(f"--seeds must name at least one seed >= 0, got {cfg.seeds!r}")
    if not cfg.methods:
        raise ValueError("--methods must name at least one method, e.g. default,noise")
    if cfg.lr is not None and not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"--lr must be a finite number > 0, got {cfg.lr!r}")
    if cfg.eval_every is not None and (not isinstance(cfg.eval_every, int) or cfg.eval_every < 1):
        raise ValueError(f"--eval-every must be an int >= 1, got {cfg.eval_every!r}")
    rules = _rules(cfg)
    task = TASKS.build(cfg.task, cfg.task_options)
    steps = task.resolve_steps(cfg.steps)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the run's length must be an int >= 1, got {steps!r}")
    arch_spec = cfg.arch or task.default_arch
    arch, arch_kwargs = task.parse_arch(arch_spec)
    methods = [create(spec) for spec in cfg.methods]  # unknown names and options fail here
    device = resolve_device(cfg.device)
    task.setup(device)
    probe = task.build_model(arch, arch_kwargs).to(device)
    task.check_model(probe, arch_spec)
    for method, rule in zip(methods, rules, strict=True):
        # the learning rule first (dfa's output size, unsupported layers), as the run will
        model = probe if rule == "bp" else fa.convert(copy.deepcopy(probe), rule, seed=0)
        method.validate(model, task.inputs)
    return task, arch, arch_kwargs, device, steps, rules


def batch_default(task: Task, device: torch.device) -> bool:
    """Whether ``--batch`` is on when not given: where stacking was measured to pay. On the CPU it
    does not (one run is already compute-bound: K = 16 SIREN 3x256 runs at 64 px took 1.5x longer
    stacked than one by one, and 16 runs of the 256-point regress-1d MLP gained only 1.2x;
    BENCHMARKS.md, "Speed"). No GPU measurement exists yet, so it stays off there too until
    ``benchmarks/speed.py batch`` shows the gain."""
    return False


def run(cfg: RunConfig, *, progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Train every method x seed of ``cfg`` and return all records in ``cfg.out/results.jsonl``.

    With ``cfg.batch`` (default: :func:`batch_default`), the runs that come out of their init with
    the same architecture, backprop and learning rate train together, stacked
    (:meth:`Task.fit_batched`); a group in which a run diverges is trained again one by one.
    """
    task, arch, arch_kwargs, device, steps, rules = _prepare(cfg)
    prec = resolve_precision(cfg.precision, device, task.precisions, f"task {task.name!r}")
    batch = batch_default(task, device) if cfg.batch is None else cfg.batch
    if batch and not task.batchable:
        raise ValueError(f"--batch: task {task.name!r} does not train runs stacked; use --no-batch")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_results(out)
    done = {_identity(r) for r in records if r.get("status") == "ok"}  # failed runs are tried again
    if (reference := task.reference()) is not None:
        atomic_write_bytes(out / "reference.safetensors", tensors_to_bytes({"image": reference}))
    evals = eval_steps(steps, cfg.eval_every, task.metric.checkpoints)
    snap_steps = [c for c in task.snapshot_steps if c < steps] + [steps]
    evals = sorted(set(evals) | set(snap_steps))
    plan = _Plan(cfg, task, arch, arch_kwargs, device, steps, prec, evals, snap_steps, out, progress)

    def save(r: _Run) -> None:
        nonlocal records
        rec = _finish(plan, r)
        records = [x for x in records if _identity(x) != _identity(rec)] + [rec]
        atomic_write_text(out / RESULTS, "".join(json.dumps(x, sort_keys=True) + "\n" for x in records))

    groups: dict[Any, list[_Run]] = {}
    for spec, rule in zip(cfg.methods, rules, strict=True):
        for seed in cfg.seeds:
            r = _start(plan, spec, rule, seed, done)
            if r is None:
                continue
            if r.status == "ok" and batch and rule == "bp":
                groups.setdefault((batched.signature(r.model), r.rec["lr"]), []).append(r)
            else:
                if r.status == "ok":
                    _train(plan, r)
                save(r)
    for group in groups.values():
        if len(group) > 1:
            _train_group(plan, group)
        for r in group:
            if r.history is None:  # a group of one, or one that diverged: one by one
                _train(plan, r)
            save(r)
    return records


@dataclass
class _Plan:
    """What every run of a sweep shares."""

    cfg: RunConfig
    task: Task
    arch: str
    arch_kwargs: dict[str, Any]
    device: torch.device
    steps: int
    precision: str
    evals: list[int]
    snap_steps: list[int]
    out: Path
    progress: ProgressFn | None


@dataclass
class _Run:
    """One method x seed: its record so far, its model, and what its training produces."""

    rec: dict[str, Any]
    model: nn.Module
    method: Any
    init_s: float = 0.0
    train_s: float = 0.0
    status: str = "ok"
    history: torch.Tensor | None = None
    curve: dict[str, list[Any]] = field(default_factory=lambda: {"step": []})
    snaps: dict[str, torch.Tensor] = field(default_factory=dict)
    plots: tuple[PlotSpec, ...] = ()  # figures this run adds to its task's (e.g. its learning rule's)


def _label(r: _Run) -> str:
    return f"{r.rec['method']} · seed {r.rec['seed']}"


def _reporter(plan: _Plan, label: str) -> ProgressFn:
    def report(phase: str, k: int, n: int) -> None:
        if plan.progress is not None:
            plan.progress(f"{label} · {phase}", k, n)

    return report


def _start(plan: _Plan, spec: str, rule: str, seed: int, done: set[str]) -> _Run | None:
    """Build and initialise one run's model (``None`` if it is already in the results)."""
    cfg, task, device = plan.cfg, plan.task, plan.device
    torch.manual_seed(seed)  # the architecture's own init draws from here
    model = task.build_model(plan.arch, plan.arch_kwargs).to(device)
    if rule != "bp":  # B is drawn from its own generator: the weights match the bp run's
        model = fa.convert(model, rule, seed=seed)
    # the architecture's own learning rate (every registered one carries the one its paper trains with)
    lr = cfg.lr if cfg.lr is not None else float(getattr(model, "default_lr", 1e-4))
    method = create(spec, seed=seed)
    rec: dict[str, Any] = {
        "task": task.name,
        "task_config": task.describe(),
        "arch": plan.arch,
        "arch_spec": cfg.arch or task.default_arch,
        "arch_config": getattr(model, "config", plan.arch_kwargs),
        "method": spec,
        "method_config": method.describe(),
        "rule": rule,
        "seed": seed,
        "steps": plan.steps,
        "step_unit": task.metric.step_unit,
        "lr": lr,
        "eval_every": cfg.eval_every,
        "compile": cfg.compile,
        "precision": plan.precision,
        "device": str(device),
    }
    if _identity(rec) in done:
        log.info("skipping %s seed %d: already in %s", spec, seed, RESULTS)
        return None
    r = _Run(rec, model, method)
    with progress_hook(_reporter(plan, _label(r))):
        sync(device)
        t0 = time.perf_counter()
        try:
            method(model, task.inputs)
        except TrainingDiverged as exc:  # one failed run must not end the sweep
            r.status = f"diverged in init at step {exc.step}"
        sync(device)
        r.init_s = time.perf_counter() - t0
    return r


def _on_eval(plan: _Plan, r: _Run) -> Callable[[int, torch.Tensor], None]:
    task = plan.task

    def on_eval(step: int, pred: torch.Tensor) -> None:
        r.curve["step"].append(step)
        with torch.no_grad():
            values = task.evaluate(pred) | task.evaluate_model(r.model)
        for name, value in values.items():
            r.curve.setdefault(name, []).append(value if math.isfinite(value) else None)
        if step in plan.snap_steps and (img := task.snapshot(pred)) is not None:
            r.snaps[f"step_{step}"] = img

    return on_eval


def _train(plan: _Plan, r: _Run) -> None:
    """Train one run on its own."""
    r.curve, r.snaps = {"step": []}, {}
    with progress_hook(_reporter(plan, _label(r))):
        sync(plan.device)
        t0 = time.perf_counter()
        try:
            r.history = plan.task.fit(
                r.model, steps=plan.steps, lr=r.rec["lr"], evaluate_at=plan.evals, on_eval=_on_eval(plan, r),
                compile=plan.cfg.compile, precision=plan.precision,
            )  # fmt: skip
            r.rec["analysis"] = plan.task.analyse(r.model)
        except TrainingDiverged as exc:  # one failed run must not end the sweep
            r.status, r.history = f"diverged in training at step {exc.step}", exc.history
        sync(plan.device)
        r.train_s = time.perf_counter() - t0
    r.rec["batched"] = 1


def _train_group(plan: _Plan, group: list[_Run]) -> None:
    """Train runs of one architecture stacked; if one diverges, leave all for one-by-one training,
    from their initial weights."""
    initial = [copy.deepcopy(r.model.state_dict()) for r in group]
    with progress_hook(_reporter(plan, f"{len(group)} runs stacked")):
        sync(plan.device)
        t0 = time.perf_counter()
        try:
            history = plan.task.fit_batched(
                [r.model for r in group], steps=plan.steps, lr=group[0].rec["lr"], evaluate_at=plan.evals,
                on_eval=[_on_eval(plan, r) for r in group], compile=plan.cfg.compile, precision=plan.precision,
            )  # fmt: skip
        except TrainingDiverged as exc:
            log.warning("a stacked run diverged at step %d: training the %d runs one by one", exc.step, len(group))
            for r, state in zip(group, initial, strict=True):
                r.model.load_state_dict(state)
            return
        for r in group:  # inside the timer, as in one-by-one training
            r.rec["analysis"] = plan.task.analyse(r.model)
        sync(plan.device)
        elapsed = time.perf_counter() - t0
    for k, r in enumerate(group):
        r.history, r.train_s = history[:, k], elapsed / len(group)  # the group's time, shared out
        r.rec["batched"] = len(group)


def _finish(plan: _Plan, r: _Run) -> dict[str, Any]:
    """The run's full record (metrics, steps-to, timings); snapshots are written beside it."""
    task, rec, steps = plan.task, r.rec, plan.steps
    history = r.history if r.history is not None else torch.empty(0)
    per_step = task.step_metric(history)
    every = None
    if per_step is not None:
        every = [round(float(v), 4) if math.isfinite(v) else None for v in per_step.tolist()]
        every += [None] * (steps + 1 - len(every))  # a diverged run stops early
    # the record describes itself: the report reads it without the task (the thresholds it ran with)
    spec = task.metric.for_record(thresholds=plan.cfg.thresholds or None, extra_plots=r.plots)
    rec.update(status=r.status, metric=spec.name, higher_is_better=spec.higher_is_better, curve=r.curve)
    rec["metric_spec"] = spec.to_dict()
    rec["metric_every_step"] = every
    at, values = metric_series(rec)
    better = spec.higher_is_better
    rec.update(
        at_step={str(c): value_at(at, values, c) for c in spec.checkpoints if c <= steps}
        | {"final": value_at(at, values, steps)},
        steps_to={f"{t:g}": steps_to(values, t, steps=at, higher_is_better=better) for t in spec.thresholds},
        wall={"init_s": r.init_s, "train_s": r.train_s},
        method_info=r.method.info,
        env=environment(plan.device),
    )
    rec.setdefault("analysis", {})
    extra = task.summarize_run(r.curve)
    if clash := sorted(extra.keys() & rec.keys()):
        raise ValueError(f"task {task.name!r}: summarize_run() returns fields the runner sets: {clash}")
    rec.update(extra)
    rec = json.loads(json.dumps(rec))  # exactly what results.jsonl holds (tuples become lists)
    if r.snaps:
        spec, seed = rec["method"], rec["seed"]
        # readable, and unique even where two specs slug alike
        name = re.sub(r"[^A-Za-z0-9._=-]+", "_", spec) + f"_{hashlib.sha1(spec.encode()).hexdigest()[:6]}_seed{seed}"
        rec["snapshots"] = f"snapshots/{name}.safetensors"
        atomic_write_bytes(plan.out / rec["snapshots"], tensors_to_bytes(r.snaps))
    return rec
