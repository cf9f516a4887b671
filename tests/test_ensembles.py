"""Ensemble metrics against values worked out by hand; corruptions deterministic and monotone."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from initium import ensembles
from initium.tasks.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from initium.tasks.data import load_digits, make_mnist1d

# two members, four samples, three classes, as probabilities (their logs are the logits)
A = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.2, 0.2, 0.6]]
B = [[0.6, 0.2, 0.2], [0.1, 0.6, 0.3], [0.3, 0.5, 0.2], [0.2, 0.1, 0.7]]
Y = torch.tensor([0, 1, 0, 1])


def test_metrics_match_hand_computed_values():
    logits = torch.tensor([A, B], dtype=torch.float64).log()
    m = ensembles.metrics(logits, Y)
    # mean softmax: [.7 .15 .15], [.1 .7 .2], [.45 .35 .2], [.2 .15 .65]; argmax 0, 1, 0, 2
    assert m["acc"] == pytest.approx(0.75)
    assert m["nll"] == pytest.approx(-(2 * math.log(0.7) + math.log(0.45) + math.log(0.15)) / 4)
    # (.09+.0225+.0225) + (.01+.09+.04) + (.3025+.1225+.04) + (.04+.7225+.4225), over 4
    assert m["brier"] == pytest.approx(1.925 / 4)
    # bins: {.7, .7} both right: 2/4 * .3; {.45} right: 1/4 * .55; {.65} wrong: 1/4 * .65
    assert m["ece"] == pytest.approx(0.15 + 0.1375 + 0.1625)
    # member argmax 0,1,0,2 vs 0,1,1,2: one sample of four
    assert m["disagreement"] == pytest.approx(0.25)


def test_disagreement_averages_over_pairs_and_one_member_is_its_own_ensemble():
    c = [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]]  # argmax 1,1,1,1
    logits = torch.tensor([A, B, c]).log()
    # argmax A 0,1,0,2; B 0,1,1,2; C 1,1,1,1: pairs (A,B) 1/4, (A,C) 3/4, (B,C) 2/4
    assert ensembles.disagreement(logits) == pytest.approx((0.25 + 0.75 + 0.5) / 3)
    one = ensembles.metrics(torch.tensor([A]).log(), Y)
    assert one["disagreement"] == 0 and one["acc"] == pytest.approx(0.75)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="members, samples, classes"):
        ensembles.metrics(torch.zeros(4, 3), Y)
    with pytest.raises(ValueError, match="labels"):
        ensembles.metrics(torch.zeros(2, 4, 3), Y[:3])


def test_draw_members_is_seeded_and_without_replacement():
    draws = ensembles.draw_members(10, 5, 8, seed=1)
    assert draws == ensembles.draw_members(10, 5, 8, seed=1) and len(draws) == 8
    assert all(len(set(d)) == 5 and max(d) < 10 for d in draws)
    assert ensembles.draw_members(3, 5, 10) == [(0, 1, 2)]  # fewer seeds than k: all of them, once
    assert len(ensembles.draw_members(4, 2, 10)) == 6  # every pair once


@pytest.fixture(scope="module", params=["digits", "mnist1d"])
def raw(request):
    x = load_digits()[0] if request.param == "digits" else make_mnist1d(num_samples=400)[0]
    return torch.from_numpy(x[:400])


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_are_deterministic_and_monotone(raw, name):
    assert torch.equal(corrupt(raw, name, 0), raw)
    assert torch.equal(corrupt(raw, name, 3, seed=7), corrupt(raw, name, 3, seed=7))
    dist = [float((corrupt(raw, name, s, seed=7) - raw).flatten(1).norm(dim=1).mean()) for s in range(SEVERITIES + 1)]
    assert all(b > a for a, b in itertools.pairwise(dist)), dist


def test_corrupt_refuses_bad_arguments(raw):
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(raw, "fog", 1)
    with pytest.raises(ValueError, match="from 0 to 5"):
        corrupt(raw, "contrast", 6)


# --- classify: corrupted sets, stored logits, ensembles in the report ------------------------------

SMALL = "classifier-mlp(hidden=(32,))"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from initium.runner import RunConfig, run

    out = tmp_path_factory.mktemp("sweep")
    cfg = RunConfig(task="classify", out=out, arch=SMALL, methods=("default",), seeds=(0, 1, 2),
                    task_options={"epochs": 2, "ood": False, "track": False})  # fmt: skip
    return out, run(cfg)


def test_trained_net_loses_accuracy_as_severity_rises(sweep):
    _, records = sweep
    acc = records[0]["analysis"]["corruptions"]["acc"]
    assert set(acc) == set(CORRUPTIONS) and all(len(v) == SEVERITIES + 1 for v in acc.values())
    for name, values in acc.items():
        assert values[-1] < values[0] - 0.05, (name, values)
    mean = [sum(v[s] for v in acc.values()) / len(acc) for s in range(SEVERITIES + 1)]
    assert all(b < a for a, b in itertools.pairwise(mean)), mean
    ece = records[0]["analysis"]["corruptions"]["ece"]
    assert all(0 <= e <= 1 for v in ece.values() for e in v)


def test_logits_are_kept_beside_the_record(sweep):
    from safetensors.torch import load_file

    out, records = sweep
    data = load_file(out / records[0]["logits"])
    n = len(data["labels"])
    assert records[0]["logits"].startswith("logits/") and data["clean"].shape == (n, 10)
    assert {f"{c}@{s}" for c in CORRUPTIONS for s in range(1, SEVERITIES + 1)} <= set(data)
    # the stored clean logits give the record's final test accuracy
    acc = float((data["clean"].argmax(1) == data["labels"]).float().mean())
    assert acc == pytest.approx(records[0]["curve"]["test_acc"][-1], abs=1e-6)


def test_report_shows_the_ensemble_table_and_severity_plot(sweep):
    from initium.report import write_report

    out, _ = sweep
    files = write_report(out)
    assert files["ensemble_severity"].exists() and files["corruptions"].exists()
    md = (out / "summary.md").read_text()
    assert "## ensembles" in md and "| default | 3 of 3 | 1 | clean |" in md and "severity 5 (mean of 5)" in md
    assert "disagreement" in (out / "report.html").read_text()
    from initium.cli import main

    assert main(["report", str(out), "--ensemble-size", "2"]) == 0  # every pair of the 3 seeds: 3 draws
    assert "| default | 2 of 3 | 3 | clean |" in (out / "summary.md").read_text()


# --- --dataset PATH ----------------------------------------------------------------------------------


def _image_folder(root, *, rgb=False, sizes=(8,)):
    import imageio.v3 as iio
    import numpy as np

    rng = np.random.default_rng(0)
    for label, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True)
        for i in range(10):
            side = sizes[i % len(sizes)]
            img = rng.integers(0, 60, (side, side, 3) if rgb else (side, side)).astype(np.uint8)
            half = slice(0, side // 2) if label == 0 else slice(side // 2, side)
            img[:, half] = 230
            iio.imwrite(root / name / f"{i}.png", img)
    return root


def test_an_image_folder_trains_through_the_cli(tmp_path, capsys):
    from safetensors.torch import load_file

    from initium.cli import main
    from initium.records import load_results

    path = _image_folder(tmp_path / "data")
    argv = ["run", "classify", "--dataset", str(path), "--arch", SMALL, "--epochs", "3", "--seeds", "1",
            "--methods", "default", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    (rec,) = load_results(tmp_path / "o")
    assert rec["status"] == "ok" and rec["task_config"]["dataset"] == str(path)
    data = load_file(tmp_path / "o" / rec["logits"])
    assert data["clean"].shape == (6, 2)  # 30% of 20 images, 2 classes


def test_colour_folder_of_mixed_sizes_is_resized_by_input_size(tmp_path):
    from initium.tasks import TASKS

    path = _image_folder(tmp_path / "data", rgb=True, sizes=(8, 12))
    with pytest.raises(ValueError, match="--input-size N"):
        TASKS.build("classify", {"dataset": str(path)}).setup(torch.device("cpu"))
    task = TASKS.build("classify", {"dataset": str(path), "input_size": 6})
    task.setup(torch.device("cpu"))
    assert task.inputs.shape[1:] == (3, 6, 6) and task.num_classes == 2


@pytest.mark.parametrize("shape", [(30, 6, 6), (30, 1, 6, 6), (30, 12)])
def test_npz_round_trip(tmp_path, shape):
    import numpy as np

    from initium.tasks import TASKS
    from initium.tasks.data import load_dataset

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=shape).astype(np.float32), np.repeat([3, 7, 9], 10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    xs, ys, names = load_dataset(str(tmp_path / "d.npz"))
    assert names == ["3", "7", "9"] and ys.tolist() == np.repeat([0, 1, 2], 10).tolist()
    assert np.array_equal(xs.reshape(shape), x) and xs.ndim == len(shape) + (len(shape) != 4)
    task = TASKS.build("classify", {"dataset": str(tmp_path / "d.npz"), "val_fraction": 0.0, "test_fraction": 0.3})
    task.setup(torch.device("cpu"))
    assert task.num_classes == 3 and len(task.test_y) == 9 and set(task.corrupted) == set(CORRUPTIONS)


def _bad(tmp_path, kind):
    import numpy as np

    if kind == "one class":
        (tmp_path / "d" / "only").mkdir(parents=True)
        return tmp_path / "d"
    if kind == "unreadable":
        path = _image_folder(tmp_path / "d")
        (path / "left" / "broken.png").write_text("not an image")
        return path
    if kind == "empty class":
        path = _image_folder(tmp_path / "d")
        (path / "empty").mkdir()
        return path
    path = tmp_path / "d.npz"
    arrays = {"mismatched": {"x": np.zeros((5, 4)), "y": np.arange(4)},
              "missing key": {"inputs": np.zeros((4, 4)), "y": np.arange(4)},
              "one label": {"x": np.zeros((4, 4)), "y": np.zeros(4, int)},
              "float labels": {"x": np.zeros((4, 4)), "y": np.zeros(4)},
              "nan": {"x": np.full((4, 4), np.nan), "y": np.arange(4)}}[kind]  # fmt: skip
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("one class", "has 1 class folder(s); a classification dataset needs at least 2"),
        ("unreadable", "broken.png' is not a readable image"),
        ("empty class", "class folder 'empty' holds no images"),
        ("mismatched", "x has 5 samples but y has 4"),
        ("missing key", "has no array 'x' (it has inputs, y); save it with np.savez"),
        ("one label", "y has 1 class"),
        ("float labels", "y must be (N,) integer labels"),
        ("nan", "contains 16 NaN or infinite values"),
    ],
)
def test_bad_dataset_layouts_are_clear_errors(tmp_path, capsys, kind, message):
    from initium.cli import main

    path = _bad(tmp_path, kind)
    argv = ["run", "classify", "--dataset", str(path), "--epochs", "1", "--seeds", "1", "--methods", "default",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and str(path) in err


def test_unknown_dataset_names_the_bundled_ones(tmp_path, capsys):
    from initium.cli import main

    argv = ["run", "classify", "--dataset", "cifar", "--epochs", "1", "--seeds", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "neither a bundled dataset (digits, mnist1d)" in " ".join(capsys.readouterr().err.split())


def test_the_ensemble_table_shows_only_the_severities_asked_for():
    from initium.report import ENSEMBLE_METRICS, ensemble_table

    scores = {m: [0.5, 0.6] for m in ENSEMBLE_METRICS}
    res = {"k": 2, "seeds": 3, "draws": 2, "conditions": 4, "by_severity": {s: scores for s in (0, 1, 3, 5)}}
    everything = ensemble_table({"default": res})
    some = ensemble_table({"default": res}, severities={0, 5})
    assert [row[3] for row in everything.rows] == ["clean"] + [f"severity {s} (mean of 4)" for s in (1, 3, 5)]
    assert [row[3] for row in some.rows] == ["clean", "severity 5 (mean of 4)"]
    assert some.rows == [everything.rows[0], everything.rows[3]]
