"""Results -> summary table, plots (PNG) and a report page.

``summarize`` gives the table the CLI prints and ``summary.md`` holds: for each method, the
headline metric at the task's checkpoints and at the end, the steps and the wall seconds (init
included) to reach each threshold, as mean +- the half-width of a 95% t-interval over seeds; a
method whose init came from the cache is marked ``(cached)``. ``report.html`` is one
self-contained page: the table, every figure embedded with its caption, the command lines, the
task's settings and each method's full config.

Everything is read off the records: each carries its :class:`~initium.records.MetricSpec` (unit,
checkpoints, columns, the plots to draw), so the report knows no task, method or curve by name and
a results folder reports the same after its task has changed or gone.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file
from scipy import stats

from ._io import atomic_write_text
from .ensembles import draw_members, metrics
from .records import (
    DEFAULT_RULE,
    LOGITS,
    MetricSpec,
    PlotSpec,
    cache_hit,
    load_results,
    metric_series,
    past_ceiling,
    reference_path,
    seconds_to,
    spec_of,
    steps_to,
    value_at,
)

__all__ = ["PLOTTERS", "Table", "ensemble_table", "failures", "mean_ci", "summarize", "write_report"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (``nan`` for one value)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, math.nan
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def _fmt(values: Sequence[float | None], spec: str, total: int, metric: MetricSpec | None = None) -> str:
    """``mean ± half-width`` over the values that exist, each formatted with ``spec`` (``".1f"``).

    With ``metric`` (values of that metric), values past its ceiling (:func:`past_ceiling`) are
    only known to be past it: every one past it reads ``> ceiling`` (``< ceiling`` for an error);
    some past it read ``> m``, ``m`` the mean with those taken at the ceiling (a bound, so no interval)."""
    got = [v for v in values if v is not None]
    if not got:
        return "—"
    more = f" ({len(got)}/{total})" if len(got) < total else ""
    past = [v for v in got if metric is not None and past_ceiling(metric, v)]
    if metric is not None and metric.ceiling is not None and past:
        sign = ">" if metric.higher_is_better else "<"
        if len(past) == len(got):
            return f"{sign} {metric.ceiling:g}" + more
        bound = float(np.mean([metric.ceiling if v in past else v for v in got]))
        return f"{sign} {bound:{spec}}" + more
    mean, half = mean_ci(got)
    text = f"{mean:{spec}}" + ("" if math.isnan(half) else f" ± {half:{spec}}")
    return text + more


def _config_labels(records: list[dict[str, Any]]) -> dict[int, str]:
    """Per record (by ``id``), the task options in which the folder's runs of its task differ
    (``image=coins``), as a label prefix; empty where they all share one config."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    labels: dict[int, str] = {}
    for runs in by_task.values():
        configs = [r.get("task_config") or {} for r in runs]
        keys = sorted({k for c in configs for k in c})
        differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
        for r, c in zip(runs, configs, strict=True):
            labels[id(r)] = ",".join(f"{k}={c.get(k)}" for k in differ)
    return labels


