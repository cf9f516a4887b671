"""What a results record is and how to read it, without any task.

A run's record carries its own description (:class:`MetricSpec`: the headline metric, its unit,
thresholds, summary columns and the plots to draw), so that the report reads a results folder from
the records alone. A folder stays readable when a task is renamed, changed or removed, and the
report never has to know a task, a method or a learning rule by name.

This module imports nothing from the rest of initium, so the report can depend on it alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_RULE", "ELAPSED", "FINISHED_FIELDS", "LOGITS", "PLOT_KINDS", "RECORD_FIELDS", "RESULTS", "STEP_UNITS",
    "MetricSpec", "PlotSpec", "cache_hit", "identity", "latest", "load_results", "metric_series", "past_ceiling",
    "read_records", "reference_path", "seconds_to", "shard_files", "shard_path", "spec_of", "steps_to", "value_at",
]  # fmt: skip

log = logging.getLogger(__name__)
RESULTS = "results.jsonl"
DEFAULT_RULE = "bp"
"""The learning rule of a run that names none, and of records from before rules existed: backprop."""
SHARD_GLOB = "results.rank*.jsonl"
_SHARD_RE = re.compile(r"results\.rank(\d+)\.jsonl")

PLOT_KINDS = ("curves", "layer_curves", "spectrum", "severity")
"""What a :class:`PlotSpec` can draw (the report has one generic plot function per kind):

- ``curves``: every curve key that starts with ``key`` (``"band_"``: ``band_low``, ...), one panel each;
- ``layer_curves``: the curve keys ``key/<layer>`` (``"wb_angle"``: ``wb_angle/net.0``, ...), one panel per layer;
- ``spectrum``: the array ``record["analysis"][key]`` against its index, log-log;
- ``severity``: ``record["analysis"][key]`` is ``{measure: {condition: [value at severity 0, 1, ...]}}``
  (e.g. ``{"acc": {"contrast": [...]}, "ece": {...}}``): one row of panels per measure, one panel per
  condition plus their mean, value against severity.
"""

LOGITS = "logits"
"""The record field naming a run's stored test logits: a safetensors file (path relative to the
results folder) with ``labels`` ``(N,)`` int64 and one ``(N, K)`` float32 logits tensor per test
set: ``clean``, and ``<condition>@<severity>`` for a shifted set (``contrast@3``). The report forms
ensembles of a method's seeds from them (:mod:`initium.ensembles`)."""

STEP_UNITS = ("step", "epoch")


