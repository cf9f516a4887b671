"""A results folder as TensorBoard runs: ``initium run ... --tensorboard DIR``.

Written from the records alone (:mod:`initium.records`), like the report, so it knows no task,
method or learning rule by name: one TensorBoard run (a subfolder of ``DIR``) per record, named
``<method>/seed<N>`` (``<method>~<rule>/seed<N>`` for a learning rule other than backprop), with

- ``curve/<key>``: every key of the run's evaluation curve at every evaluation point, the training
  step as the global step (the headline metric, and whatever else the task and the rule measure);
- ``final/<key>``: each curve key's last value, ``steps_to/<threshold>``: the first step that
  reached each threshold, ``wall/init_s`` and ``wall/train_s``: the run's timings;
- ``reconstruction``: the snapshots the record points to (the report's reconstructions), as images
  at their steps, and ``target``: the run's reference picture, where the task has one;
- ``config``: the record's method, architecture and task configs, as text.

Each call rewrites a run's events from its record (the run's old event files are removed first),
so writing again after a resumed sweep leaves one copy of every point. Needs the ``tensorboard``
package: ``pip install "initium[tensorboard]"``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from safetensors.numpy import load_file

from .records import DEFAULT_RULE, load_results, reference_path

__all__ = ["require", "run_name", "write_runs"]

EVENTS_GLOB = "events.out.tfevents.*"


def require() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or an ImportError naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's module imports the tensorboard package
        raise ImportError(
            'TensorBoard logging (--tensorboard) needs the tensorboard package: pip install "initium[tensorboard]"'
        ) from exc
    return SummaryWriter


def run_name(rec: dict[str, Any]) -> str:
    """The record's TensorBoard run (a relative folder): ``<method>[~<rule>]/seed<N>``."""
    rule = rec.get("rule", DEFAULT_RULE)
    method = str(rec["method"]) + ("" if rule == DEFAULT_RULE else f"~{rule}")
    return re.sub(r"[^A-Za-z0-9._=,~()+-]+", "_", method) + f"/seed{rec['seed']}"


def write_runs(out: str | Path, logdir: str | Path, records: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write every finished record of the results folder ``out`` (or ``records``, read from it) as
    a TensorBoard run under ``logdir``; returns the run folders, in the records' order."""
    writer_class = require()
    out, logdir = Path(out), Path(logdir)
    records = load_results(out) if records is None else records
    written: list[Path] = []
    names: dict[str, int] = {}
    for rec in records:
        if rec.get("status") != "ok":
            continue
        name = run_name(rec)
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:  # the same method and seed in another sweep of the folder (another arch)
            name += f"_{names[name]}"
        folder = logdir / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(EVENTS_GLOB):
            old.unlink()
        writer = writer_class(log_dir=str(folder))
        reference = reference_path(out, rec)  # this run's picture: a folder can hold several images
        target = load_file(reference)["image"] if reference is not None else None
        try:
            _write(writer, rec, out, target)
        finally:
            writer.close()
        written.append(folder)
    return written


def _write(writer: Any, rec: dict[str, Any], out: Path, target: Any) -> None:
    curve = rec.get("curve", {})
    steps = curve.get("step", [])
    for key, values in curve.items():
        if key == "step":
            continue
        for step, value in zip(steps, values, strict=False):
            if value is not None:
                writer.add_scalar(f"curve/{key}", value, step)
        last = next(((s, v) for s, v in zip(reversed(steps), reversed(values), strict=False) if v is not None), None)
        if last is not None:
            writer.add_scalar(f"final/{key}", last[1], last[0])
    for threshold, step in rec.get("steps_to", {}).items():
        if step is not None:
            writer.add_scalar(f"steps_to/{threshold}", step, 0)
    for key, seconds in rec.get("wall", {}).items():
        writer.add_scalar(f"wall/{key}", seconds, 0)
    if rec.get("snapshots") and (out / rec["snapshots"]).exists():
        snaps = load_file(out / rec["snapshots"])
        for key in sorted(snaps, key=lambda k: int(k.rsplit("_", 1)[-1])):  # step_25, step_100 ...
            writer.add_image("reconstruction", snaps[key], int(key.rsplit("_", 1)[-1]), dataformats="HWC")
    if target is not None:
        writer.add_image("target", target, 0, dataformats="HWC")
    config = {k: rec.get(k) for k in ("task", "task_config", "arch", "arch_config", "method_config", "rule", "lr")}
    writer.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True, default=str) + "\n```", 0)
