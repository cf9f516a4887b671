"""task x methods x seeds -> ``results.jsonl``. The only place that seeds the global RNGs.

Everything that can be wrong with a run (names, options, shapes, data, cache folder) is checked
before the first training step. Each finished run's record is appended to ``results.jsonl`` as
one fsync'd line, so a killed sweep loses at most the runs in progress; runs already recorded with
the same settings are skipped, so it resumes where it stopped. Each record carries the command
line that made it, the init's seconds (a cache hit's load) and, at every evaluation point, the
training seconds so far (:data:`initium.records.ELAPSED`), from which the report reads the wall
time to each threshold counting the init.

Under ``torchrun --nproc_per_node K`` the sweep's runs are dealt out over the K ranks
(:func:`initium.distributed.shard`); each rank appends to its own ``results.rank{R}.jsonl`` (no two
writers share a file), and at the end rank 0 merges them into ``results.jsonl`` in the order one
process would have written, then removes them. :func:`load_results` reads the same merged view at
any moment, so a report, or a rerun after a crash, sees what a one-process sweep would have left.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import platform
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, batched, distributed
from ._io import append_line, atomic_write_bytes, atomic_write_text, tensors_to_bytes
from .memory import check_fits
from .methods import DEFAULT_RULE, RULES, LearningRule, create
from .precision import resolve_precision
from .records import (
    ELAPSED,
    RESULTS,
    identity,
    latest,
    load_results,
    metric_series,
    read_records,
    shard_files,
    shard_path,
    steps_to,
    value_at,
)  # fmt: skip
from .tasks import TASKS, Task
from .train import Progress, ProgressFn, TrainingDiverged, check_lr, progress_hook

__all__ = [
    "RESULTS", "RunConfig", "batch_default", "check_out", "eval_steps", "load_results", "metric_series",
    "resolve_device", "run", "steps_to", "value_at",
]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """One sweep. ``arch`` and each of ``methods`` are specs (``"siren(hidden=128)"``,
    ``"noise(steps=300)"``; ``None``: the task's default); ``task_options`` are the task config's fields.
    ``rules`` are learning rules (``initium.methods.RULES``: ``bp``, ``fa``, ``dfa`` ...), one for all
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
    save_weights: bool = False  # each finished run's trained weights in OUT/weights/ (a model zoo reads them)
    # the command line that made the sweep, in every record (the CLI gives ``initium run ...``); None:
    # this process's own (sys.argv)
    command: str | None = None


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``None`` -> CUDA when present, else CPU (decided now, never at import). On CUDA, ``None`` and
    a bare ``"cuda"`` mean GPU ``local_rank``: under torchrun each rank trains on its own GPU
    (:func:`initium.distributed.device_for`)."""
    return distributed.device_for(distributed.Rank(local_rank=local_rank), device)


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


def _slug(rec: dict[str, Any]) -> str:
    """A run's file name (snapshots, weights): readable, and unique per run identity even where two
    method specs slug alike or two architectures share a folder."""
    spec = str(rec["method"])
    digest = hashlib.sha1(identity(rec).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", spec) + f"_{digest}_seed{rec['seed']}"


def _merge(out: Path, plan: Sequence[tuple[str, str, int]]) -> None:
    """Fold the shard files into ``results.jsonl`` (atomically) and remove them: the records
    already there keep their place, the shards' follow in the sweep's order (methods, then
    seeds), as one process would have appended them. Run by one process while no rank writes."""
    shards = shard_files(out)
    if not shards:
        return
    where = {key: k for k, key in enumerate(plan)}
    new = latest([rec for path in shards for rec in read_records(path)])
    new.sort(key=lambda r: where.get((r.get("method"), r.get("rule", DEFAULT_RULE), r.get("seed")), len(where)))
    records = latest(read_records(out / RESULTS) + new)
    atomic_write_text(out / RESULTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    for path in shards:
        path.unlink(missing_ok=True)
    log.info("merged %d shard file(s) into %s", len(shards), out / RESULTS)


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels, so a timer measures their work, not their launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rules(cfg: RunConfig) -> tuple[str, ...]:
    """One learning rule per method: ``--rule fa`` for all, or ``--rule bp,fa,fa`` paired in order."""
    n = len(cfg.methods)
    rules = tuple(cfg.rules) if cfg.rules else (DEFAULT_RULE,)
    if len(rules) == 1:
        rules = rules * n
    if len(rules) != n:
        raise ValueError(
            f"--rule names {len(rules)} rules for {n} methods; give one rule for all or one per method"
            f" (e.g. --rule bp,fa,fa --methods default,default,fa-noise)"
        )
    for rule in rules:
        if rule not in RULES:
            raise ValueError(
                f"--rule: unknown learning rule {rule!r}; expected one of: {', '.join(RULES.names(in_order=True))}"
            )
    return rules


def check_out(out: Path) -> None:
    """Raise ``ValueError`` naming ``--out`` unless it is a folder this process can create files in,
    or one it can create. Tried by creating (and removing) a temporary file in it, or in the
    nearest folder above it that exists: permission bits say nothing of a read-only mount, and
    nothing at all to root."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder; give a folder for the results (new or existing)")
    base = out
    while not base.exists() and base.parent != base:
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"--out {str(out)!r} cannot be created: {str(base)!r} is a file; give another folder")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise ValueError(
            f"--out {str(out)!r} cannot be written ({exc.strerror or exc}: {str(base)!r});"
            " give a folder you can write to"
        ) from exc