@dataclass(frozen=True)
class PlotSpec:
    """One figure of the report beyond the headline metric: a generic ``kind`` (:data:`PLOT_KINDS`)
    and the record key it reads.

    ``name`` is the file's stem (``plots/<name>.png``; default: ``key`` without a trailing ``_``).
    ``title`` is each panel's title, with ``{}`` standing for the panel's name (the layer, or what
    follows the prefix). ``log`` puts the values on a log axis (mean and band of log10). ``panels``
    fixes the panels' order for ``curves`` (their suffixes, e.g. ``("low", "mid", "high")``); by
    default they are sorted, since ``results.jsonl`` stores curve keys sorted. ``caption`` is what
    the report prints under the figure: what is plotted and what to read from it (empty: a generic
    line from the kind).
    """

    kind: str
    key: str
    name: str = ""
    title: str = ""
    ylabel: str = ""
    log: bool = False
    panels: tuple[str, ...] = ()
    caption: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PLOT_KINDS:
            raise ValueError(f"PlotSpec kind must be one of {', '.join(PLOT_KINDS)}; got {self.kind!r}")
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"PlotSpec key must be a non-empty record key, got {self.key!r}")
        if not self.name:
            object.__setattr__(self, "name", self.key.rstrip("_/") or self.key)
        if not self.title:
            object.__setattr__(self, "title", f"{self.key} · {{}}" if self.kind != "spectrum" else self.key)
        object.__setattr__(self, "panels", tuple(self.panels))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlotSpec:
        """The inverse of :func:`dataclasses.asdict` after a JSON round trip (lists back to tuples);
        keys this version does not know are ignored, so a newer record still reports."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class MetricSpec:
    """A task's headline metric and how the report shows it; every record carries one
    (``record["metric_spec"]``).

    ``name`` is a key of the task's evaluation curve; ``higher_is_better=False`` for errors ("steps
    to" then means "down to"). ``log_scale`` plots it on a log axis (errors spanning decades);
    ``format`` prints it in the summary table; ``thresholds`` are the "steps to reach" columns and
    ``checkpoints`` the "metric at step" columns; ``summary_fields`` are more columns, ``(record
    field, format)``; ``step_unit`` is what one step of the curves is (``"epoch"`` for minibatch
    tasks); ``cap`` caps the plots' axis (where past it the inits no longer differ); ``ceiling`` is
    where the metric stops meaning anything (a PSNR past 60 dB is float32 round-off on a picture
    stored in 8 bits): the tables show a value past it as ``> 60`` (``< ceiling`` for an error);
    ``caption`` is a sentence saying what the metric measures, under the report's metric plot;
    ``plots`` are the task's figures beyond the metric.
    """

    name: str
    unit: str = ""
    higher_is_better: bool = True
    log_scale: bool = False
    format: str = ".1f"
    thresholds: tuple[float, ...] = ()
    checkpoints: tuple[int, ...] = ()
    summary_fields: tuple[tuple[str, str], ...] = ()
    step_unit: str = "step"
    cap: float | None = None
    ceiling: float | None = None
    caption: str = ""
    plots: tuple[PlotSpec, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"MetricSpec name must be the metric's key, e.g. 'psnr'; got {self.name!r}")
        if self.step_unit not in STEP_UNITS:
            raise ValueError(f"MetricSpec step_unit must be one of {', '.join(STEP_UNITS)}; got {self.step_unit!r}")
        try:
            format(1.0, self.format)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"MetricSpec format must be a float format such as '.1f'; got {self.format!r}") from exc
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "checkpoints", tuple(int(c) for c in self.checkpoints))
        if self.ceiling is not None and not math.isfinite(self.ceiling):
            raise ValueError(f"MetricSpec ceiling must be a finite number or None, got {self.ceiling!r}")
        object.__setattr__(self, "summary_fields", tuple((str(k), str(f)) for k, f in self.summary_fields))
        plots = tuple(p if isinstance(p, PlotSpec) else PlotSpec.from_dict(p) for p in self.plots)
        if len({p.name for p in plots}) < len(plots):
            raise ValueError(f"MetricSpec plots must have distinct names (their files); got {[p.name for p in plots]}")
        object.__setattr__(self, "plots", plots)

    def for_record(
        self, *, thresholds: Sequence[float] | None = None, extra_plots: Sequence[PlotSpec] = ()
    ) -> MetricSpec:
        """The description one run's record carries: the thresholds it was actually run with
        (``--thresholds``; ``None``: the task's), and the task's plots followed by ``extra_plots``
        (those that something other than the task adds to the run, e.g. its learning rule; a name
        already declared is kept once)."""
        known = {p.name for p in self.plots}
        plots = self.plots + tuple(p for p in extra_plots if p.name not in known)
        return dataclasses.replace(self, thresholds=self.thresholds if thresholds is None else thresholds, plots=plots)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists once dumped); :meth:`from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricSpec:
        """The inverse of :meth:`to_dict`, after a JSON round trip; keys this version does not
        know are ignored, so a record from a newer initium still reports."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def spec_of(rec: Mapping[str, Any]) -> MetricSpec:
    """The record's :class:`MetricSpec`; for a record written before records carried one, the
    defaults its own fields give (``metric``, ``higher_is_better``, ``step_unit``, the ``at_step``
    and ``steps_to`` keys), with no unit, no extra columns and no extra plots, and three
    significant digits (``.3g``), which read right for a PSNR and an error of 1e-3 alike."""
    if rec.get("metric_spec") is not None:
        return MetricSpec.from_dict(rec["metric_spec"])
    return MetricSpec(
        name=rec["metric"],
        higher_is_better=rec.get("higher_is_better", True),
        format=".3g",
        step_unit=rec.get("step_unit", "step"),
        thresholds=tuple(sorted(float(t) for t in rec.get("steps_to", {}))),
        checkpoints=tuple(sorted(int(c) for c in rec.get("at_step", {}) if c != "final")),
    )


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


def past_ceiling(spec: MetricSpec, value: float) -> bool:
    """Whether ``value`` lies beyond the metric's :attr:`MetricSpec.ceiling` (above it, or below it
    for an error), where differences are no longer measured but round-off."""
    if spec.ceiling is None:
        return False
    return value > spec.ceiling if spec.higher_is_better else value < spec.ceiling


ELAPSED = "elapsed_s"
"""The curve key of the training seconds at each evaluation point (wall time since training
started, less the time the evaluations took; a stacked group's time shared out over its runs)."""


def cache_hit(rec: Mapping[str, Any]) -> bool:
    """Whether the run's init was loaded from the init cache: a method reports ``{"cache": "hit"}``
    in its ``info`` (``method_info``, nested per part for a composite such as ``rwf+noise``)."""

    def hit(info: Any) -> bool:
        if not isinstance(info, Mapping):
            return False
        return info.get("cache") == "hit" or any(hit(v) for v in info.values())

    return hit(rec.get("method_info"))


def seconds_to(rec: Mapping[str, Any], threshold: float) -> float | None:
    """Wall seconds from the start of the run's init to the first evaluation point whose metric
    reaches ``threshold``: the init's time (pretraining, or the cache load of a hit) plus the
    training seconds at that point (:data:`ELAPSED`). ``None`` when it is never reached at an
    evaluation point, or the record predates the elapsed times."""
    curve = rec.get("curve", {})
    elapsed, values = curve.get(ELAPSED), curve.get(rec.get("metric", ""))
    if elapsed is None or values is None:
        return None
    better = rec.get("higher_is_better", True)
    k = steps_to(values, threshold, steps=range(len(values)), higher_is_better=better)
    if k is None or elapsed[k] is None:
        return None
    return float(rec.get("wall", {}).get("init_s", 0.0)) + float(elapsed[k])


def reference_path(out: Path, rec: Mapping[str, Any]) -> Path | None:
    """The picture a run's snapshots are compared with (``record["reference"]``, relative to the
    results folder ``out``: one per task config, so two images can share a folder), else the
    folder's single ``reference.safetensors`` of records from before; ``None`` when there is none."""
    ref = rec.get("reference")
    path = out / ref if isinstance(ref, str) else out / "reference.safetensors"
    return path if path.exists() else None


def metric_series(rec: Mapping[str, Any]) -> tuple[list[int], list[float | None]]:
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


def identity(rec: dict[str, Any]) -> str:
    """What makes two runs the same run (for resuming, and to keep one record per run)."""
    keys = ("task", "task_config", "arch", "arch_config", "method", "seed", "steps", "lr", "eval_every", "compile")
    ident = {k: rec.get(k) for k in keys}
    # records from before --precision: fp32 matmuls (on CUDA, convolutions then took cuDNN's TF32 default)
    ident["precision"] = rec.get("precision", "fp32")
    ident["rule"] = rec.get("rule", DEFAULT_RULE)  # records from before learning rules were backprop
    device = rec.get("device") or rec.get("env", {}).get("device")  # older records: in env only
    # the kind of device, not which one: a run resumed on another GPU (another rank) is the same run
    ident["device"] = device.split(":")[0] if isinstance(device, str) else device
    return json.dumps(ident, sort_keys=True, default=str)


def shard_path(out: Path, rank: int) -> Path:
    """Where rank ``rank`` of a sharded (torchrun) sweep appends its records."""
    return out / f"results.rank{rank}.jsonl"


def shard_files(out: Path) -> list[Path]:
    """The shard files in ``out``, by rank."""
    found = [(int(m[1]), p) for p in out.glob(SHARD_GLOB) if (m := _SHARD_RE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


RECORD_FIELDS: dict[str, type] = {
    "task": str,
    "arch": str,
    "method": str,
    "seed": int,
    "status": str,
}
"""What every record the runner writes has (a finished or a failed run): the run's identity and
what the report groups by."""
FINISHED_FIELDS: dict[str, type] = {"steps": int, "metric": str, "curve": dict, "wall": dict}
"""What a finished run's record (``status == "ok"``) has besides: what the summary reads."""


def _not_a_record(rec: Any) -> str | None:
    """Why a parsed line is not a run record (``None``: it is one)."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    fields = RECORD_FIELDS | (FINISHED_FIELDS if rec.get("status") == "ok" else {})
    missing = [k for k in fields if k not in rec]
    if missing:
        return f"no {', '.join(missing)}"
    wrong = [k for k, kind in fields.items() if not isinstance(rec[k], kind) or isinstance(rec[k], bool)]
    return f"{', '.join(wrong)} of the wrong type" if wrong else None


def read_records(path: Path) -> list[dict[str, Any]]:
    """One file's records in file order; a torn line (a writer killed mid-line) and lines that
    parse but are not run records (``[1, 2]``, ``{}``, an object without the fields every record
    has: :data:`RECORD_FIELDS`, :data:`FINISHED_FIELDS`) are skipped with a warning, so that none
    can stop a report or make a run look finished."""
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            log.warning("skipping an unreadable line (%s:%d)", path, n)
            continue
        if (why := _not_a_record(rec)) is not None:
            log.warning("skipping a line that is not a run record (%s:%d: %s)", path, n, why)
            continue
        records.append(rec)
    return records


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per run identity, the last one (a retried run replaces its failure), in the
    order of those last records: what rewriting the file after every run used to leave."""
    last: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for rec in records:
        key = identity(rec)
        last.pop(key, None)
        last[key] = rec
    return list(last.values())


def load_results(out: str | Path) -> list[dict[str, Any]]:
    """The records of ``out``: ``results.jsonl`` and, after it, any ``results.rank{R}.jsonl``
    shards of a sharded sweep still running or killed before its merge, one record per run
    identity (the later wins). Unreadable lines (from a crash) are skipped with a warning."""
    out = Path(out)
    records = read_records(out / RESULTS)
    for path in shard_files(out):
        records += read_records(path)
    return latest(records)
