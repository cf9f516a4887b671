"""``initium run ... --tensorboard DIR``: the event files hold exactly the records' curves and snapshots."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from initium.cli import main
from initium.records import load_results

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def f32(value: float) -> float:
    return float(np.float32(value))


def _events(folder):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.mark.slow  # about 10 s: four short image-fit runs
def test_tensorboard_runs_hold_the_records(tmp_path):
    out, tb = tmp_path / "out", tmp_path / "tb"
    argv = ["run", "image-fit", "--size", "16", "--steps", "30", "--eval-every", "10", "--methods", "default,rwf",
            "--seeds", "2", "--out", str(out), "--tensorboard", str(tb)]  # fmt: skip
    assert main(argv) == 0
    records = load_results(out)
    # one run per (method, seed), and nothing else
    runs = sorted(p.parent.relative_to(tb).as_posix() for p in tb.rglob("events.out.tfevents.*"))
    assert runs == ["default/seed0", "default/seed1", "rwf/seed0", "rwf/seed1"]
    for rec in records:
        acc = _events(tb / rec["method"] / f"seed{rec['seed']}")
        curve = rec["curve"]
        assert curve["step"] == [0, 10, 20, 25, 30]  # every evaluation point, the snapshot step included
        for key, values in curve.items():
            if key == "step":
                continue
            got = acc.Scalars(f"curve/{key}")
            assert [e.step for e in got] == [s for s, v in zip(curve["step"], values, strict=True) if v is not None]
            # an event file stores float32: exactly the record's value rounded to float32
            assert [e.value for e in got] == [f32(v) for v in values if v is not None]
            assert acc.Scalars(f"final/{key}")[0].value == f32(values[-1])
        assert acc.Scalars("wall/train_s")[0].value == f32(rec["wall"]["train_s"])
        snaps = load_file(out / rec["snapshots"])
        images = acc.Images("reconstruction")
        assert [e.step for e in images] == [25, 30] and sorted(snaps) == ["step_25", "step_30"]
        assert (images[0].width, images[0].height) == (16, 16)
        assert acc.Images("target")[0].width == 16

    # writing again (a resumed sweep) replaces the events instead of doubling them
    assert main([*argv]) == 0
    acc = _events(tb / "rwf" / "seed1")
    assert len(acc.Scalars("curve/psnr")) == 5
    assert len(list((tb / "rwf" / "seed1").glob("events.out.tfevents.*"))) == 1


def test_missing_tensorboard_fails_before_the_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    argv = ["run", "image-fit", "--size", "16", "--steps", "5", "--methods", "default", "--seeds", "1"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--tensorboard", str(tmp_path / "tb")]) == 2
    assert 'pip install "initium[tensorboard]"' in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "o").exists()  # refused before any run