def _check_lrs(cfg: RunConfig, methods: Sequence[Any]) -> None:
    """The ``lr`` of every method spec that has one (a method's ``lr`` field is the learning rate of
    its own training, e.g. noise pretraining's), like ``--lr``, within what the optimisers'
    arithmetic takes (:data:`initium.train.MAX_LR`): a larger one would crash inside the run's
    first Adam step, where a sweep would record it as a failed run instead of refusing it now."""
    for spec, method in zip(cfg.methods, methods, strict=True):
        for part in method.describe():
            lr = part.get("lr")
            if isinstance(lr, int | float) and not isinstance(lr, bool):
                check_lr(lr, f"--methods {spec!r}: {part.get('name', 'the method')}'s lr")


def _prepare(
    cfg: RunConfig, local_rank: int = 0
) -> tuple[Task, str, dict[str, Any], torch.device, int, tuple[str, ...]]:
    """Check every name, option and input, and load the data: all before any training. The
    results folder and the memory the run will need are checked before the data is loaded."""
    if cfg.steps is not None and (not isinstance(cfg.steps, int) or cfg.steps < 1):
        raise ValueError(f"--steps must be an int >= 1, got {cfg.steps!r}")
    if not cfg.seeds or any(not isinstance(s, int) or s < 0 for s in cfg.seeds):
        raise ValueError(f"--seeds must name at least one seed >= 0, got {cfg.seeds!r}")
    if not cfg.methods:
        raise ValueError("--methods must name at least one method, e.g. default,noise")
    if cfg.lr is not None:
        check_lr(cfg.lr, "--lr")
    if cfg.eval_every is not None and (not isinstance(cfg.eval_every, int) or cfg.eval_every < 1):
        raise ValueError(f"--eval-every must be an int >= 1, got {cfg.eval_every!r}")
    if cfg.thresholds is not None and not all(
        isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) for t in cfg.thresholds
    ):  # a NaN threshold is never reached, an infinite one never either: a column of dashes
        got = ",".join(f"{t:g}" if isinstance(t, float) else repr(t) for t in cfg.thresholds)
        raise ValueError(f"--thresholds must be finite numbers such as 25,30,40, got {got}")
    check_out(cfg.out)
    rules = _rules(cfg)
    task = TASKS.build(cfg.task, cfg.task_options)
    steps = task.resolve_steps(cfg.steps)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the run's length must be an int >= 1, got {steps!r}")
    arch_spec = cfg.arch or task.default_arch
    arch, arch_kwargs = task.parse_arch(arch_spec)
    methods = [create(spec) for spec in cfg.methods]  # unknown names and options fail here
    _check_lrs(cfg, methods)
    device = resolve_device(cfg.device, local_rank)
    check_fits(task.estimate_memory(arch, arch_kwargs), device)  # before setup loads or allocates anything
    task.setup(device)
    probe = task.build_model(arch, arch_kwargs).to(device)
    task.check_model(probe, arch_spec)
    for method, rule in zip(methods, rules, strict=True):
        # the learning rule first (dfa's output size, unsupported layers), as the run will
        model = RULES.build(rule)(copy.deepcopy(probe), seed=0)
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
    """Train every method x seed of ``cfg`` and return all records of ``cfg.out`` (:func:`load_results`).

    With ``cfg.batch`` (default: :func:`batch_default`), the runs that come out of their init with
    the same architecture, backprop and learning rate train together, stacked
    (:meth:`Task.fit_batched`); a group in which a run diverges is trained again one by one.

    Under ``torchrun`` (``WORLD_SIZE > 1``) this joins the process group (:func:`initium.distributed.init`;
    it leaves again at the end if it joined), every rank checks the inputs, trains its share of the
    runs on its own device and appends to its own shard; rank 0 merges the shards, and every rank
    returns the merged records.
    """
    joined = not distributed.is_joined()
    me = distributed.init()
    try:
        return _run(cfg, me, progress)
    finally:
        if joined:
            distributed.shutdown()


