from __future__ import annotations

import json

import numpy as np
import pytest

import initium.train
from initium.cli import main


@pytest.fixture
def no_training(monkeypatch):
    """Bad input must fail before any training: make training itself a test failure."""

    def boom(*_a, **_k):
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr(initium.train, "fit", boom)
    monkeypatch.setattr("initium.methods.noise.fit", boom)


@pytest.fixture
def no_loading(monkeypatch):
    """Input that can be judged without the image must fail before the image is loaded."""

    def boom(*_a, **_k):
        raise AssertionError("the image was loaded before the input was checked")

    monkeypatch.setattr("initium.tasks.image_fit.load_image", boom)
    monkeypatch.setattr("initium.tasks.dip.load_image", boom)


def _run(tmp_path, *extra):
    return ["run", "image-fit", "--size", "16", "--steps", "5", "--seeds", "1", "--out", str(tmp_path / "o"), *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image", "camra"], "closest: camera"),
        (["--methods", "default,nois"], "closest: noise"),
        (["--arch", "sirn"], "closest: siren"),
        (["--methods", "noise(stpes=3)"], "steps"),
        (["--image", "/no/such/file.png"], "does not exist"),
        (["--device", "cuda:0"], "CUDA is not available"),
        (["--steps", "0"], "--steps"),
        (["--precision", "tf32"], "--precision tf32 needs a CUDA device"),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path, capsys, no_training, extra, message):
    assert main(_run(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in " ".join(err.split())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "100000"], "--size 100000 needs about"),
        (["--thresholds", "nan"], "--thresholds must be finite numbers such as 25,30,40, got nan"),
        (["--thresholds", "25,inf"], "--thresholds must be finite numbers such as 25,30,40, got 25,inf"),
        (["--lr", "1e38"], "--lr 1e+38 overflows the optimiser's float32 arithmetic"),
        (["--methods", "default,noise(lr=1e38,steps=20)"], "--methods 'noise(lr=1e38,steps=20)': noise's lr 1e+38"),
    ],
)
def test_bad_input_fails_before_the_image_is_loaded(tmp_path, capsys, no_training, no_loading, extra, message):
    assert main(_run(tmp_path, *extra)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_oversized_work_names_the_estimate_and_the_machine(tmp_path, capsys, no_training, no_loading):
    assert main(_run(tmp_path, "--size", "100000")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "one training step of siren" in err and "but this machine has" in err and "at most about" in err


def test_unusable_out_fails_before_loading(tmp_path, capsys, no_training, no_loading):
    (tmp_path / "file").write_text("")
    argv = ["run", "image-fit", "--size", "16", "--steps", "5", "--seeds", "1"]
    assert main([*argv, "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in " ".join(capsys.readouterr().err.split())
    assert main([*argv, "--out", str(tmp_path / "file" / "o")]) == 2
    assert "cannot be created" in " ".join(capsys.readouterr().err.split())


def test_dip_size_below_the_nets_smallest_input(tmp_path, capsys, no_training, no_loading):
    argv = ["run", "dip-denoise", "--size", "32", "--steps", "2", "--seeds", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--size 32 is too small" in err and "levels=5" in err and "Expected more than 1 value" not in err


@pytest.mark.parametrize("arch", [["--arch", "siren(w0=1e38)"], ["--arch", "fourier(hidden=16)", "--lr", "1e6"]])
def test_a_diverged_run_shows_on_the_console(tmp_path, capsys, arch):
    assert main(_run(tmp_path, "--methods", "default", *arch)) == 0  # a result, not a crash
    captured = capsys.readouterr()
    out, err = " ".join(captured.out.split()), " ".join(captured.err.split())
    assert "no finished runs" in out and "diverged in training at step" in out and "status" in out
    assert "warning: default · seed 0: diverged in training at step" in err
    assert "1 of 1 runs did not finish" in err
    assert main(["report", str(tmp_path / "o")]) == 0  # the report says it too
    assert "warning: default · seed 0: diverged in training" in " ".join(capsys.readouterr().err.split())


def test_unknown_task(tmp_path, capsys, no_training):
    assert main(["run", "imagefit", "--image", "camera", "--out", str(tmp_path)]) == 2
    assert "closest: image-fit" in capsys.readouterr().err


def test_task_options_after_other_options(tmp_path):
    argv = ["run", "--arch", "siren(hidden=8)", "image-fit", "--size", "8", "--steps", "2", "--seeds", "1"]
    assert main([*argv, "--methods", "default", "--out", str(tmp_path / "o"), "--report"]) == 0
    assert (tmp_path / "o" / "plots" / "psnr.png").exists()  # --report wrote the plots too


def test_nan_image_file(tmp_path, capsys, no_training):
    import imageio.v3 as iio

    bad = np.full((32, 32), 0.5, np.float32)
    bad[0, 0] = np.inf
    iio.imwrite(tmp_path / "bad.tif", bad)
    assert main(_run(tmp_path, "--image", str(tmp_path / "bad.tif"))) == 2
    assert "NaN or infinite" in capsys.readouterr().err


def test_tiny_and_unreadable_image_files(tmp_path, capsys, no_training):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "dot.png", np.zeros((1, 1, 3), np.uint8))
    assert main(_run(tmp_path, "--image", str(tmp_path / "dot.png"))) == 2
    assert "is 1x1 pixels; an image needs at least 2 pixels a side" in " ".join(capsys.readouterr().err.split())
    (tmp_path / "text.png").write_text("just text")
    assert main(_run(tmp_path, "--image", str(tmp_path / "text.png"))) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is not a readable image" in err and "pip install" not in err


def test_unwritable_cache_runs_without_storing_with_a_warning(tmp_path, monkeypatch):
    """A cache folder that cannot be written stops no sweep (issue 14): the runs pretrain, nothing is stored."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("INITIUM_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.warns(RuntimeWarning, match="not writable.*pretraining without storing"):
        assert main(_run(tmp_path, "--methods", "default,noise(steps=3)")) == 0
    lines = (tmp_path / "o" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["ok", "ok"]
    assert (tmp_path / "file").read_text() == ""


def test_run_report_and_cache_commands(tmp_path, capsys):
    assert main(_run(tmp_path, "--methods", "default,noise(steps=3)", "--thresholds", "10,20")) == 0
    out = capsys.readouterr().out
    assert "steps→10 dB" in out and "noise(steps=3)" in out
    assert main(["report", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "summary.md").exists() and (tmp_path / "o" / "plots" / "psnr.png").exists()
    assert main(["cache", "ls"]) == 0
    assert "1 entries" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 1" in capsys.readouterr().err
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    rules = listing.split("learning rules")[1].split("tasks")[0].split()
    assert "image-fit" in listing and [w for w in rules if w in ("bp", "brsf", "dfa", "fa", "frsf", "usf")] == [
        "bp", "brsf", "dfa", "fa", "frsf", "usf",
    ]  # fmt: skip


def test_report_of_an_empty_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results" in capsys.readouterr().err


def test_tuple_task_options_and_the_task_default_arch(tmp_path):
    out = tmp_path / "r"
    argv = ["run", "regress-1d", "--frequencies", "1,2.5", "--points", "32", "--ntk-points", "4", "--steps", "3",
            "--seeds", "1", "--methods", "default", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    (rec,) = initium.runner.load_results(out)
    assert rec["task_config"]["frequencies"] == [1, 2.5]
    assert rec["arch"] == "mlp" and rec["arch_spec"] == "mlp(hidden=128,layers=3)"


def test_help_of_a_task_lists_its_own_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "classify", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "--val-fraction" in out and "--input-size" in out and "--no-corrupt" in out
