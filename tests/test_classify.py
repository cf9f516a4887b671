from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from initium.fa import feedback_layers
from torch import nn

from initium.cli import main
from initium.nn import ARCHS, FALinear
from initium.report import summarize
from initium.runner import RunConfig, run
from initium.tasks import TASKS
from initium.tasks.classify import ood_sets
from initium.tasks.data import load_digits, make_mnist1d

SMALL = "classifier-mlp(hidden=(32,))"


@pytest.fixture(scope="module")
def digits():
    task = TASKS.build("classify", {"dataset": "digits", "epochs": 2})
    task.setup(torch.device("cpu"))
    return task


def test_digits_split_and_standardisation(digits):
    x, _ = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.min() == 0 and x.max() == 1
    n_test, n_val = len(digits.test_y), len(digits.val_y)
    assert len(digits.target) + n_val + n_test == 1797 and n_test == pytest.approx(0.3 * 1797, abs=1)
    assert n_val == pytest.approx(0.2 * (1797 - n_test), abs=1)  # 0.2 of the training part
    assert digits.inputs.shape[1:] == (1, 8, 8) and digits.target.dtype == torch.long
    assert float(digits.inputs.mean()) == pytest.approx(0, abs=1e-5)
    assert float(digits.inputs.std()) == pytest.approx(1, abs=1e-3)
    # stratified: every class in every part, in about the same proportion
    assert torch.bincount(digits.test_y).min() >= 50 and torch.bincount(digits.val_y, minlength=10).min() >= 24


def test_validation_split_is_carved_from_the_training_part_only(digits):
    index = digits.split_index
    train, val, test = (set(index[k].tolist()) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test) and len(train | val | test) == 1797
    whole = TASKS.build("classify", {"dataset": "digits", "val_fraction": 0.0})
    whole.setup(torch.device("cpu"))
    # the test split is the same with or without a validation split; the validation split comes from train
    assert np.array_equal(whole.split_index["test"], index["test"]) and len(whole.split_index["val"]) == 0
    assert set(whole.split_index["train"].tolist()) == train | val
    assert len(whole.val_y) == 0 and len(whole.target) == len(digits.target) + len(digits.val_y)
    # deterministic in split_seed, and another split_seed draws another validation split
    again = TASKS.build("classify", {"dataset": "digits"})
    again.setup(torch.device("cpu"))
    assert np.array_equal(again.split_index["val"], index["val"]) and torch.equal(again.val_x, digits.val_x)
    other = TASKS.build("classify", {"dataset": "digits", "split_seed": 1})
    other.setup(torch.device("cpu"))
    assert not np.array_equal(other.split_index["val"], index["val"])
    # standardised with the part trained on, and the validation split with the same mean and std
    assert float(whole.inputs.mean()) == pytest.approx(0, abs=1e-5) and whole.mean != digits.mean
    model = digits.build_model("classifier-mlp", {"hidden": (8,)})
    assert set(digits.evaluate_model(model)) == {"val_acc", "val_loss", "test_acc", "test_loss"}
    assert set(whole.evaluate_model(model)) == {"test_acc", "test_loss"}


@pytest.mark.parametrize(("options", "message"), [
    ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
    ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
    ({"val_fraction": float("nan")}, r"val_fraction must be in \[0, 1\)"),
    ({"test_fraction": 0.0}, r"test_fraction must be in \(0, 1\)"),
    ({"val_fraction": 0.001}, "val_fraction=0.001 holds out 2 of 1257 samples"),
    ({"test_fraction": 0.999}, "test_fraction=0.999 holds out 1796 of 1797"),
])  # fmt: skip
def test_bad_split_fractions_name_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        TASKS.build("classify", options).setup(torch.device("cpu"))


def test_mnist1d_is_generated_offline_and_leaves_global_rngs_alone(monkeypatch):
    import requests

    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("mnist1d tried to download"))
    np.random.seed(123)
    random.seed(7)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    x, y = make_mnist1d(num_samples=500)
    assert x.shape == (500, 1, 40) and x.dtype == np.float32 and set(np.unique(y)) == set(range(10))
    assert np.array_equal(np.random.get_state()[1], before_np) and random.getstate() == before_py
    x2, _ = make_mnist1d(num_samples=500)
    assert np.array_equal(x, x2)