def _run(cfg: RunConfig, me: distributed.Rank, progress: ProgressFn | None) -> list[dict[str, Any]]:
    task, arch, arch_kwargs, device, steps, rules = _prepare(cfg, me.local_rank)
    prec = resolve_precision(cfg.precision, device, task.precisions, f"task {task.name!r}")
    batch = batch_default(task, device) if cfg.batch is None else cfg.batch
    if batch and not task.batchable:
        raise ValueError(f"--batch: task {task.name!r} does not train runs stacked; use --no-batch")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    sweep = [(spec, rule, seed) for spec, rule in zip(cfg.methods, rules, strict=True) for seed in cfg.seeds]
    reference = task.reference()
    # one picture per task config: sweeps of two images can share a folder (the report pairs each
    # run's snapshots with its own target)
    ref_path = f"references/{_digest(task.name, task.describe())}.safetensors" if reference is not None else None
    if me.is_main:
        if not me.is_distributed:  # shards a killed torchrun sweep left: fold them in before appending
            _merge(out, sweep)
        if reference is not None and ref_path is not None:
            atomic_write_bytes(out / ref_path, tensors_to_bytes({"image": reference}))
    done = {identity(r) for r in load_results(out) if r.get("status") == "ok"}  # failed runs are tried again
    distributed.barrier()  # every rank has read what is done before any rank appends
    evals = eval_steps(steps, cfg.eval_every, task.metric.checkpoints)
    snap_steps = [c for c in task.snapshot_steps if c < steps] + [steps]
    evals = sorted(set(evals) | set(snap_steps))
    command = cfg.command if cfg.command is not None else shlex.join(sys.argv)
    plan = _Plan(cfg, task, arch, arch_kwargs, device, steps, prec, evals, snap_steps, out, progress, command, ref_path)
    dest = shard_path(out, me.rank) if me.is_distributed else out / RESULTS

    mine = distributed.shard(sweep, me)
    total, finished = len(mine), 0

    def advance() -> None:  # this rank's progress through its runs: one event per finished or skipped run
        nonlocal finished
        finished += 1
        if progress is not None:
            progress(Progress("sweep", finished, total, label=task.name))

    def save(r: _Run) -> None:
        append_line(dest, json.dumps(_finish(plan, r), sort_keys=True))
        advance()

    groups: dict[Any, list[_Run]] = {}
    for spec, rule, seed in mine:
        r = _start(plan, spec, rule, seed, done)
        if r is None:
            advance()
            continue
        # custom backward passes (feedback alignment) do not vmap: other rules train one by one
        if r.status == "ok" and batch and rule == DEFAULT_RULE:
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
    if me.is_distributed:
        distributed.barrier()  # every shard is complete
        if me.is_main:
            _merge(out, sweep)
        distributed.barrier()  # the merged file is in place
    return load_results(out)


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
    command: str
    reference: str | None  # the task's picture, relative to out


class _Clock:
    """Training seconds for the curve's :data:`~initium.records.ELAPSED`: wall time since the clock
    was made (as training starts), less the time spent in evaluations (:meth:`evaluating`), divided
    by the runs trained together (a stacked group's time shared out, as its ``train_s`` is)."""

    def __init__(self, device: torch.device, runs: int = 1) -> None:
        self.device, self.runs = device, runs
        self.t0, self.paused = time.perf_counter(), 0.0

    def now(self) -> float:
        sync(self.device)  # the step's queued kernels are part of the step
        return (time.perf_counter() - self.t0 - self.paused) / self.runs

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.paused += time.perf_counter() - t


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class _Run:
    """One method x seed: its record so far, its model, and what its training produces."""

    rec: dict[str, Any]
    model: nn.Module
    method: Any
    rule: LearningRule
    init_s: float = 0.0
    train_s: float = 0.0
    status: str = "ok"
    history: torch.Tensor | None = None
    curve: dict[str, list[Any]] = field(default_factory=lambda: {"step": []})
    snaps: dict[str, torch.Tensor] = field(default_factory=dict)
    stored: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # Task.stored's files


