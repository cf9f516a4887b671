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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__, fa
from ._io import atomic_write_bytes, atomic_write_text, tensors_to_bytes
from .methods import create
from .nn import ARCHS
from .tasks import TASKS, Task
from .train import ProgressFn, TrainingDiverged, progress_hook

__all__ = ["RunConfig", "eval_steps", "load_results", "metric_series", "resolve_device", "run", "steps_to", "value_at"]

log = logging.getLogger(__name__)
RESULTS = "results.jsonl"


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


def steps_to(
    curve: Sequence[float | None],
    threshold: float,
    *,
    steps: Sequence[int] | None = None,
    higher_is_better: bool = True,
) -> int | None:
    """First step whose metric reaches ``threshold`` (``>=``, or ``<=`` for an error), or ``None``.

    ``curve[i]`` is the metric at step ``steps[i]`` (default: at step ``i``); ``None`` never counts.
    """
    at = range(len(curve)) if steps is None else steps
    for k, v in zip(at, curve, strict=True):
        if v is not None and (v >= threshold if higher_is_better else v <= threshold):
            return k
    return None


def metric_series(rec: dict[str, Any]) -> tuple[list[int], list[float | None]]:
    """``(steps, values)`` of a record's headline metric: every step where the loss determines it,
    else the evaluation steps."""
    if rec.get("metric_every_step") is not None:
        return list(range(len(rec["metric_every_step"]))), rec["metric_every_step"]
    curve = rec.get("curve", {})
    return list(curve.get("step", [])), list(curve.get(rec["metric"], []))


def value_at(steps: Sequence[int], values: Sequence[float | None], step: int) -> float | None:
    """The metric at ``step`` (``None`` where it was not evaluated or not finite)."""
    try:
        return values[list(steps).index(step)]
    except ValueError:
        return None


def _environment(device: torch.device) -> dict[str, Any]:
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
    ident["rule"] = rec.get("rule", "bp")  # records from before learning rules were backprop
    ident["device"] = rec.get("device") or rec.get("env", {}).get("device")  # older records: in env only
    return json.dumps(ident, sort_keys=True, default=str)


def load_results(out: str | Path) -> list[dict[str, Any]]:
    """The records of ``out/results.jsonl`` (an unreadable last line, from a crash, is skipped)."""
    path = Path(out) / RESULTS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("skipping an unreadable line in %s", path)
    return records


def _sync(device: torch.device) -> None:
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
    arch_parts = ARCHS.parse(arch_spec, aliases=task.arch_aliases)
    if len(arch_parts) != 1:
        raise ValueError(f"--arch takes one architecture, got {arch_spec!r}")
    arch, arch_kwargs = arch_parts[0]
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


