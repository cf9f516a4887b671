"""Results -> summary table, plots (PNG) and a report page.

``summarize`` gives the table the CLI prints and ``summary.md`` holds: for each method, the
headline metric at the task's checkpoints and at the end, and the steps to reach each threshold,
as mean +- the half-width of a 95% t-interval over seeds.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file
from scipy import stats

from ._io import atomic_write_text
from .metrics import BANDS
from .runner import load_results, metric_series, steps_to, value_at
from .tasks import TASKS

__all__ = ["Table", "mean_ci", "summarize", "write_report"]


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
    rules = {r.get("rule", "bp") for r in records}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        prefix = (f"{r['task']}/" if len(tasks) > 1 else "") + (
            f"{r.get('arch_spec', r['arch'])}/" if len(archs) > 1 else ""
        )
        prefix += f"{r.get('rule', 'bp')}/" if rules != {"bp"} else ""
        groups[prefix + r["method"]].append(r)
    return dict(groups)


def _task_class(rec: dict[str, Any]) -> Any:
    return TASKS.entry(rec["task"]).factory


def _thresholds(records: list[dict[str, Any]]) -> list[str]:
    """Every threshold any record was run with, the easiest first."""
    higher = records[0].get("higher_is_better", True) if records else True
    return sorted({t for r in records for t in r.get("steps_to", {})}, key=float, reverse=not higher)


def summarize(records: list[dict[str, Any]]) -> Table:
    """The summary table over seeds (see the module docstring). Checkpoint values and steps to
    each threshold are read off every record's metric series (every step, or the evaluation steps
    where the loss does not give the metric), so records run with other
    ``--thresholds`` or before a checkpoint was added still line up."""
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return Table("no finished runs", ["method"], [])
    first = ok[0]
    cls, steps = _task_class(first), min(r["steps"] for r in ok)
    metric, unit = first["metric"], f" {cls.unit}" if cls.unit else ""
    higher = first.get("higher_is_better", True)
    checkpoints = [c for c in cls.checkpoints if c < steps]
    thresholds = _thresholds(ok)
    columns = ["method", "seeds"] + [f"{metric}@{c}" for c in checkpoints] + [f"{metric}@{steps}"]
    columns += [f"{cls.step_unit}s→{t}{unit}" for t in thresholds]
    columns += [name for name, _ in cls.summary_fields] + ["init+train s"]
    rows = []
    for label, runs in group(records).items():
        done = [r for r in runs if r.get("status") == "ok"]
        if not done:
            rows.append([label, f"0/{len(runs)}"] + ["diverged"] * (len(columns) - 2))
            continue
        n = len(done)
        series = [metric_series(r) for r in done]
        series = [([k for k in at if k <= steps], vals[: sum(k <= steps for k in at)]) for at, vals in series]
        row = [label, str(n) + ("" if n == len(runs) else f" ({len(runs) - n} failed)")]
        spec = cls.metric_format
        row += [_fmt([value_at(at, v, k) for at, v in series], spec, n) for k in [*checkpoints, steps]]
        row += [
            _fmt([steps_to(v, float(t), steps=at, higher_is_better=higher) for at, v in series], ".0f", n)
            for t in thresholds
        ]
        row += [_fmt([r.get(name) for r in done], spec, n) for name, spec in cls.summary_fields]
        init, train = (float(np.mean([r["wall"][k] for r in done])) for k in ("init_s", "train_s"))
        row.append(f"{init:.1f}+{train:.1f}")
        rows.append(row)
    title = (
        f"{first['task']} · {first.get('arch_spec', first['arch'])} · {steps} {cls.step_unit}s"
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
    metric = next(iter(groups.values()))[0]["metric"]
    first = next(iter(groups.values()))[0]
    cls = _task_class(first)
    for label, runs in groups.items():
        ys = _stack(runs, lambda r: [np.nan if v is None else v for v in metric_series(r)[1]])
        at = np.asarray(metric_series(runs[0])[0][: ys.shape[1]])
        _band(ax, at, ys, label, log=cls.log_scale)
    if cls.log_scale:
        ax.set_yscale("log")
    for t in _thresholds([r for runs in groups.values() for r in runs]):
        ax.axhline(float(t), color="0.6", lw=0.8, ls=":")
    title = f"{metric} vs step (mean, 95% band over seeds)"
    if cls.metric_cap is not None and ax.get_ylim()[1] > cls.metric_cap:
        ax.set_ylim(top=cls.metric_cap)  # keep the range where inits differ readable
        title += f", axis capped at {cls.metric_cap:g}"
    ax.set(xlabel=cls.step_unit, ylabel=metric.upper() + (f" ({cls.unit})" if cls.unit else ""), title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bands(groups: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Relative error per frequency band vs step: where high frequencies arrive."""
    import matplotlib.pyplot as plt

    curve = next(iter(groups.values()))[0]["curve"]
    bands = [f"band_{b}" for b in BANDS if f"band_{b}" in curve]
    if not bands:
        return None
    fig, axes = plt.subplots(1, len(bands), figsize=(4 * len(bands), 3.6), layout="constrained", sharey=True)
    for ax, band in zip(np.atleast_1d(axes), bands, strict=True):
        for label, runs in groups.items():
            x = np.asarray(runs[0]["curve"]["step"])
            ys = _stack(runs, lambda r, b=band: r["curve"][b])
            _band(ax, x[: ys.shape[1]], ys, label, log=True)
        ax.set(yscale="log", xlabel="step", title=f"{band[5:]} frequencies")
        ax.grid(alpha=0.3, which="both")
    np.atleast_1d(axes)[0].set_ylabel("relative error in band")
    np.atleast_1d(axes)[-1].legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_ntk(groups: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Eigenvalues of the empirical NTK at the end of training, descending, per method (geometric
    mean and 95% band over seeds): a flatter spectrum is a better-conditioned kernel."""
    import matplotlib.pyplot as plt

    with_ntk = {k: v for k, v in groups.items() if all("ntk_eigenvalues" in r.get("analysis", {}) for r in v)}
    if not with_ntk:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for label, runs in with_ntk.items():
        ys = _stack(runs, lambda r: r["analysis"]["ntk_eigenvalues"])
        _band(ax, np.arange(1, ys.shape[1] + 1), ys, label, log=True)
    ax.set(xscale="log", yscale="log", xlabel="index", ylabel="eigenvalue", title="empirical NTK after training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_layer_curves(groups: dict[str, list[dict[str, Any]]], key: str, path: Path) -> Path | None:
    """Curves ``key/<layer>`` (e.g. the feedback-alignment ``wb_angle`` per layer) vs step, one panel
    per layer, one line per method with a 95% band over seeds; ``None`` when no run has them."""
    import matplotlib.pyplot as plt

    curves = [runs[0]["curve"] for runs in groups.values()]
    layers = sorted({k.split("/", 1)[1] for curve in curves for k in curve if k.startswith(key + "/")})
    if not layers:
        return None
    unit = _task_class(next(iter(groups.values()))[0]).step_unit
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.4), layout="constrained", squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for label, runs in groups.items():
            name = f"{key}/{layer}"
            if name not in runs[0]["curve"]:
                continue
            x = np.asarray(runs[0]["curve"]["step"])
            ys = _stack(runs, lambda r, n=name: [np.nan if v is None else v for v in r["curve"][n]])
            _band(ax, x[: ys.shape[1]], ys, label)
        ax.set(xlabel=unit, title=f"{key} · {layer}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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


_CSS = "body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
_CSS += "img{max-width:100%}"


def write_report(out: str | Path) -> dict[str, Path]:
    """Write ``summary.md``, ``plots/*.png`` and ``report.html`` for the results in ``out``."""
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
        for name, made in (
            ("bands", plot_bands(groups, out / "plots" / "bands.png")),
            ("ntk", plot_ntk(groups, out / "plots" / "ntk.png")),
            ("reconstructions", plot_reconstructions(groups, out, out / "plots" / "reconstructions.png")),
            ("wb_angle", plot_layer_curves(groups, "wb_angle", out / "plots" / "wb_angle.png")),
            ("update_angle", plot_layer_curves(groups, "update_angle", out / "plots" / "update_angle.png")),
        ):
            if made is not None:
                files[name] = made
    env = records[-1].get("env", {})
    env_line = ", ".join(f"{k} {v}" for k, v in env.items())
    images = "\n".join(f"![{k}](plots/{p.name})" for k, p in files.items())
    md = f"# {table.title}\n\n{table.markdown()}\n\n{images}\n\nEnvironment: {env_line}\n"
    files["summary"] = atomic_write_text(out / "summary.md", md)
    cells = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    figs = "".join(
        f'<figure><img src="plots/{p.name}"><figcaption>{k}</figcaption></figure>'
        for k, p in files.items()
        if p.suffix == ".png"
    )
    page = (
        f"<!doctype html><meta charset=utf-8><title>initium report</title><style>{_CSS}</style>"
        f"<h1>{html.escape(table.title)}</h1><table><tr>{cells}</tr>{body}</table>"
        f"{figs}<p>{html.escape(env_line)}</p>"
    )
    files["html"] = atomic_write_text(out / "report.html", page)
    return files
