"""Results -> summary table, plots (PNG) and a report page.

``summarize`` gives the table the CLI prints and ``summary.md`` holds: for each method, the
headline metric at the task's checkpoints and at the end, and the steps to reach each threshold,
as mean +- the half-width of a 95% t-interval over seeds.

Everything is read off the records: each carries its :class:`~initium.records.MetricSpec` (unit,
checkpoints, columns, the plots to draw), so the report knows no task, method or curve by name and
a results folder reports the same after its task has changed or gone.
"""

from __future__ import annotations

import html
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file
from scipy import stats

from ._io import atomic_write_text
from .ensembles import draw_members, metrics
from .records import DEFAULT_RULE, LOGITS, PlotSpec, load_results, metric_series, spec_of, steps_to, value_at

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


def _fmt(values: Sequence[float | None], spec: str, total: int) -> str:
    """``mean ± half-width`` over the values that exist, each formatted with ``spec`` (``".1f"``)."""
    got = [v for v in values if v is not None]
    if not got:
        return "—"
    mean, half = mean_ci(got)
    text = f"{mean:{spec}}" + ("" if math.isnan(half) else f" ± {half:{spec}}")
    return text + (f" ({len(got)}/{total})" if len(got) < total else "")


def group(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records by label: the method spec, prefixed with the architecture spec (and the task) when
    the folder holds more than one, and with the learning rule when any run is not backprop
    (``fa/fa-noise``)."""
    tasks = {r["task"] for r in records}
    archs = {(r["task"], r.get("arch_spec", r["arch"])) for r in records}
    rules = {r.get("rule", DEFAULT_RULE) for r in records}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        prefix = (f"{r['task']}/" if len(tasks) > 1 else "") + (
            f"{r.get('arch_spec', r['arch'])}/" if len(archs) > 1 else ""
        )
        prefix += f"{r.get('rule', DEFAULT_RULE)}/" if rules != {DEFAULT_RULE} else ""
        groups[prefix + r["method"]].append(r)
    return dict(groups)


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
    ``--thresholds`` or before a checkpoint was added still line up. Where a run did not finish,
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
        row += [_fmt([value_at(at, v, k) for at, v in series], spec.format, n) for k in [*checkpoints, steps]]
        row += [
            _fmt([steps_to(v, float(t), steps=at, higher_is_better=higher) for at, v in series], ".0f", n)
            for t in thresholds
        ]
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


def plot_reconstructions(groups: dict[str, list[dict[str, Any]]], out: Path, path: Path) -> Path | None:
    """Predictions of each method's first seed at the snapshot steps, beside the target."""
    import matplotlib.pyplot as plt

    snaps = {label: load_file(out / runs[0]["snapshots"]) for label, runs in groups.items() if "snapshots" in runs[0]}
    if not snaps:
        return None
    steps = sorted({int(k[5:]) for s in snaps.values() for k in s}, key=int)
    ref = out / "reference.safetensors"
    cols = len(steps) + ref.exists()
    fig, axes = plt.subplots(
        len(snaps), cols, figsize=(2.2 * cols, 2.3 * len(snaps)), layout="constrained", squeeze=False
    )
    for row, (label, snap) in zip(axes, snaps.items(), strict=True):
        images = [(f"step {s}", snap.get(f"step_{s}")) for s in steps]
        if ref.exists():
            images.append(("target", load_file(ref)["image"]))
        for ax, (title, img) in zip(row, images, strict=True):
            ax.set_axis_off()
            if img is not None:
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
                ax.set_title(title, fontsize=8)
        row[0].text(-0.08, 0.5, label, transform=row[0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
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


def ensemble_table(results: dict[str, dict[str, Any]]) -> Table:
    """One row per method and test set (clean; each severity, mean over the corruptions): the
    ensembles' metrics as mean ± 95% interval over draws."""
    rows = []
    for label, res in results.items():
        for sev, scores in res["by_severity"].items():
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


_CSS = "body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
_CSS += "img{max-width:100%}"


def write_report(out: str | Path, *, ensemble_size: int = 5, ensemble_draws: int = 10) -> dict[str, Path]:
    """Write ``summary.md``, ``plots/*.png`` and ``report.html`` for the results in ``out``; where
    the records keep test logits, also the ensembles' table (:func:`ensemble_results`, members of
    ``ensemble_size``, ``ensemble_draws`` draws) and their severity plot."""
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
    if groups:
        files["metric"] = plot_metric(groups, out / "plots" / f"{records[0]['metric']}.png")
        ok = [r for runs in groups.values() for r in runs]
        unit = spec_of(ok[0]).step_unit
        taken = {"metric", "reconstructions", "summary", "html", records[0]["metric"]}
        for plot in _declared_plots(ok):
            if plot.name in taken:  # its file would overwrite another
                log.warning("not drawing plot %r: the report's own %r has that name", plot.key, plot.name)
                continue
            if (made := PLOTTERS[plot.kind](groups, plot, unit, out / "plots" / f"{plot.name}.png")) is not None:
                files[plot.name] = made
        if (made := plot_reconstructions(groups, out, out / "plots" / "reconstructions.png")) is not None:
            files["reconstructions"] = made
    tables = [table]
    if groups and (ens := ensemble_results(groups, out, k=ensemble_size, draws=ensemble_draws)):
        tables.append(ensemble_table(ens))
        if any(len(res["by_severity"]) > 1 for res in ens.values()):
            name = "ensemble_severity" if "ensemble_severity" not in files else "ensembles_vs_severity"
            files[name] = plot_ensemble_severity(ens, out / "plots" / f"{name}.png")
    env = records[-1].get("env", {})
    env_line = ", ".join(f"{k} {v}" for k, v in env.items())
    images = "\n".join(f"![{k}](plots/{p.name})" for k, p in files.items())
    md = f"# {table.title}\n\n{table.markdown()}\n\n"
    md += "".join(f"## {t.title}\n\n{t.markdown()}\n\n" for t in tables[1:])
    md += f"{images}\n\nEnvironment: {env_line}\n"
    files["summary"] = atomic_write_text(out / "summary.md", md)
    html_tables = ""
    for t in tables:
        cells = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
        head = "" if t is table else f"<h2>{html.escape(t.title)}</h2>"
        html_tables += f"{head}<table><tr>{cells}</tr>{body}</table>"
    figs = "".join(
        f'<figure><img src="plots/{p.name}"><figcaption>{k}</figcaption></figure>'
        for k, p in files.items()
        if p.suffix == ".png"
    )
    page = (
        f"<!doctype html><meta charset=utf-8><title>initium report</title><style>{_CSS}</style>"
        f"<h1>{html.escape(table.title)}</h1>{html_tables}"
        f"{figs}<p>{html.escape(env_line)}</p>"
    )
    files["html"] = atomic_write_text(out / "report.html", page)
    return files