def run(cfg: RunConfig, *, progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Train every method x seed of ``cfg`` and return all records in ``cfg.out/results.jsonl``."""
    task, arch, arch_kwargs, device, steps, rules = _prepare(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_results(out)
    done = {_identity(r) for r in records if r.get("status") == "ok"}  # failed runs are tried again
    reference = getattr(task, "reference", None)
    if reference is not None:
        atomic_write_bytes(out / "reference.safetensors", tensors_to_bytes({"image": reference()}))
    evals = eval_steps(steps, cfg.eval_every, task.checkpoints)
    snap_steps = [c for c in task.snapshot_steps if c < steps] + [steps]
    evals = sorted(set(evals) | set(snap_steps))

    for spec, rule in zip(cfg.methods, rules, strict=True):
        for seed in cfg.seeds:
            rec = _run_one(
                cfg, task, arch, arch_kwargs, device, spec, rule, seed, steps, evals, snap_steps, out, progress, done
            )
            if rec is None:
                continue
            records = [r for r in records if _identity(r) != _identity(rec)] + [rec]
            atomic_write_text(out / RESULTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return records


def _run_one(
    cfg: RunConfig,
    task: Task,
    arch: str,
    arch_kwargs: dict[str, Any],
    device: torch.device,
    spec: str,
    rule: str,
    seed: int,
    steps: int,
    evals: list[int],
    snap_steps: list[int],
    out: Path,
    progress: ProgressFn | None,
    done: set[str],
) -> dict[str, Any] | None:
    torch.manual_seed(seed)  # the architecture's own init draws from here
    model = task.build_model(arch, arch_kwargs).to(device)
    if rule != "bp":  # B is drawn from its own generator: the weights match the bp run's
        model = fa.convert(model, rule, seed=seed)
    lr = cfg.lr if cfg.lr is not None else task.default_lr(model)
    method = create(spec, seed=seed)
    rec: dict[str, Any] = {
        "task": task.name,
        "task_config": task.describe(),
        "arch": arch,
        "arch_spec": cfg.arch or task.default_arch,
        "arch_config": getattr(model, "config", arch_kwargs),
        "method": spec,
        "method_config": method.describe(),
        "rule": rule,
        "seed": seed,
        "steps": steps,
        "step_unit": task.step_unit,
        "lr": lr,
        "eval_every": cfg.eval_every,
        "compile": cfg.compile,
        "device": str(device),
    }
    if _identity(rec) in done:
        log.info("skipping %s seed %d: already in %s", spec, seed, RESULTS)
        return None

    def report(phase: str, k: int, n: int) -> None:
        if progress is not None:
            progress(f"{spec} · seed {seed} · {phase}", k, n)

    curve: dict[str, list[float]] = {"step": []}
    snaps: dict[str, torch.Tensor] = {}

    def on_eval(step: int, pred: torch.Tensor) -> None:
        curve["step"].append(step)
        with torch.no_grad():
            values = task.evaluate(pred) | task.evaluate_model(model)
        for name, value in values.items():
            curve.setdefault(name, []).append(value if math.isfinite(value) else None)
        if step in snap_steps and (img := task.snapshot(pred)) is not None:
            snaps[f"step_{step}"] = img

    status, history, phase, analysis = "ok", torch.empty(0), "init", {}
    with progress_hook(report):
        _sync(device)
        t0 = t1 = time.perf_counter()
        try:
            method(model, task.inputs)
            _sync(device)
            t1, phase = time.perf_counter(), "training"
            history = task.fit(model, steps=steps, lr=lr, evaluate_at=evals, on_eval=on_eval, compile=cfg.compile)
            analysis = task.analyse(model)
        except TrainingDiverged as exc:  # one failed run must not end the sweep
            status = f"diverged in {phase} at step {exc.step}"
            history = exc.history if phase == "training" else history
        _sync(device)
        t2 = time.perf_counter()

    per_step = task.step_metric(history)
    every = None
    if per_step is not None:
        every = [round(float(v), 4) if math.isfinite(v) else None for v in per_step.tolist()]
        every += [None] * (steps + 1 - len(every))  # a diverged run stops early
    rec.update(status=status, metric=task.metric, higher_is_better=task.higher_is_better, curve=curve)
    rec["metric_every_step"] = every
    at, values = metric_series(rec)
    better = task.higher_is_better
    rec.update(
        at_step={str(c): value_at(at, values, c) for c in task.checkpoints if c <= steps}
        | {"final": value_at(at, values, steps)},
        steps_to={
            f"{t:g}": steps_to(values, t, steps=at, higher_is_better=better) for t in cfg.thresholds or task.thresholds
        },
        wall={"init_s": t1 - t0, "train_s": t2 - t1},
        method_info=method.info,
        analysis=analysis,
        env=_environment(device),
    )
    extra = task.summarize_run(curve)
    if clash := sorted(extra.keys() & rec.keys()):
        raise ValueError(f"task {task.name!r}: summarize_run() returns fields the runner sets: {clash}")
    rec.update(extra)
    rec = json.loads(json.dumps(rec))  # exactly what results.jsonl holds (tuples become lists)
    if snaps:
        # readable, and unique even where two specs slug alike
        name = re.sub(r"[^A-Za-z0-9._=-]+", "_", spec) + f"_{hashlib.sha1(spec.encode()).hexdigest()[:6]}_seed{seed}"
        rec["snapshots"] = f"snapshots/{name}.safetensors"
        atomic_write_bytes(out / rec["snapshots"], tensors_to_bytes(snaps))
    return rec
