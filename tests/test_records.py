"""Records describe themselves (MetricSpec), and the report reads a results folder from them alone."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

import initium.report
from initium.records import MetricSpec, PlotSpec, load_results, seconds_to, spec_of
from initium.report import mean_ci, summarize, write_report
from initium.runner import RunConfig, run
from initium.tasks import TASKS

SPEC = MetricSpec(
    "rel_l2", unit="", higher_is_better=False, log_scale=True, format=".3g", thresholds=(0.1, 0.05),
    checkpoints=(10, 30), summary_fields=(("peak", ".2f"),), step_unit="epoch", cap=2.0,
    plots=(PlotSpec("curves", "band_", name="bands", title="{} frequencies", log=True, panels=("low", "high")),
           PlotSpec("layer_curves", "wb_angle"), PlotSpec("spectrum", "ntk_eigenvalues", name="ntk")),
)  # fmt: skip


def test_metric_spec_round_trips_through_json():
    back = MetricSpec.from_dict(json.loads(json.dumps(SPEC.to_dict())))
    assert back == SPEC and isinstance(back.plots[0], PlotSpec) and back.plots[0].panels == ("low", "high")
    assert back.summary_fields == (("peak", ".2f"),) and back.thresholds == (0.1, 0.05)
    newer = SPEC.to_dict() | {"something_new": 1}  # a record from a later version still reads
    assert MetricSpec.from_dict(newer) == SPEC


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_declares_a_spec_that_round_trips(name):
    spec = TASKS.entry(name).factory.metric
    assert isinstance(spec, MetricSpec) and spec.name
    assert MetricSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: PlotSpec("histogram", "x"),
            "kind must be one of curves, layer_curves, spectrum, severity; got 'histogram'",
        ),
        (lambda: PlotSpec("curves", ""), "key must be a non-empty record key"),
        (lambda: MetricSpec("psnr", step_unit="batch"), "step_unit must be one of step, epoch; got 'batch'"),
        (lambda: MetricSpec("psnr", format="%d"), "format must be a float format"),
        (lambda: MetricSpec(""), "name must be the metric's key"),
        (lambda: MetricSpec("a", plots=(PlotSpec("curves", "x_"), PlotSpec("spectrum", "x"))), "distinct names"),
    ],
)
def test_bad_specs_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_for_record_takes_the_run_thresholds_and_appends_plots():
    extra = (PlotSpec("layer_curves", "update_angle"), PlotSpec("layer_curves", "wb_angle", title="dup"))
    rec = SPEC.for_record(thresholds=(0.5,), extra_plots=extra)
    assert rec.thresholds == (0.5,) and [p.name for p in rec.plots] == ["bands", "wb_angle", "ntk", "update_angle"]
    assert rec.plots[1].title == "wb_angle · {}"  # the task's own declaration wins
    assert SPEC.for_record() == SPEC


def test_report_module_knows_no_task_and_no_curve_by_name():
    tree = ast.parse(Path(initium.report.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
    # not tasks, not the runner (which imports them); ensembles is pure functions on tensors
    assert imported == {"_io", "ensembles", "records"}
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and node.body
        and isinstance(node.body[0], ast.Expr)
    }  # fmt: skip
    code = [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        and id(n) not in docstrings
    ]  # fmt: skip
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "TASKS" not in names and "BANDS" not in names
    for key in ("band_", "wb_angle", "update_angle", "ntk_eigenvalues", "peak_psnr", "psnr", "corruptions"):
        assert not any(key in s for s in code), key


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    cfg = RunConfig(task="image-fit", out=out, arch="siren(hidden=16)", methods=("default",), seeds=(0, 1),
                    steps=120, thresholds=(5.0,), task_options={"image": "camera", "size": 16})  # fmt: skip
    run(cfg)
    return out


def _cell(values, spec):
    mean, half = mean_ci(values)
    return f"{mean:{spec}} ± {half:{spec}}"


def test_records_carry_the_spec_they_ran_with(folder):
    for r in load_results(folder):
        spec = MetricSpec.from_dict(r["metric_spec"])
        assert spec == TASKS.entry("image-fit").factory.metric.for_record(thresholds=(5.0,))
        assert r["metric"] == spec.name == "psnr" and r["higher_is_better"] is True
        assert list(r["steps_to"]) == ["5"] and spec_of(r) == spec


def test_report_works_with_the_task_registry_emptied(folder, monkeypatch):
    monkeypatch.setattr(TASKS, "_entries", {})
    assert "image-fit" not in TASKS and not TASKS.names()
    records = load_results(folder)
    table = summarize(records)
    assert table.columns == ["method", "seeds", "psnr@100", "psnr@120", "steps→5 dB", "s→5 dB", "init+train s"]
    (row,) = table.rows
    assert row[:2] == ["default", "2"]
    assert row[2] == _cell([r["at_step"]["100"] for r in records], ".1f")
    assert row[3] == _cell([r["at_step"]["final"] for r in records], ".1f")
    assert row[4] == _cell([r["steps_to"]["5"] for r in records], ".0f")
    assert row[5] == _cell([seconds_to(r, 5.0) for r in records], ".1f")
    assert table.title == "image-fit · siren(hidden=16) · 120 steps · mean ± 95% CI over seeds"
    files = write_report(folder)
    assert {k: p.name for k, p in files.items() if p.suffix == ".png"} == {
        "metric": "psnr.png", "bands": "bands.png", "reconstructions": "reconstructions.png"
    }  # fmt: skip
    assert all(p.exists() for p in files.values())


def test_a_plot_the_record_declares_is_drawn_whatever_its_key(folder, tmp_path):
    """The report draws what the spec says: a new curve kind needs no change to the report."""
    tmp_path = Path(shutil.copytree(folder, tmp_path / "copy"))
    records = load_results(tmp_path)
    for r in records:
        spec = MetricSpec.from_dict(r["metric_spec"])
        r["metric_spec"] = spec.for_record(extra_plots=(PlotSpec("layer_curves", "ssim_by", name="ssim"),)).to_dict()
        r["curve"] |= {"ssim_by/a": r["curve"]["ssim"], "ssim_by/b": r["curve"]["ssim"]}
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    files = write_report(tmp_path)
    assert files["ssim"].name == "ssim.png" and files["ssim"].exists() and files["bands"].exists()


def test_old_style_record_still_summarizes(folder, tmp_path, monkeypatch):
    """Records from before ``metric_spec``: the defaults come from their own fields."""
    monkeypatch.setattr(TASKS, "_entries", {})
    records = [{k: v for k, v in r.items() if k != "metric_spec"} for r in load_results(folder)]
    spec = spec_of(records[0])
    assert spec == MetricSpec("psnr", format=".3g", thresholds=(5.0,), checkpoints=(100,))
    table = summarize(records)
    assert table.columns == ["method", "seeds", "psnr@100", "psnr@120", "steps→5", "s→5", "init+train s"]
    assert table.rows[0][2] == _cell([r["at_step"]["100"] for r in records], ".3g")
    tmp_path = Path(shutil.copytree(folder, tmp_path / "copy"))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    files = write_report(tmp_path)
    assert files["metric"].exists() and "bands" not in files  # no spec, no declared plots
