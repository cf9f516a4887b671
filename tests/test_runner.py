from __future__ import annotations

import errno
import json
import os

import matplotlib.image as mpimg
import pytest
import torch

import initium.batched
import initium.runner
import initium.train
from initium.report import failures, mean_ci, summarize, write_report
from initium.runner import RunConfig, eval_steps, load_results, run
from initium.train import MAX_LR


def _cfg(out, **kw):
    base = dict(
        task="image-fit", out=out, arch="siren(hidden=32)", methods=("default", "noise(steps=20)"), seeds=(0, 1),
        steps=30, task_options={"image": "camera", "size": 16},
    )  # fmt: skip
    return RunConfig(**(base | kw))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, run(_cfg(out))


def test_results_schema_and_consistency(sweep):
    out, records = sweep
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and [json.loads(x) for x in lines] == records
    for r in records:
        assert r["status"] == "ok" and r["task"] == "image-fit" and r["arch"] == "siren"
        assert r["arch_config"]["hidden"] == 32 and r["task_config"]["size"] == 16
        assert r["env"]["torch"] and r["env"]["device"] == "cpu"
        assert r["wall"]["init_s"] >= 0 and r["wall"]["train_s"] > 0
        curve, every = r["curve"], r["metric_every_step"]
        assert curve["step"][0] == 0 and curve["step"][-1] == 30 and len(every) == 31
        # the per-step PSNR (from the loss) agrees with the PSNR evaluated from predictions
        for step, value in zip(curve["step"][:-1], curve["psnr"][:-1], strict=True):
            assert every[step] == pytest.approx(value, abs=1e-3)
        for t, k in r["steps_to"].items():
            assert k is None or (every[k] >= float(t) and all(v < float(t) for v in every[:k]))
        assert r["at_step"]["final"] == every[-1]
    noise = [r for r in records if r["method"].startswith("noise")]
    assert all(r["method_config"][0]["seed"] == r["seed"] for r in noise)  # the seed reaches the method


def test_seeds_are_reproducible(sweep, tmp_path):
    _, records = sweep
    again = run(_cfg(tmp_path, methods=("default",), seeds=(1,)))
    first = next(r for r in records if r["method"] == "default" and r["seed"] == 1)
    assert again[0]["metric_every_step"] == first["metric_every_step"]
    other = next(r for r in records if r["method"] == "default" and r["seed"] == 0)
    assert other["metric_every_step"] != first["metric_every_step"]