def _label(r: _Run) -> str:
    return f"{r.rec['method']} · seed {r.rec['seed']}"


def _fail(r: _Run, phase: str, exc: Exception) -> None:
    """Record that run ``r`` failed in ``phase`` (``init`` or ``training``) and say so: its status
    reads ``diverged in PHASE at step N`` or ``failed in PHASE: Error: message`` (the message's first
    line; the traceback is logged at debug level, ``-vv``). The sweep goes on with the next run."""
    if isinstance(exc, TrainingDiverged):
        r.status = f"diverged in {phase} at step {exc.step}"
    else:
        message = (str(exc).strip().splitlines() or [""])[0]
        message = message if len(message) <= 200 else message[:199] + "…"
        r.status = f"failed in {phase}: {type(exc).__name__}" + (f": {message}" if message else "")
    more = "" if isinstance(exc, TrainingDiverged) else " (-vv shows where)"
    log.warning("%s %s: %s%s; recorded as failed, going on with the next run", r.rec["task"], _label(r), r.status, more)
    log.debug("%s: the failure's traceback", _label(r), exc_info=exc)


def _reporter(plan: _Plan, label: str, runs: int = 1) -> ProgressFn:
    """Pass the loops' events on to the sweep's hook, saying which run (or stacked group) they are."""

    def report(event: Progress) -> None:
        if plan.progress is not None:
            plan.progress(replace(event, label=label, runs=runs))

    return report


def _start(plan: _Plan, spec: str, rule: str, seed: int, done: set[str]) -> _Run | None:
    """Build and initialise one run's model (``None`` if it is already in the results)."""
    cfg, task, device = plan.cfg, plan.task, plan.device
    torch.manual_seed(seed)  # the architecture's own init draws from here
    model = task.build_model(plan.arch, plan.arch_kwargs).to(device)
    learning = RULES.build(rule)
    # a rule draws from its own generators (FA's B): the weights match the backprop run's
    model = learning(model, seed=seed)
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
        "device": device.type,  # which GPU (a rank's own) is in env; the record is the same on any
    }
    if identity(rec) in done:
        log.info("skipping %s seed %d: already in %s", spec, seed, RESULTS)
        return None
    r = _Run(rec, model, method, learning)
    with progress_hook(_reporter(plan, _label(r))):
        sync(device)
        t0 = time.perf_counter()
        try:
            method(model, task.inputs)
        # one failed run must not end the sweep: whatever it raised is its result (a KeyboardInterrupt,
        # not an Exception, still stops the sweep)
        except Exception as exc:
            _fail(r, "init", exc)
        sync(device)
        r.init_s = time.perf_counter() - t0
    return r


def _on_eval(plan: _Plan, r: _Run, clock: _Clock) -> Callable[[int, torch.Tensor], None]:
    task = plan.task

    def on_eval(step: int, pred: torch.Tensor) -> None:
        r.curve["step"].append(step)
        r.curve.setdefault(ELAPSED, []).append(round(clock.now(), 4))
        with clock.evaluating():
            with torch.no_grad():
                values = task.evaluate(pred) | task.evaluate_model(r.model)
            if task.probe is not None:  # the learning rule's own measures (FA's angles need autograd)
                values |= r.rule.measure(r.model, *task.probe)
            for name, value in values.items():
                r.curve.setdefault(name, []).append(value if math.isfinite(value) else None)
            if step in plan.snap_steps and (img := task.snapshot(pred)) is not None:
                r.snaps[f"step_{step}"] = img

    return on_eval


def _analyse(task: Task, r: _Run) -> dict[str, Any]:
    """The task's analysis of the trained model, and the learning rule's on the task's probe; the
    tensors the task keeps (:meth:`Task.stored`) are taken now, from the trained model."""
    r.stored = task.stored(r.model)
    out = task.analyse(r.model)
    if task.probe is not None:
        out |= r.rule.analyse(r.model, *task.probe)
    return out