def group(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records by label: the method spec, prefixed with the architecture spec (and the task) when
    the folder holds more than one, with the task options in which the runs differ (``image=coins``:
    two images fitted into one folder), and with the learning rule when any run is not backprop
    (``fa/fa-noise``); suffixed ``(cached)`` where every run's init was a cache hit (``(cached 2/3)``
    where some were: :func:`initium.records.cache_hit`)."""
    tasks = {r["task"] for r in records}
    archs = {(r["task"], r.get("arch_spec", r["arch"])) for r in records}
    rules = {r.get("rule", DEFAULT_RULE) for r in records}
    configs = _config_labels(records)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        prefix = (f"{r['task']}/" if len(tasks) > 1 else "") + (
            f"{r.get('arch_spec', r['arch'])}/" if len(archs) > 1 else ""
        )
        prefix += f"{configs[id(r)]}/" if configs[id(r)] else ""
        prefix += f"{r.get('rule', DEFAULT_RULE)}/" if rules != {DEFAULT_RULE} else ""
        groups[prefix + r["method"]].append(r)
    labelled = {}
    for label, runs in groups.items():
        hits = sum(cache_hit(r) for r in runs)
        mark = "" if not hits else " (cached)" if hits == len(runs) else f" (cached {hits}/{len(runs)})"
        labelled[label + mark] = runs
    return labelled


def _thresholds(records: list[dict[str, Any]]) -> list[str]:
    """Every threshold any record was run with, the easiest first."""
    higher = records[0].get("higher_is_better", True) if records else True
    return sorted({t for r in records for t in r.get("steps_to", {})}, key=float, reverse=not higher)


def _status(runs: list[dict[str, Any]]) -> str:
    """A method's runs in a word: ``ok``, or what became of those that did not finish, with their
    seeds (``diverged in training at step 2 (seed 0)``), the statuses the runner wrote."""
    failed: dict[str, list[str]] = defaultdict(list)
    for r in runs:
        if r.get("status") != "ok":
            failed[str(r.get("status"))].append(str(r.get("seed")))
    if not failed:
        return "ok"
    parts = [f"{status} (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})" for status, seeds in failed.items()]
    return "; ".join(parts[:3]) + (f"; {len(parts) - 3} more" if len(parts) > 3 else "")


def failures(records: list[dict[str, Any]]) -> list[str]:
    """One line per run that did not finish: ``label · seed S: status`` (the CLI prints them as
    warnings under the table, where a diverged run would otherwise be only a number in a cell)."""
    return [
        f"{label} · seed {r.get('seed')}: {r.get('status')}"
        for label, runs in group(records).items()
        for r in runs
        if r.get("status") != "ok"
    ]


def summarize(records: list[dict[str, Any]]) -> Table:
    """The summary table over seeds (see the module docstring). Checkpoint values and steps to
    each threshold are read off every record's metric series (every step, or the evaluation steps
    where the loss does not give the metric), so records run with other
    ``--thresholds`` or before a checkpoint was added still line up. The ``s→T`` columns are the wall
    seconds to each threshold counting the init (:func:`initium.records.seconds_to`: the init's
    time, pretraining or a cache hit's load, plus the training seconds at the first evaluation
    point reaching it), for records that carry elapsed times; metric values past the spec's
    ``ceiling`` read as a bound (``> 60``). Where a run did not finish,
    a last ``status`` column says what became of it (diverged or failed, in init or training, at
    which step); where none did, the table lists each method's status alone."""
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        if not records:
            return Table("no runs", ["method"], [])
        first = records[0]
        title = f"{first['task']} · {first.get('arch_spec', first['arch'])} · no finished runs"
        rows = [[label, f"0/{len(runs)}", _status(runs)] for label, runs in group(records).items()]
        return Table(title, ["method", "seeds", "status"], rows)
    first = ok[0]
    spec, steps = spec_of(first), min(r["steps"] for r in ok)
    metric, unit = first["metric"], f" {spec.unit}" if spec.unit else ""
    higher = first.get("higher_is_better", True)
    checkpoints = [c for c in spec.checkpoints if c < steps]
    thresholds = _thresholds(ok)
    columns = ["method", "seeds"] + [f"{metric}@{c}" for c in checkpoints] + [f"{metric}@{steps}"]
    columns += [f"{spec.step_unit}s→{t}{unit}" for t in thresholds]
    timed = [t for t in thresholds if any(seconds_to(r, float(t)) is not None for r in ok)]
    columns += [f"s→{t}{unit}" for t in timed]  # wall seconds, init included (records with elapsed times)
    columns += [name for name, _ in spec.summary_fields] + ["init+train s"]
    any_failed = len(ok) < len(records)
    if any_failed:
        columns.append("status")
    rows = []
    for label, runs in group(records).items():
        done = [r for r in runs if r.get("status") == "ok"]
        if not done:
            rows.append([label, f"0/{len(runs)}"] + ["—"] * (len(columns) - 3) + [_status(runs)])
            continue
        n = len(done)
        series = [metric_series(r) for r in done]
        series = [([k for k in at if k <= steps], vals[: sum(k <= steps for k in at)]) for at, vals in series]
        row = [label, str(n) + ("" if n == len(runs) else f" ({len(runs) - n} failed)")]
        row += [_fmt([value_at(at, v, k) for at, v in series], spec.format, n, spec) for k in [*checkpoints, steps]]
        row += [
            _fmt([steps_to(v, float(t), steps=at, higher_is_better=higher) for at, v in series], ".0f", n)
            for t in thresholds
        ]
        row += [_fmt([seconds_to(r, float(t)) for r in done], ".1f", n) for t in timed]
        row += [_fmt([r.get(name) for r in done], fmt, n) for name, fmt in spec.summary_fields]
        init, train = (float(np.mean([r["wall"][k] for r in done])) for k in ("init_s", "train_s"))
        row.append(f"{init:.1f}+{train:.1f}")
        if any_failed:
            row.append(_status(runs))
        rows.append(row)
    title = (
        f"{first['task']} · {first.get('arch_spec', first['arch'])} · {steps} {spec.step_unit}s"
        " · mean ± 95% CI over seeds"
    )
    return Table(title, columns, rows)