def test_ood_sets():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3, 4] = 1.0
    sets = ood_sets(x, "digits", seed=0)
    assert set(sets) == {"translated", "scaled", "rotated", "noise"}
    moved = sets["translated"]
    # a one-pixel shift along one axis moves the single bright pixel exactly, without blur
    assert torch.allclose(moved.sum((1, 2, 3)), torch.ones(64)) and moved.max() == pytest.approx(1.0)
    pos = moved[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 8, pos % 8
    assert torch.all((rows - 3).abs() + (cols - 4).abs() == 1)
    assert not torch.equal(sets["noise"], x) and (sets["noise"] - x).std() == pytest.approx(0.25, rel=0.1)
    assert torch.equal(ood_sets(x, "digits", seed=0)["scaled"], sets["scaled"])
    signals = ood_sets(torch.randn(8, 1, 40), "mnist1d")
    assert set(signals) == {"translated", "scaled", "noise"} and signals["scaled"].shape == (8, 1, 40)


@pytest.mark.parametrize(("arch", "shape"), [("classifier-mlp", (1, 8, 8)), ("classifier-cnn", (1, 8, 8)),
                                             ("classifier-cnn", (1, 40))])  # fmt: skip
def test_classifier_archs(arch, shape):
    torch.manual_seed(0)
    model = ARCHS.build(arch, {}, in_shape=shape, out_features=10)
    x = torch.randn(3, *shape)
    out = model(x)
    assert out.shape == (3, 10) and model.out_features == 10
    # the convolutions match the input: Conv2d over images, Conv1d over signals; the MLP has none
    convs = {type(m) for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)}
    expected = set() if arch == "classifier-mlp" else {nn.Conv2d if len(shape) == 3 else nn.Conv1d}
    assert convs == expected
    # every input element reaches the output (no part of the input is silently dropped) ...
    x.requires_grad_(True)
    model(x).sum().backward()
    assert bool((x.grad.abs().sum(0) > 0).all())
    # ... and the samples of a batch stay independent
    torch.testing.assert_close(model(x[:1]), out[:1])


def test_minibatch_fit_curves(digits):
    torch.manual_seed(0)
    model = digits.build_model("classifier-mlp", {"hidden": (32,)})
    seen = []
    history = digits.fit(model, steps=2, lr=0.01, evaluate_at=[0, 1, 2], on_eval=lambda k, p: seen.append((k, p)))
    assert history.shape == (3,) and history[2] < history[0]
    assert [k for k, _ in seen] == [0, 1, 2] and seen[0][1].shape == (len(digits.target), 10)
    assert digits.evaluate(seen[-1][1])["train_acc"] > 0.8
    with pytest.raises(ValueError, match="--epochs"):
        digits.resolve_steps(7)
    assert digits.resolve_steps(None) == 2


def test_run_pairs_rules_with_methods(tmp_path):
    cfg = RunConfig(
        task="classify", out=tmp_path, arch=SMALL, methods=("default", "default", "fa-noise(steps=50)"),
        rules=("bp", "fa", "fa"), seeds=(0,), task_options={"epochs": 2, "adapt_epochs": 1},
    )  # fmt: skip
    records = run(cfg)
    assert [(r["rule"], r["method"]) for r in records] == [
        ("bp", "default"), ("fa", "default"), ("fa", "fa-noise(steps=50)")]  # fmt: skip
    bp, fa_default, fa_noise = records
    assert all(r["status"] == "ok" and r["steps"] == 2 and r["step_unit"] == "epoch" for r in records)
    assert len(bp["curve"]["test_acc"]) == 3 and bp["curve"]["test_acc"][-1] > 0.8
    assert len(bp["curve"]["val_acc"]) == 3 and bp["curve"]["val_acc"][-1] > 0.8 and len(bp["curve"]["val_loss"]) == 3
    assert bp["task_config"]["val_fraction"] == 0.2
    # same seed, same weights at step 0: the learning rule is the only difference
    assert bp["curve"]["test_acc"][0] == fa_default["curve"]["test_acc"][0]
    assert "wb_angle/net.3" in fa_default["curve"] and not any(k.startswith("wb_angle") for k in bp["curve"])
    assert set(bp["analysis"]["ood"]) == {"clean", "translated", "scaled", "rotated", "noise"}
    assert len(fa_noise["analysis"]["adapt"]["permuted"]) == 2
    info = fa_noise["method_info"]["wb_angle"]
    assert info["step"][0] == 0 and info["net.3"][-1] < info["net.3"][0]  # pretraining aligned the last layer
    assert fa_noise["curve"]["wb_angle/net.3"][0] == pytest.approx(info["net.3"][-1], abs=1e-3)
    rows = [row[0] for row in summarize(records).rows]
    assert rows == ["bp/default", "fa/default", "fa/fa-noise(steps=50)"]
    assert "epochs→0.9" in summarize(records).columns