def test_resume_skips_finished_runs(tmp_path, monkeypatch):
    run(_cfg(tmp_path, methods=("default",), seeds=(0,)))
    calls = []
    real_fit = initium.train.fit
    monkeypatch.setattr(initium.train, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    records = run(_cfg(tmp_path, methods=("default",), seeds=(0, 1)))
    assert len(calls) == 1 and len(records) == 2  # only seed 1 trained
    assert len(load_results(tmp_path)) == 2


def test_truncated_results_line_is_skipped(tmp_path):
    run(_cfg(tmp_path, methods=("default",), seeds=(0,)))
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"task": "image-fit", "trunc')
    assert len(load_results(tmp_path)) == 1


def test_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    records = run(_cfg(tmp_path, arch="fourier(hidden=16)", methods=("default",), seeds=(0,), lr=1e12, steps=20))
    ok = run(_cfg(tmp_path, arch="fourier(hidden=16)", methods=("default",), seeds=(1,), steps=20))
    (bad,) = records
    assert bad["status"].startswith("diverged")
    assert len(bad["metric_every_step"]) == 21 and bad["metric_every_step"][-1] is None
    assert [r["status"] for r in ok] == [bad["status"], "ok"]
    assert "(1 failed)" in summarize(ok).rows[0][1]


def test_diverged_init_is_recorded(tmp_path):
    (rec,) = run(_cfg(tmp_path, arch="fourier(hidden=16)", methods=("noise(steps=20,lr=1e12)",), seeds=(0,)))
    assert rec["status"].startswith("diverged in init")
    assert rec["metric_every_step"] == [None] * 31


def test_resume_tells_architecture_options_apart(tmp_path):
    run(_cfg(tmp_path, arch="siren(hidden=8)", methods=("default",), seeds=(0,)))
    records = run(_cfg(tmp_path, arch="siren(hidden=16)", methods=("default",), seeds=(0,)))
    assert sorted(r["arch_config"]["hidden"] for r in records) == [8, 16]
    assert [row[0] for row in summarize(records).rows] == ["siren(hidden=8)/default", "siren(hidden=16)/default"]


def test_checkpoint_at_the_last_step_and_mixed_thresholds(tmp_path):
    run(_cfg(tmp_path, methods=("default",), seeds=(0,), steps=100, thresholds=(10.0,)))
    records = run(_cfg(tmp_path, methods=("default",), seeds=(1,), steps=100, thresholds=(12.0,)))
    assert records[0]["at_step"]["100"] == records[0]["metric_every_step"][100]
    table = summarize(records)
    assert "psnr@100" in table.columns and "steps→10 dB" in table.columns and "steps→12 dB" in table.columns
    assert table.rows[0][1] == "2"


def test_cache_hits_are_recorded(tmp_path):
    first = run(_cfg(tmp_path / "a", methods=("noise(steps=5)",), seeds=(0,)))
    second = run(_cfg(tmp_path / "b", methods=("noise(steps=5)",), seeds=(0,)))
    budget = {"steps": 5, "fraction": 0.25}  # SIREN's default fraction, resolved: the record says what ran
    assert first[0]["method_info"] == {"cache": "miss", **budget} and second[0]["method_info"] == {
        "cache": "hit",
        **budget,
    }
    assert first[0]["metric_every_step"] == second[0]["metric_every_step"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"eval_every": 0}, "eval-every"),
        ({"lr": float("inf")}, "lr"),
        ({"thresholds": (float("nan"),)}, "--thresholds must be finite numbers such as 25,30,40, got nan"),
        ({"thresholds": (25.0, float("inf"))}, "--thresholds must be finite numbers .* got 25,inf"),
        ({"thresholds": (-float("inf"),)}, "--thresholds .* got -inf"),
        ({"lr": 1e38}, r"--lr 1e\+38 overflows the optimiser's float32 arithmetic .* give at most 3\.4e\+37"),
        ({"methods": ("default", "noise(lr=1e38,steps=20)")}, r"--methods 'noise\(lr=1e38,steps=20\)': noise's lr 1e"),
        ({"arch": "siren(out_features=3)"}, "set by the task"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_run_settings(tmp_path, monkeypatch, kw, match):
    monkeypatch.setattr(initium.train, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match=match):
        run(_cfg(tmp_path, **kw))
    assert not (tmp_path / "results.jsonl").exists()


def _no_loading(monkeypatch):
    monkeypatch.setattr("initium.tasks.image_fit.load_image", lambda *a, **k: pytest.fail("the image was loaded"))


def test_out_naming_a_file_fails_before_loading(tmp_path, monkeypatch):
    _no_loading(monkeypatch)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match=r"--out '.*file' is a file, not a folder"):
        run(_cfg(tmp_path / "file"))
    with pytest.raises(ValueError, match=r"--out '.*file/sub' cannot be created: '.*file' is a file"):
        run(_cfg(tmp_path / "file" / "sub"))