def _band(ax: Any, x: np.ndarray, ys: np.ndarray, label: str, log: bool = False) -> None:
    """Mean line and 95% t-band over seeds; with ``log`` both are taken of log10(y) (geometric
    mean), so the band of a positive quantity stays positive on a log axis."""
    vals = np.log10(np.maximum(ys, 1e-30)) if log else ys
    mean = vals.mean(0)
    half = stats.t.ppf(0.975, len(ys) - 1) * vals.std(0, ddof=1) / math.sqrt(len(ys)) if len(ys) > 1 else None
    back = (lambda v: 10.0**v) if log else (lambda v: v)
    (line,) = ax.plot(x, back(mean), label=label, lw=1.5)
    if half is not None:
        ax.fill_between(x, back(mean - half), back(mean + half), color=line.get_color(), alpha=0.2, lw=0)


def _stack(runs: list[dict[str, Any]], get: Any) -> np.ndarray:
    arrays = [np.asarray(get(r), dtype=float) for r in runs]
    n = min(len(a) for a in arrays)
    return np.stack([a[:n] for a in arrays])


def plot_metric(groups: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Headline metric vs step, one line per method with a 95% band over seeds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    first = next(iter(groups.values()))[0]
    metric, spec = first["metric"], spec_of(first)
    for label, runs in groups.items():
        ys = _stack(runs, lambda r: [np.nan if v is None else v for v in metric_series(r)[1]])
        at = np.asarray(metric_series(runs[0])[0][: ys.shape[1]])
        _band(ax, at, ys, label, log=spec.log_scale)
    if spec.log_scale:
        ax.set_yscale("log")
    for t in _thresholds([r for runs in groups.values() for r in runs]):
        ax.axhline(float(t), color="0.6", lw=0.8, ls=":")
    title = f"{metric} vs step (mean, 95% band over seeds)"
    if spec.cap is not None and ax.get_ylim()[1] > spec.cap:
        ax.set_ylim(top=spec.cap)  # keep the range where inits differ readable
        title += f", axis capped at {spec.cap:g}"
    ax.set(xlabel=spec.step_unit, ylabel=metric.upper() + (f" ({spec.unit})" if spec.unit else ""), title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _panels(
    groups: dict[str, list[dict[str, Any]]],
    plot: PlotSpec,
    keys: dict[str, str],
    step_unit: str,
    path: Path,
    *,
    width: float,
    height: float,
    legend_on: int,
    legend_size: int,
    sharey: bool,
) -> Path:
    """One panel per curve key (``keys``: curve key -> panel name), one line per method with a 95%
    band over seeds; a method whose runs lack a key is left out of that panel."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(keys), figsize=(width * len(keys), height), layout="constrained", squeeze=False, sharey=sharey
    )
    for ax, (key, panel) in zip(axes[0], keys.items(), strict=True):
        for label, runs in groups.items():
            if key not in runs[0]["curve"]:
                continue
            x = np.asarray(runs[0]["curve"]["step"])
            ys = _stack(runs, lambda r, k=key: [np.nan if v is None else v for v in r["curve"][k]])
            _band(ax, x[: ys.shape[1]], ys, label, log=plot.log)
        ax.set(xlabel=step_unit, title=plot.title.replace("{}", panel))
        if plot.log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both" if plot.log else "major")
    if plot.ylabel:
        axes[0][0].set_ylabel(plot.ylabel)
    axes[0][legend_on].legend(fontsize=legend_size)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _curve_keys(groups: dict[str, list[dict[str, Any]]], prefix: str) -> list[str]:
    return sorted({k for runs in groups.values() for k in runs[0]["curve"] if k.startswith(prefix)})


def plot_curves(groups: dict[str, list[dict[str, Any]]], plot: PlotSpec, step_unit: str, path: Path) -> Path | None:
    """``kind="curves"``: every curve key starting with ``plot.key`` (e.g. the frequency bands'
    ``band_low``...) vs step, one panel each, in ``plot.panels`` order; ``None`` when no run has one."""
    found = _curve_keys(groups, plot.key)
    order = [plot.key + p for p in plot.panels if plot.key + p in found]
    keys = {k: k[len(plot.key) :] for k in order + [k for k in found if k not in order]}
    if not keys:
        return None
    return _panels(groups, plot, keys, step_unit, path, width=4, height=3.6, legend_on=-1, legend_size=8, sharey=True)


def plot_layer_curves(
    groups: dict[str, list[dict[str, Any]]], plot: PlotSpec, step_unit: str, path: Path
) -> Path | None:
    """``kind="layer_curves"``: curves ``key/<layer>`` (e.g. the feedback-alignment ``wb_angle`` per
    layer) vs step, one panel per layer; ``None`` when no run has them."""
    keys = {k: k.split("/", 1)[1] for k in _curve_keys(groups, plot.key + "/")}
    if not keys:
        return None
    return _panels(
        groups, plot, keys, step_unit, path, width=3.6, height=3.4, legend_on=0, legend_size=7, sharey=False
    )  # fmt: skip


def plot_spectrum(groups: dict[str, list[dict[str, Any]]], plot: PlotSpec, step_unit: str, path: Path) -> Path | None:
    """``kind="spectrum"``: the array ``record["analysis"][key]`` (e.g. the NTK's eigenvalues after
    training, descending) vs its index, log-log, per method (geometric mean and 95% band over seeds
    with ``log``); only methods whose every run has it; ``None`` when none has."""
    import matplotlib.pyplot as plt

    with_key = {k: v for k, v in groups.items() if all(plot.key in r.get("analysis", {}) for r in v)}
    if not with_key:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for label, runs in with_key.items():
        ys = _stack(runs, lambda r: r["analysis"][plot.key])
        _band(ax, np.arange(1, ys.shape[1] + 1), ys, label, log=plot.log)
    ax.set(xscale="log", yscale="log", xlabel="index", ylabel=plot.ylabel or plot.key, title=plot.title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_severity(groups: dict[str, list[dict[str, Any]]], plot: PlotSpec, step_unit: str, path: Path) -> Path | None:
    """``kind="severity"``: ``record["analysis"][key]`` = ``{measure: {condition: [value at severity
    0, 1, ...]}}``; one row per measure, one panel per condition and a last one for their mean,
    one line per method with a 95% band over seeds; only methods whose every run has it."""
    import matplotlib.pyplot as plt

    with_key = {k: v for k, v in groups.items() if all(plot.key in r.get("analysis", {}) for r in v)}
    if not with_key:
        return None
    first = next(iter(with_key.values()))[0]["analysis"][plot.key]
    measures = list(first)
    conditions = sorted({c for m in measures for c in first[m]})
    panels = [*conditions, "mean"]
    fig, axes = plt.subplots(
        len(measures), len(panels), figsize=(3.2 * len(panels), 2.8 * len(measures)), layout="constrained",
        squeeze=False, sharey="row",
    )  # fmt: skip
    for row, measure in zip(axes, measures, strict=True):
        for ax, panel in zip(row, panels, strict=True):
            for label, runs in with_key.items():
                per = [r["analysis"][plot.key].get(measure, {}) for r in runs]
                if panel == "mean":
                    ys = np.stack([np.mean([p[c] for c in conditions], 0) for p in per])
                elif all(panel in p for p in per):
                    ys = _stack(per, lambda q, c=panel: q[c])
                else:
                    continue
                _band(ax, np.arange(ys.shape[1]), ys, label, log=plot.log)
            ax.set(xlabel="severity", title=plot.title.replace("{}", f"{measure} · {panel}"))
            ax.grid(alpha=0.3)
        row[0].set_ylabel(plot.ylabel.replace("{}", measure) or measure)
    axes[0][-1].legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


PlotFn = Callable[[dict[str, list[dict[str, Any]]], PlotSpec, str, Path], Path | None]
PLOTTERS: dict[str, PlotFn] = {
    "curves": plot_curves, "layer_curves": plot_layer_curves, "spectrum": plot_spectrum, "severity": plot_severity,
}  # fmt: skip
"""The generic plot function of each :data:`initium.records.PLOT_KINDS` kind: ``(groups, plot,
step unit, path) -> path``, or ``None`` when no run has what the plot reads."""


def _declared_plots(records: list[dict[str, Any]]) -> list[PlotSpec]:
    """Every plot the records declare, in order, once per file name (the first declaration wins)."""
    plots: dict[str, PlotSpec] = {}
    for r in records:
        for p in spec_of(r).plots:
            plots.setdefault(p.name, p)
    return list(plots.values())


def _shown_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose pictures the report shows for a method: its lowest seed (seed 0 by default)."""
    return min(runs, key=lambda r: r.get("seed", 0))


def plot_reconstructions(groups: dict[str, list[dict[str, Any]]], out: Path, path: Path) -> Path | None:
    """Predictions of each method's lowest seed (:func:`_shown_run`) at the snapshot steps, beside
    that run's target."""
    import matplotlib.pyplot as plt

    shown = {label: _shown_run(runs) for label, runs in groups.items()}
    snaps = {label: load_file(out / r["snapshots"]) for label, r in shown.items() if "snapshots" in r}
    if not snaps:
        return None
    steps = sorted({int(k[5:]) for s in snaps.values() for k in s}, key=int)
    refs = {label: reference_path(out, shown[label]) for label in snaps}
    cols = len(steps) + any(ref is not None for ref in refs.values())
    fig, axes = plt.subplots(
        len(snaps), cols, figsize=(2.2 * cols, 2.3 * len(snaps)), layout="constrained", squeeze=False
    )
    for row, (label, snap) in zip(axes, snaps.items(), strict=True):
        images = [(f"step {s}", snap.get(f"step_{s}")) for s in steps]
        if (ref := refs[label]) is not None:
            images.append(("target", load_file(ref)["image"]))
        for ax, (title, img) in zip(row, images, strict=False):
            ax.set_axis_off()
            if img is not None:
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
                ax.set_title(title, fontsize=8)
        for ax in row[len(images) :]:
            ax.set_axis_off()
        name = f"{label}\nseed {shown[label].get('seed')}"
        row[0].text(-0.08, 0.5, name, transform=row[0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


ENSEMBLE_METRICS = ("acc", "nll", "ece", "brier", "disagreement")


def _logit_sets(out: Path, runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The stored logits (:data:`initium.records.LOGITS`) of the runs that have a readable file with
    the same labels as the first, and the names of the test sets every one of them holds."""
    import torch
    from safetensors.torch import load_file as load_tensors

    found, labels = [], None
    for r in runs:
        try:
            data = load_tensors(out / r[LOGITS])
        except (OSError, ValueError, RuntimeError) as exc:  # a missing or damaged file: that run sits out
            log.warning("not using %s in ensembles: %s", r[LOGITS], exc)
            continue
        if labels is None:
            labels = data.get("labels")
        if labels is None or not torch.equal(data.get("labels", torch.empty(0)), labels):
            log.warning("not using %s in ensembles: its labels differ from the other runs' (another split?)", r[LOGITS])
            continue
        found.append(data)
    names = sorted(set.intersection(*(set(d) - {"labels"} for d in found))) if found else []
    return found, names


def _severity(name: str) -> int:
    """``clean`` -> 0, ``<condition>@<severity>`` -> severity."""
    return int(name.rsplit("@", 1)[1]) if "@" in name else 0


def ensemble_results(
    groups: dict[str, list[dict[str, Any]]], out: Path, *, k: int = 5, draws: int = 10, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Ensembles of each method's seeds from their stored logits: members drawn without replacement
    (:func:`initium.ensembles.draw_members`: size ``min(k, seeds)``, ``draws`` seeded draws), scored
    on every test set (:func:`initium.ensembles.metrics`). Per method: ``{"k", "draws", "by_severity":
    {severity: {metric: [value per draw]}}}``, where a severity's value is the mean over the
    conditions (corruptions) at that severity, severity 0 the clean set. Methods without logits are
    left out."""
    import torch

    results: dict[str, dict[str, Any]] = {}
    for label, runs in groups.items():
        with_logits = [r for r in runs if isinstance(r.get(LOGITS), str)]
        data, names = _logit_sets(out, with_logits)
        if not data or not names:
            continue
        y = data[0]["labels"].long()
        members = draw_members(len(data), k, draws, seed)
        by_sev: dict[int, dict[str, list[float]]] = {}
        for draw in members:
            per_sev: dict[int, list[dict[str, float]]] = defaultdict(list)
            for name in names:
                stack = torch.stack([data[m][name] for m in draw])
                per_sev[_severity(name)].append(metrics(stack, y))
            for sev, scores in per_sev.items():
                slot = by_sev.setdefault(sev, {m: [] for m in ENSEMBLE_METRICS})
                for m in ENSEMBLE_METRICS:
                    slot[m].append(float(np.mean([sc[m] for sc in scores])))
        conditions = len({n.rsplit("@", 1)[0] for n in names if "@" in n})
        results[label] = {"k": len(members[0]), "draws": len(members), "seeds": len(data),
                          "conditions": conditions, "by_severity": dict(sorted(by_sev.items()))}  # fmt: skip
    return results


def ensemble_table(results: dict[str, dict[str, Any]], severities: Collection[int] | None = None) -> Table:
    """One row per method and test set (clean; each severity, mean over the corruptions): the
    ensembles' metrics as mean ± 95% interval over draws. ``severities``: the test sets to show
    (0: clean; ``None``: all)."""
    rows = []
    for label, res in results.items():
        for sev, scores in res["by_severity"].items():
            if severities is not None and sev not in severities:
                continue
            where = "clean" if sev == 0 else f"severity {sev} (mean of {res['conditions']})"
            row = [label, f"{res['k']} of {res['seeds']}", str(res["draws"]), where]
            rows.append(row + [_fmt(scores[m], ".3f", len(scores[m])) for m in ENSEMBLE_METRICS])
    return Table(
        "ensembles (mean softmax of k seeds' stored test logits) · mean ± 95% CI over draws",
        ["method", "k", "draws", "test set", *ENSEMBLE_METRICS], rows,
    )  # fmt: skip


def plot_ensemble_severity(results: dict[str, dict[str, Any]], path: Path) -> Path:
    """Ensemble accuracy and ECE against corruption severity (mean over corruptions), one line per
    method with a 95% band over draws."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for ax, metric in zip(axes, ("acc", "ece"), strict=True):
        for label, res in results.items():
            sevs = list(res["by_severity"])
            ys = np.stack([res["by_severity"][s][metric] for s in sevs], 1)  # (draws, severities)
            _band(ax, np.asarray(sevs), ys, f"{label} (k={res['k']})")
        ax.set(xlabel="corruption severity (0: clean)", ylabel=f"ensemble {metric}", title=f"ensemble {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 12px;color:#222}"
    "table{font-size:14px;border-collapse:collapse}.scroll{overflow-x:auto}"
    "td,th{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}th{white-space:normal}"
    "td:first-child,th:first-child,td.l{text-align:left}td.l{white-space:normal;overflow-wrap:anywhere}"
    "img{max-width:100%}figure{margin:24px 0}figcaption{font-size:14px;color:#444;max-width:900px}"
    "pre{background:#f4f4f4;padding:6px 10px;white-space:pre-wrap;word-break:break-all;font-size:13px}"
    ".note{font-size:14px;color:#444}.note li{margin:2px 0}"
)


def _png_uri(path: Path) -> str:
    """The picture as a ``data:`` URI: the page carries its plots and stays whole when moved alone."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _metric_caption(spec: MetricSpec, thresholds: list[str], seeds: int) -> str:
    """What the headline metric's plot shows, from the record's spec."""
    name = spec.name + (f" ({spec.unit})" if spec.unit else "")
    text = (
        f"{name} against the {spec.step_unit}, one line per method: the mean over its seeds (up to {seeds}),"
        f" shaded: the 95% t-interval. {'Higher' if spec.higher_is_better else 'Lower'} is better."
    )
    if spec.caption:
        text += f" {spec.caption}"
    if thresholds:
        unit = f" {spec.unit}" if spec.unit else ""
        text += f" Dotted lines: the thresholds ({', '.join(thresholds)}{unit}) of the table's → columns."
    if spec.log_scale:
        text += " Log axis."
    if spec.cap is not None:
        text += f" The axis stops at {spec.cap:g} at most: past it the inits no longer differ."
    return text


_KIND_CAPTIONS = {
    "curves": "The curves {key}* against the {unit}, one panel each, one line per method (mean over seeds, shaded:"
    " 95% t-interval).",
    "layer_curves": "The curve {key} of each layer against the {unit}, one panel per layer, one line per method"
    " (mean over seeds, shaded: 95% t-interval).",
    "spectrum": "{key} after training against its index, log-log, one line per method (geometric mean over seeds,"
    " shaded: 95% t-interval).",
    "severity": "{key}: each measure (a row) against corruption severity (0: clean), one panel per condition and"
    " their mean, one line per method (mean over seeds, shaded: 95% t-interval).",
}


def _plot_caption(plot: PlotSpec, step_unit: str) -> str:
    return plot.caption or _KIND_CAPTIONS[plot.kind].format(key=plot.key, unit=step_unit)


def _reconstructions_caption(groups: dict[str, list[dict[str, Any]]]) -> str:
    seeds = sorted({_shown_run(runs).get("seed", 0) for runs in groups.values()})
    which = f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(str(s) for s in seeds)
    return (
        f"What one run of each method predicts at the training inputs ({which}: each method's lowest seed;"
        " the table and the curves average all seeds), at the snapshot steps, with the target on the right."
    )


def _table_notes(spec: MetricSpec, records: list[dict[str, Any]]) -> list[str]:
    """How to read the summary table's columns (what the runner measured, in the spec's words)."""
    unit, steps = (f" {spec.unit}" if spec.unit else ""), spec.step_unit
    notes = [
        f"{spec.name}@k: the {spec.name} at {steps} k; mean ± the half-width of the 95% t-interval over seeds,"
        " with (m/n) where only m of n seeds have a value.",
        f"{steps}s→T: the first {steps} at which the {spec.name} reaches T{unit}.",
        "s→T: wall seconds from the start of the init to the first evaluation point at which the metric reaches"
        f" T{unit}: the init's time (pretraining, or loading it from the cache on a hit) plus the training seconds"
        " to that point (the evaluations' own time left out).",
        "init+train s: mean wall seconds of the init and of the training (evaluations included).",
    ]
    if any(cache_hit(r) for r in records):
        notes.append(
            "(cached): the method's init was loaded from the init cache, computed by an earlier run with the same"
            " architecture, inputs, seed and method config; its init time is the load's."
        )
    if spec.ceiling is not None:
        sign = ">" if spec.higher_is_better else "<"
        notes.append(
            f"{sign} {spec.ceiling:g}{unit}: past its ceiling the metric measures round-off, not fit; a mean with"
            f" some seeds past it reads {sign} (the mean with those seeds taken at the ceiling)."
        )
    return notes


def _setting(records: list[dict[str, Any]]) -> str:
    """The page's "how these results were made": the command lines and the task's settings."""
    esc = html.escape
    commands = list(dict.fromkeys(str(r["command"]) for r in records if r.get("command")))
    parts = ["<h2>How these results were made</h2>"]
    if commands:
        parts.append("<p>Command line" + ("s" if len(commands) > 1 else "") + ":</p>")
        parts += [f"<pre>{esc(c)}</pre>" for c in commands]
    else:
        parts.append("<p>The records predate recorded command lines.</p>")
    settings: dict[str, dict[str, Any]] = {}
    for r in records:
        setting = {
            "task": r["task"], "task config": r.get("task_config"), "architecture": r.get("arch_spec", r["arch"]),
            "architecture config": r.get("arch_config"), "steps": f"{r.get('steps')} {r.get('step_unit', 'step')}s",
            "learning rate": r.get("lr"), "evaluated every": r.get("eval_every") or "steps / 100",
            "precision": r.get("precision"), "device": r.get("env", {}).get("device_name") or r.get("device"),
        }  # fmt: skip
        settings.setdefault(json.dumps(setting, sort_keys=True, default=str), setting)
    columns = list(settings.values())  # one column per setting the folder's runs were made with

    def cell(v: Any) -> str:
        return f"<td class=l><code>{esc(v if isinstance(v, str) else json.dumps(v, default=str))}</code></td>"

    rows = "".join(f"<tr><td>{esc(k)}</td>{''.join(cell(c[k]) for c in columns)}</tr>" for k in columns[0])
    parts.append(f"<table>{rows}</table>")
    return "".join(parts)


def _methods(groups: dict[str, list[dict[str, Any]]]) -> str:
    """Each method's spec, seeds, init time, cache hits and full config (its ``describe()``)."""
    esc = html.escape
    parts = ["<h2>Methods</h2>"]
    for label, runs in groups.items():
        r = runs[0]
        seeds = ", ".join(str(x.get("seed")) for x in runs)
        hits = sum(cache_hit(x) for x in runs)
        init = float(np.mean([x["wall"]["init_s"] for x in runs if "wall" in x] or [math.nan]))
        facts = f"seeds {seeds}; learning rule {r.get('rule', DEFAULT_RULE)}; init {init:.2f} s on average"
        facts += f"; init loaded from the cache in {hits} of {len(runs)} runs" if hits else ""
        facts += f"; the config of seed {r.get('seed')}'s run (a method draws from its run's seed)"
        configs = r.get("method_config")  # one dict per part of the spec (rwf+noise: two)
        configs = configs if isinstance(configs, list) else [configs]
        config = "\n".join(json.dumps(c, default=str) for c in configs)
        parts.append(
            f"<h3>{esc(label)}</h3><p class=note><code>{esc(str(r['method']))}</code>: {esc(facts)}</p>"
            f"<pre>{esc(config)}</pre>"
        )
    return "".join(parts)


def write_report(out: str | Path, *, ensemble_size: int = 5, ensemble_draws: int = 10) -> dict[str, Path]:
    """Write ``summary.md``, ``plots/*.png`` and ``report.html`` for the results in ``out``; where
    the records keep test logits, also the ensembles' table (:func:`ensemble_results`, members of
    ``ensemble_size``, ``ensemble_draws`` draws) and their severity plot.

    ``report.html`` is one self-contained page (its plots embedded as ``data:`` URIs): the command
    lines that made the results, the task, architecture and training settings, every method's full
    config, the summary table with notes on its columns, and each figure with a caption saying what
    it shows (the metric's and the declared plots' from the records' specs)."""
    if ensemble_size < 1 or ensemble_draws < 1:
        raise ValueError(f"ensemble size and draws must be >= 1, got {ensemble_size} and {ensemble_draws}")
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    records = load_results(out)
    if not records:
        raise FileNotFoundError(f"no results in {str(out)!r}: run `initium run TASK --out {out}` first")
    table = summarize(records)
    groups = {k: [r for r in v if r.get("status") == "ok"] for k, v in group(records).items()}
    groups = {k: v for k, v in groups.items() if v}
    (out / "plots").mkdir(exist_ok=True)
    files: dict[str, Path] = {}
    captions: dict[str, str] = {}
    ok = [r for runs in groups.values() for r in runs]
    spec = spec_of(ok[0]) if ok else None
    if groups and spec is not None:
        files["metric"] = plot_metric(groups, out / "plots" / f"{records[0]['metric']}.png")
        seeds = max(len(runs) for runs in groups.values())
        captions["metric"] = _metric_caption(spec, _thresholds(ok), seeds)
        unit = spec.step_unit
        taken = {"metric", "reconstructions", "summary", "html", records[0]["metric"]}
        for plot in _declared_plots(ok):
            if plot.name in taken:  # its file would overwrite another
                log.warning("not drawing plot %r: the report's own %r has that name", plot.key, plot.name)
                continue
            if (made := PLOTTERS[plot.kind](groups, plot, unit, out / "plots" / f"{plot.name}.png")) is not None:
                files[plot.name] = made
                captions[plot.name] = _plot_caption(plot, unit)
        if (made := plot_reconstructions(groups, out, out / "plots" / "reconstructions.png")) is not None:
            files["reconstructions"] = made
            captions["reconstructions"] = _reconstructions_caption(groups)
    tables = [table]
    if groups and (ens := ensemble_results(groups, out, k=ensemble_size, draws=ensemble_draws)):
        tables.append(ensemble_table(ens))
        if any(len(res["by_severity"]) > 1 for res in ens.values()):
            name = "ensemble_severity" if "ensemble_severity" not in files else "ensembles_vs_severity"
            files[name] = plot_ensemble_severity(ens, out / "plots" / f"{name}.png")
            captions[name] = (
                "Ensemble accuracy and expected calibration error (ECE) against corruption severity (0: the clean"
                " test set; above: the mean over the corrupted sets), one line per method: the mean over the draws"
                " of ensemble members, shaded: 95% t-interval. Higher accuracy and lower ECE are better."
            )
    env = records[-1].get("env", {})
    env_line = ", ".join(f"{k} {v}" for k, v in env.items())
    commands = list(dict.fromkeys(str(r["command"]) for r in records if r.get("command")))
    images = "\n".join(f"![{k}](plots/{p.name})\n\n{captions.get(k, '')}\n" for k, p in files.items())
    md = f"# {table.title}\n\n" + "".join(f"    {c}\n" for c in commands) + ("\n" if commands else "")
    md += f"{table.markdown()}\n\n"
    md += "".join(f"## {t.title}\n\n{t.markdown()}\n\n" for t in tables[1:])
    md += f"{images}\n\nEnvironment: {env_line}\n"
    files["summary"] = atomic_write_text(out / "summary.md", md)
    esc = html.escape
    html_tables = ""
    for t in tables:
        cells = "".join(f"<th>{esc(c)}</th>" for c in t.columns)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in t.rows)
        head = "" if t is table else f"<h2>{esc(t.title)}</h2>"
        html_tables += f"{head}<div class=scroll><table><tr>{cells}</tr>{body}</table></div>"
        if t is table and spec is not None:
            html_tables += "<ul class=note>" + "".join(f"<li>{esc(n)}</li>" for n in _table_notes(spec, ok)) + "</ul>"
    figs = "".join(
        f'<figure><img src="{_png_uri(p)}" alt="{esc(k)}"><figcaption><b>{esc(k)}.</b> '
        f"{esc(captions.get(k, ''))}</figcaption></figure>"
        for k, p in files.items()
        if p.suffix == ".png"
    )
    page = (
        f"<!doctype html><meta charset=utf-8><title>initium report</title><style>{_CSS}</style>"
        f"<h1>{esc(table.title)}</h1>{_setting(records)}<h2>Results</h2>{html_tables}{figs}"
        f"{_methods(group(records))}<h2>Environment</h2><p class=note>{esc(env_line)}</p>"
    )
    files["html"] = atomic_write_text(out / "report.html", page)
    return files