def _train(plan: _Plan, r: _Run) -> None:
    """Train one run on its own."""
    r.curve, r.snaps, r.stored = {"step": []}, {}, {}
    with progress_hook(_reporter(plan, _label(r))):
        sync(plan.device)
        t0 = time.perf_counter()
        clock = _Clock(plan.device)
        try:
            r.history = plan.task.fit(
                r.model, steps=plan.steps, lr=r.rec["lr"], evaluate_at=plan.evals, on_eval=_on_eval(plan, r, clock),
                compile=plan.cfg.compile, precision=plan.precision,
            )  # fmt: skip
            r.rec["analysis"] = _analyse(plan.task, r)
        except Exception as exc:  # one failed run must not end the sweep (as in _start)
            _fail(r, "training", exc)
            r.history = exc.history if isinstance(exc, TrainingDiverged) else None
        sync(plan.device)
        r.train_s = time.perf_counter() - t0
    r.rec["batched"] = 1


def _train_group(plan: _Plan, group: list[_Run]) -> None:
    """Train runs of one architecture stacked; if one diverges, leave all for one-by-one training,
    from their initial weights."""
    initial = [copy.deepcopy(r.model.state_dict()) for r in group]
    with progress_hook(_reporter(plan, f"{len(group)} runs stacked", runs=len(group))):
        sync(plan.device)
        t0 = time.perf_counter()
        clock = _Clock(plan.device, runs=len(group))
        try:
            history = plan.task.fit_batched(
                [r.model for r in group], steps=plan.steps, lr=group[0].rec["lr"], evaluate_at=plan.evals,
                on_eval=[_on_eval(plan, r, clock) for r in group], compile=plan.cfg.compile, precision=plan.precision,
            )  # fmt: skip
        except Exception as exc:  # one run's failure must not end the others: each is tried on its own
            what = f"diverged at step {exc.step}" if isinstance(exc, TrainingDiverged) else f"failed ({exc!r})"
            log.warning("a stacked run %s: training the %d runs one by one", what, len(group))
            for r, state in zip(group, initial, strict=True):
                r.model.load_state_dict(state)
            return
        for r in group:  # inside the timer, as in one-by-one training
            r.rec["analysis"] = _analyse(plan.task, r)
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
    spec = task.metric.for_record(thresholds=plan.cfg.thresholds or None, extra_plots=r.rule.plots)
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
        command=plan.command,
    )
    if plan.reference is not None:
        rec["reference"] = plan.reference
    rec.setdefault("analysis", {})
    extra = task.summarize_run(r.curve)
    if clash := sorted(extra.keys() & rec.keys()):
        raise ValueError(f"task {task.name!r}: summarize_run() returns fields the runner sets: {clash}")
    rec.update(extra)
    rec = json.loads(json.dumps(rec))  # exactly what results.jsonl holds (tuples become lists)
    if r.snaps:
        rec["snapshots"] = f"snapshots/{_slug(rec)}.safetensors"
        atomic_write_bytes(plan.out / rec["snapshots"], tensors_to_bytes(r.snaps))
    if r.status == "ok":  # what the task keeps of the trained model, one file per field
        if clash := sorted(r.stored.keys() & rec.keys()):
            raise ValueError(f"task {task.name!r}: stored() names fields the record already has: {clash}")
        for name, tensors in r.stored.items():
            rec[name] = f"{name}/{_slug(rec)}.safetensors"
            atomic_write_bytes(plan.out / rec[name], tensors_to_bytes(tensors))
    if plan.cfg.save_weights and r.status == "ok":  # a diverged run's weights are no one's starting point
        rec["weights"] = f"weights/{_slug(rec)}.safetensors"
        # clones: safetensors refuses tensors that share memory (tied weights)
        state = {k: v.detach().clone() for k, v in r.model.state_dict().items()}
        meta = {"arch": str(rec["arch"]), "arch_config": json.dumps(rec["arch_config"], sort_keys=True),
                "method": str(rec["method"]), "rule": str(rec["rule"]), "seed": str(rec["seed"])}  # fmt: skip
        atomic_write_bytes(plan.out / rec["weights"], tensors_to_bytes(state, meta))
    return rec