def test_out_that_cannot_be_written_fails_before_loading(tmp_path, monkeypatch):
    # root writes through any permission bits: a read-only mount, as the write attempt sees it
    def read_only(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    _no_loading(monkeypatch)
    monkeypatch.setattr(initium.runner.tempfile, "TemporaryFile", read_only)
    with pytest.raises(ValueError, match=r"--out '.*new' cannot be written \(Read-only file system: '.*'\); give a"):
        run(_cfg(tmp_path / "new"))  # a folder still to be made: tried in the folder above it
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only folder")
def test_out_in_a_read_only_folder(tmp_path, monkeypatch):
    _no_loading(monkeypatch)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        with pytest.raises(ValueError, match="cannot be written"):
            run(_cfg(tmp_path / "ro"))
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_the_largest_lr_is_taken_and_one_above_it_refused(tmp_path):
    (rec,) = run(_cfg(tmp_path, arch="siren(hidden=8)", methods=("default",), seeds=(0,), steps=3, lr=MAX_LR))
    assert rec["status"].startswith("diverged in training")  # a result, not a crash inside Adam
    with pytest.raises(ValueError, match="overflows"):
        run(_cfg(tmp_path, methods=("default",), lr=MAX_LR * 1.01))


def test_any_failure_in_init_is_that_runs_result(tmp_path, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("value cannot be converted to type float without overflow\n(second line)")

    monkeypatch.setattr("initium.methods.noise.fit", broken)
    records = run(_cfg(tmp_path, methods=("noise(steps=5)", "default"), seeds=(0, 1), steps=5))
    status = {(r["method"], r["seed"]): r["status"] for r in records}
    assert status == {
        ("noise(steps=5)", 0): "failed in init: RuntimeError: value cannot be converted to type float without overflow",
        ("noise(steps=5)", 1): "failed in init: RuntimeError: value cannot be converted to type float without overflow",
        ("default", 0): "ok",
        ("default", 1): "ok",
    }  # the sweep went on past both failures


def test_any_failure_in_training_is_that_runs_result(tmp_path, monkeypatch):
    real, calls = initium.train.fit, []

    def first_fails(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*a, **k)

    monkeypatch.setattr(initium.train, "fit", first_fails)
    records = run(_cfg(tmp_path, methods=("default",), seeds=(0, 1), steps=5))
    assert [r["status"] for r in records] == [
        "failed in training: OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB",
        "ok",
    ]
    assert records[0]["metric_every_step"] == [None] * 6 and "weights" not in records[0]
    again = run(_cfg(tmp_path, methods=("default",), seeds=(0, 1), steps=5))  # a failed run is tried again
    assert [r["status"] for r in again] == ["ok", "ok"]


def test_a_keyboard_interrupt_still_stops_the_sweep(tmp_path, monkeypatch):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(initium.train, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tmp_path, methods=("default",), seeds=(0, 1), steps=5))
    assert load_results(tmp_path) == []
    monkeypatch.setattr("initium.methods.noise.fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tmp_path, methods=("noise(steps=5)",), seeds=(0,), steps=5))


def test_a_failure_in_a_stacked_group_trains_its_runs_one_by_one(tmp_path, monkeypatch):
    def broken(*_a, **_k):
        raise RuntimeError("vmap does not support this")

    monkeypatch.setattr(initium.batched, "fit_batched", broken)
    records = run(_cfg(tmp_path, methods=("default",), seeds=(0, 1), steps=5, batch=True))
    assert [(r["status"], r["batched"]) for r in records] == [("ok", 1), ("ok", 1)]


def test_failed_runs_show_in_the_table_with_their_status(tmp_path):
    records = run(_cfg(tmp_path, arch="siren(w0=1e38)", methods=("default",), seeds=(0,), steps=5))
    table = summarize(records)
    assert table.title.endswith("no finished runs") and table.columns == ["method", "seeds", "status"]
    assert table.rows == [["default", "0/1", "diverged in training at step 2 (seed 0)"]]
    assert failures(records) == ["default · seed 0: diverged in training at step 2"]
    more = run(_cfg(tmp_path, arch="siren(w0=1e38)", methods=("default", "noise(steps=3)"), seeds=(0, 1), steps=5))
    table = summarize(more)
    assert table.columns[-1] == "status" and table.rows[0][1] == "0/2"
    assert table.rows[0][-1] == "diverged in training at step 2 (seeds 0, 1)"
    ok = run(_cfg(tmp_path / "mixed", methods=("default",), seeds=(0,), steps=5))
    ok += [r | {"status": "diverged in init at step 3", "seed": 1} for r in ok]  # one of two failed
    table = summarize(ok)
    assert table.rows == [[*table.rows[0][:-1], "diverged in init at step 3 (seed 1)"]]
    assert table.rows[0][1] == "1 (1 failed)" and "status" in table.columns
    assert "status" not in summarize(ok[:1]).columns  # every run finished: no status column


def test_eval_steps():
    assert eval_steps(10, 5, (100,)) == [0, 5, 10]
    assert eval_steps(300, None, (100, 300, 1000))[:3] == [0, 3, 6] and 100 in eval_steps(300, None, (100,))


def test_summary_and_report(sweep):
    out, records = sweep
    table = summarize(records)
    assert table.columns[:2] == ["method", "seeds"] and "steps→25 dB" in table.columns
    assert [row[0] for row in table.rows] == ["default", "noise(steps=20)"]
    files = write_report(out)
    md = (out / "summary.md").read_text()
    assert "| default |" in md and "noise(steps=20)" in md
    for key in ("metric", "bands", "reconstructions"):
        img = mpimg.imread(files[key])
        assert img.shape[0] > 100 and img.std() > 0.01  # a real picture, not a blank canvas
    assert "<table>" in (out / "report.html").read_text()


def test_mean_ci():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1 / 3**0.5, rel=1e-3)