def test_split_task_adapts_to_the_other_digits(tmp_path):
    cfg = RunConfig(
        task="classify", out=tmp_path, arch=SMALL, methods=("default",), rules=("dfa",), seeds=(0,),
        task_options={"epochs": 1, "classes": "0-4", "adapt_epochs": 1, "ood": False},
    )  # fmt: skip
    (rec,) = run(cfg)
    assert rec["status"] == "ok" and "ood" not in rec["analysis"]
    before, after = rec["analysis"]["adapt"]["5-9"]
    assert before < 0.05 and after > before + 0.3  # never saw 5-9; one epoch of DFA learns them


def test_converted_model_in_a_run_is_an_fa_model(digits):
    import initium.fa as fa

    model = fa.convert(digits.build_model("classifier-cnn", {}), "fa", seed=0)
    assert [type(m).__name__ for _, m in feedback_layers(model)] == ["FAConv2d", "FAConv2d", "FALinear"]
    assert isinstance(model.net[-1], FALinear)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rule", "bp,fa"], "2 rules for 1 methods"),
        (["--rule", "fb"], "bp, fa, dfa"),
        (["--steps", "3"], "--epochs"),
        (["--methods", "fa-noise(num_classes=1)"], "num_classes"),
        (["--arch", "classifier-mlp(in_shape=(64,))"], "set by the task"),
        (["--val-fraction", "1"], "val_fraction must be in [0, 1)"),
        (["--val-fraction", "0.001"], "val_fraction=0.001 holds out 2 of 1257 samples"),
    ],
)
def test_bad_classify_input(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr("initium.tasks.classify.Classify.fit", lambda *a, **k: pytest.fail("trained"))
    argv = ["run", "classify", "--epochs", "1", "--seeds", "1", "--methods", "default", "--out", str(tmp_path / "o")]
    argv += extra
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error:" in err and message in err


def test_cli_classify_end_to_end(tmp_path, capsys):
    argv = ["run", "classify", "--arch", SMALL, "--rule", "bp,fa", "--methods", "default,default",
            "--epochs", "1", "--seeds", "1", "--out", str(tmp_path / "o"), "--no-ood"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bp/default" in out and "fa/default" in out and "test_acc@1" in out


def test_report_plots_the_alignment_curves(tmp_path):
    from initium.report import write_report

    cfg = RunConfig(
        task="classify", out=tmp_path, arch=SMALL, methods=("default",), rules=("bp", ), seeds=(0, 1),
        task_options={"epochs": 1, "ood": False},
    )  # fmt: skip
    run(cfg)
    assert "wb_angle" not in write_report(tmp_path)  # a backprop model has no feedback matrices
    run(RunConfig(**{**cfg.__dict__, "rules": ("fa",)}))
    files = write_report(tmp_path)
    assert files["wb_angle"].exists() and files["update_angle"].exists()
    assert "fa/default" in (tmp_path / "summary.md").read_text()


def test_issue_arch_names_mlp_and_cnn_resolve_to_the_classifiers(tmp_path):
    cfg = RunConfig(task="classify", out=tmp_path, arch="mlp(hidden=(16,))", methods=("default",), seeds=(0,),
                    task_options={"epochs": 1, "adapt_epochs": 0, "ood": False})  # fmt: skip
    (rec,) = run(cfg)
    assert rec["status"] == "ok" and rec["arch"] == "classifier-mlp"
