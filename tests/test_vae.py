"""The weight-group VAE (initium.vae, `initium train vae`, method `vae`): a zoo of 4 tiny ResNets on
digits (3 epochs at lr 0.1, so that training has moved their kernels well away from He init), one
VAE per layer trained 30 epochs, built once for the module."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import initium
from initium import vae
from initium.cli import main
from initium.nn import ResNet, Siren
from initium.records import load_results
from initium.zoo import Zoo, ZooError, build

SPEC = "resnet(depth=8,width=4)"
OPTIONS = {"epochs": 30, "batch_size": 64, "device": "cpu"}
SRC = Path(__file__).resolve().parents[1] / "src"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# The layers with at least 300 training slices (3 nets x 16 x 8 or 16 x 16 kernel pairs, less 5 %):
# where a covariance of 9 numbers is estimated well enough to compare (stem has 12 slices).
LARGE = ("stages.2.0.conv1", "stages.2.0.conv2")
MARGIN = 0.5  # the VAE's statistic is at most half as far from the zoo's as a He-initialised layer's


@pytest.fixture(scope="module")
def one_thread():
    """One thread, as each torchrun rank (OMP_NUM_THREADS=1): the same arithmetic, so the 2-rank
    training can be compared bit for bit; and 2 shared cores run tiny nets fastest so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, one_thread) -> Path:
    path = tmp_path_factory.mktemp("zoo") / "zoo"
    build(path, SPEC, count=4, epochs=3, lr=0.1)
    return path


@pytest.fixture(scope="module")
def trained(zoo, tmp_path_factory) -> tuple[Path, vae.WeightVAE]:
    out = tmp_path_factory.mktemp("vae") / "vae"
    return out, vae.train(zoo, out, **OPTIONS)


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    path = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "INITIUM_CACHE": str(tmp / "cache")}


def _zoo_slices(zoo: Path, name: str) -> torch.Tensor:
    store = Zoo(zoo)
    return torch.cat([vae.slices(store.state_dict(e)[name + ".weight"]) for e in store.entries()])


def _cov(s: torch.Tensor) -> torch.Tensor:
    s = s.flatten(1)
    c = s - s.mean(0)
    return c.T @ c / (len(s) - 1)


# --- weight groups and training ---------------------------------------------------------------------


def test_slices_are_kernels_per_channel_pair_and_rows():
    w = torch.randn(2, 3, 3, 3)
    s = vae.slices(w)
    assert s.shape == (6, 3, 3) and torch.equal(s[1 * 3 + 2], w[1, 2])
    assert torch.equal(vae.slices(torch.ones(4, 5), "linear"), torch.ones(4, 5))


def test_training_lowers_the_validation_loss_split_by_net(trained, zoo):
    out, bank = trained
    split = bank.meta["zoo"]
    assert len(split["train_nets"]) == 3 and len(split["val_nets"]) == 1  # val_fraction 0.2 of 4 nets: one
    assert sorted(split["train_nets"] + split["val_nets"]) == sorted(e.file for e in Zoo(zoo).entries())
    assert split["digest"] == Zoo(zoo).digest()
    by_name = {layer.name: layer for layer in bank.layers}
    weighted = [n for n, m in ResNet(8, 4, (1, 8, 8)).named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert [layer.name for layer in bank.layers] == weighted
    # 16 x 16 kernels per net, the 12 lowest-norm (5 %) dropped: 3 nets to train on, 1 to validate on
    assert (by_name["stages.2.0.conv2"].train_slices, by_name["stages.2.0.conv2"].val_slices) == (3 * 244, 244)
    assert (by_name["head"].vae, by_name["head"].slice_shape, by_name["head"].train_slices) == ("mlp", (16,), 30)
    assert by_name["stem.0"].vae == "conv3x3" and by_name["stages.1.0.shortcut.0"].vae == "mlp"
    for layer in bank.layers:
        assert len(layer.val_loss) == len(layer.train_loss) == OPTIONS["epochs"] + 1
        assert layer.val_loss[-1] < layer.val_loss[0], (layer.name, layer.val_loss[0], layer.val_loss[-1])
    total = [sum(layer.val_slices * layer.val_loss[k] for layer in bank.layers) for k in (0, -1)]
    assert total[1] < total[0]
    assert not (out / ".work").exists()


def test_sampled_kernels_resemble_the_zoos(trained, zoo):
    """Mean slice norm and the 9x9 covariance of the 3x3 slices: the VAE's samples (8 fresh
    ResNets) against the zoo's nets, and He-initialised ResNets (the architecture's default,
    8 seeds) against the same zoo; the VAE must be at most MARGIN as far off."""
    _, bank = trained
    sampled, default = [], []
    for seed in range(8):
        torch.manual_seed(100 + seed)
        default.append(dict(ResNet(8, 4, (1, 8, 8)).named_parameters()))
        model = ResNet(8, 4, (1, 8, 8))
        bank.init(model, seed=seed)
        sampled.append(dict(model.named_parameters()))
    for name in LARGE:
        key = name + ".weight"
        z = _zoo_slices(zoo, name)
        v = torch.cat([vae.slices(p[key].detach()) for p in sampled])
        h = torch.cat([vae.slices(p[key].detach()) for p in default])
        norm = {k: float(s.flatten(1).norm(dim=1).mean()) for k, s in (("zoo", z), ("vae", v), ("he", h))}
        norm_ratio = abs(norm["vae"] - norm["zoo"]) / abs(norm["he"] - norm["zoo"])
        cov_ratio = float((_cov(v) - _cov(z)).norm() / (_cov(h) - _cov(z)).norm())
        assert norm_ratio < MARGIN, (name, norm, norm_ratio)
        assert cov_ratio < MARGIN, (name, cov_ratio)


# --- the method -------------------------------------------------------------------------------------


def test_vae_fills_a_resnet_of_another_width(trained):
    out, bank = trained
    model = ResNet(8, 6, (1, 8, 8))  # the zoo's width is 4
    method = initium.create(f"vae(path={out})", seed=3)
    assert method(model) is model
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(method.info["filled"]) == sorted(convs)  # every (out, in) pair is sampled: any width works
    assert all(f == {"vae": n, "match": "name"} for n, f in method.info["filled"].items())
    assert method.info["kept"] == ["head"]  # rows of 24 numbers: the zoo's head has rows of 16
    assert method.info["zoo_digest"] == bank.zoo_digest
    # the slices have the zoo's distribution at either width: mean norms within 10 % of the width-4 ones
    narrow = ResNet(8, 4, (1, 8, 8))
    bank.init(narrow, seed=3)
    for name in LARGE:
        wide, base = (vae.slices(dict(m.named_parameters())[name + ".weight"].detach()) for m in (model, narrow))
        assert wide.shape[0] == 2.25 * base.shape[0]
        assert abs(wide.norm(dim=(1, 2)).mean() / base.norm(dim=(1, 2)).mean() - 1) < 0.1
    assert torch.isfinite(model(torch.randn(5, 1, 8, 8))).all()
    # match_fan_in rescales by sqrt(fan_in_zoo / fan_in): the same draws, times sqrt(4 / 6) for conv2 of stage 3
    scaled = ResNet(8, 6, (1, 8, 8))
    initium.create(f"vae(path={out},match_fan_in=True)", seed=3)(scaled)
    w, s = (dict(m.named_parameters())["stages.2.0.conv2.weight"] for m in (model, scaled))
    torch.testing.assert_close(s, w * (16 / 24) ** 0.5)


def test_vae_is_deterministic_in_the_seed_and_composable(trained):
    out, _ = trained

    def weights(spec: str, seed: int, global_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = ResNet(8, 4, (1, 8, 8))
        torch.manual_seed(global_seed)  # must not matter
        initium.create(spec, seed=seed)(model)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    a, b, c = weights(f"vae(path={out})", 3, 1), weights(f"vae(path={out})", 3, 2), weights(f"vae(path={out})", 4, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["stages.2.0.conv2.weight"], c["stages.2.0.conv2.weight"])
    both = initium.create(f"vae(path={out})+rwf", seed=3)
    model = ResNet(8, 4, (1, 8, 8))
    both(model)
    assert both.info["0:vae"]["filled"]


def test_another_depth_is_matched_by_relative_depth(trained):
    _, bank = trained
    deeper = ResNet(14, 4, (1, 8, 8))  # two blocks per stage: stages.s.1.* are not in the zoo
    matches = {m.target: m for m in bank.match(deeper)}
    assert matches["stages.0.0.conv1"].by == "name"
    assert matches["stages.2.1.conv2"].by == "depth"
    assert bank.layers[matches["stages.2.1.conv2"].layer].name == "stages.2.0.conv2"  # the deepest 3x3
    assert bank.layers[matches["stages.1.0.shortcut.0"].layer].name == "stages.1.0.shortcut.0"
    assert all(m.layer is not None for m in matches.values())


def test_round_trip_is_bit_identical(trained, tmp_path):
    out, bank = trained
    assert initium.vae is initium.methods.vae and sys.modules["initium.vae"] is vae
    again = vae.load(out)
    copy = again.save(tmp_path / "copy")
    for name in (vae.WEIGHTS_FILE, vae.CONFIG_FILE):
        assert (copy / name).read_bytes() == (out / name).read_bytes()
    assert again.layers == bank.layers
    assert all(torch.equal(t, again.state_dict()[k]) for k, t in bank.state_dict().items())
    gen = [torch.Generator().manual_seed(7) for _ in range(2)]
    assert torch.equal(bank.sample(7, 50, gen[0]), again.sample(7, 50, gen[1]))
    assert vae.load(out / vae.CONFIG_FILE).layers == bank.layers  # the JSON's path names the VAE too


def test_a_classify_run_records_which_vae_filled_which_layer(trained, tmp_path):
    out, _ = trained
    argv = ["run", "classify", "--arch", "resnet(depth=8,width=6)", "--methods", f"vae(path={out})", "--seeds", "1",
            "--epochs", "1", "--no-ood", "--no-track", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    (rec,) = load_results(tmp_path / "run")
    assert rec["status"] == "ok" and rec["method_info"]["kept"] == ["head"]
    assert rec["method_info"]["filled"]["stages.2.0.conv2"] == {"vae": "stages.2.0.conv2", "match": "name"}


# --- resume and torchrun ----------------------------------------------------------------------------


class _Kill(Exception):
    pass


def test_an_interrupted_training_resumes_to_the_same_vaes(trained, zoo, tmp_path):
    """Killed after 3 epochs of layer 7 (stages.2.0.conv2), started again: layers 0-6 are kept, layer
    7 resumes from its epoch-2 checkpoint, and the files equal the uninterrupted run's."""
    ref, _ = trained
    out = tmp_path / "vae"

    def kill(event):
        if event.phase == "vae" and event.label == "stages.2.0.conv2" and event.done == 3:
            raise _Kill

    with pytest.raises(_Kill):
        vae.train(zoo, out, progress=kill, **OPTIONS)
    work = out / ".work"
    assert sorted(p.name for p in work.glob("layer-*.json")) == [f"layer-{i:04d}.json" for i in range(7)]
    assert (work / "ckpt-0007" / "state.json").exists() and not (out / vae.CONFIG_FILE).exists()
    seen = []
    vae.train(zoo, out, progress=seen.append, **OPTIONS)
    trained_now = [e for e in seen if e.phase == "vae"]
    assert {e.label for e in trained_now} == {"stages.2.0.conv2", "stages.2.0.shortcut.0", "head"}
    assert trained_now[0].label == "stages.2.0.conv2" and trained_now[0].done == 3  # epoch 2 done again
    for name in (vae.WEIGHTS_FILE, vae.CONFIG_FILE):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    assert not work.exists()
    # finished: the same command returns the VAE without training
    seen.clear()
    vae.train(zoo, out, progress=seen.append, **OPTIONS)
    assert seen == []


@pytest.mark.slow
def test_torchrun_2_ranks_train_the_one_process_vaes(trained, zoo, tmp_path):
    """The layers are shared out over 2 gloo ranks; each layer's VAE has its own seed and data,
    so the files are bit-identical to the one-process run's (one thread per process in both)."""
    ref, _ = trained
    out = tmp_path / "vae"
    options = ["--epochs", str(OPTIONS["epochs"]), "--batch-size", str(OPTIONS["batch_size"]), "--device", "cpu"]
    cmd = [*TORCHRUN, "-m", "initium.cli", "train", "vae", "--zoo", str(zoo), "--out", str(out), *options]
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("stages.2.0.conv2") == 1  # rank 0 alone prints the table
    for name in (vae.WEIGHTS_FILE, vae.CONFIG_FILE):
        assert (out / name).read_bytes() == (ref / name).read_bytes()


# --- bad input --------------------------------------------------------------------------------------


def test_a_zoo_of_one_net_is_refused_before_any_work(zoo, tmp_path, capsys):
    one = tmp_path / "one"
    shutil.copytree(zoo, one)
    with sqlite3.connect(one / "catalog.sqlite") as db:
        db.execute("DELETE FROM nets WHERE seed > 0")
    Zoo(one).verify(fix=True)
    with pytest.raises(vae.VAEError, match="at least 2 nets"):
        vae.train(one, tmp_path / "out", **OPTIONS)
    assert not (tmp_path / "out").exists()
    assert main(["train", "vae", "--zoo", str(one), "--out", str(tmp_path / "out")]) == 2
    assert "at least 2 nets" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(ZooError, match="not a model zoo"):
        vae.train(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(vae.VAEError, match="epochs must be an int >= 1"):
        vae.train(zoo, tmp_path / "out", epochs=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(vae.VAEError, match="not empty"):
        vae.train(zoo, tmp_path / "full", **OPTIONS)


def test_a_missing_or_malformed_vae_is_a_clear_error(trained, tmp_path):
    out, bank = trained
    with pytest.raises(vae.VAEError, match="vae needs path="):
        initium.create("vae")
    with pytest.raises(vae.VAEError, match="no such folder"):
        initium.create(f"vae(path={tmp_path / 'missing'})")
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / vae.CONFIG_FILE).write_text("{not json")
    with pytest.raises(vae.VAEError, match="not valid JSON"):
        vae.load(bad)
    (bad / vae.CONFIG_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(vae.VAEError, match="not a weight VAE's config"):
        vae.load(bad)
    meta = json.loads((out / vae.CONFIG_FILE).read_text())
    meta["layers"][3]["slice_shape"] = [5, 5]  # a layer map that does not fit the weights
    (bad / vae.CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(vae.VAEError, match=r"layer 3 of vae\.json does not describe its VAE"):
        vae.load(bad)
    shutil.copy(out / vae.CONFIG_FILE, bad / vae.CONFIG_FILE)
    data = bytearray((out / vae.WEIGHTS_FILE).read_bytes())
    data[-1] ^= 1
    (bad / vae.WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(vae.VAEError, match="does not match the sha256"):
        vae.load(bad)
    (bad / vae.WEIGHTS_FILE).unlink()
    with pytest.raises(vae.VAEError, match="missing"):
        vae.load(bad)
    with pytest.raises(vae.VAEError, match="another zoo or training config"):  # a finished VAE of other options
        vae.train(Path(bank.meta["zoo"]["path"]), out, **(OPTIONS | {"epochs": 2}))


def test_a_model_without_a_matchable_layer_is_refused(trained, tmp_path):
    """A VAE of conv layers only, a model of linear layers only: nothing to fill, a clear error
    before any work (create's validate, the method itself, and `initium run` exits 2)."""
    _, bank = trained
    convs = [i for i, layer in enumerate(bank.layers) if layer.kind == "conv"]
    meta = {**bank.meta, "layers": [bank.meta["layers"][i] for i in convs]}
    conv_only = vae.WeightVAE(meta, [bank.vaes[i] for i in convs]).save(tmp_path / "conv-only")
    method = initium.create(f"vae(path={conv_only})")
    model = Siren(2, 1, hidden=16, layers=2)
    with pytest.raises(vae.VAEError, match="no layer of Siren can be matched"):
        method.validate(model)
    with pytest.raises(vae.VAEError, match="the model has linear"):
        method(model)
    argv = ["run", "classify", "--arch", "mlp(hidden=(8,))", "--methods", f"vae(path={conv_only})", "--seeds", "1",
            "--epochs", "1", "--no-ood", "--no-track", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    assert not (tmp_path / "run" / "results.jsonl").exists()


# --- the zoo-statistics baseline (zoo-stats) ---------------------------------------------------------

STATS_TOL = 0.05  # drawn mean within 0.05 zoo std of the zoo's mean; drawn std within 5 % of the zoo's


def test_zoo_stats_draws_each_layer_from_the_zoo_layers_mean_and_std(zoo):
    """``zoo-stats(path=ZOO)``: each matched layer Gaussian with its zoo layer's mean and std (layers
    of >= 2000 weights, where the sample statistics are within ~2 % with near certainty); the
    head of another width (rows of 32, the zoo's are 16) has no match and keeps its init."""
    states = [Zoo(zoo).state_dict(e) for e in Zoo(zoo).entries()]
    torch.manual_seed(0)
    model = ResNet(8, 8, (1, 8, 8))  # the zoo's width is 4
    head = model.head.weight.detach().clone()
    method = initium.create(f"zoo-stats(path={zoo})", seed=5)
    assert method(model) is model
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(method.info["filled"]) == sorted(convs)
    assert method.info["kept"] == ["head"] and torch.equal(model.head.weight, head)
    assert method.info["nets"] == 4
    params = dict(model.named_parameters())
    checked = 0
    for name, fill in method.info["filled"].items():
        assert fill["zoo_layer"] == name and fill["match"] == "name"
        ref = torch.cat([s[name + ".weight"].double().flatten() for s in states])
        assert fill["mean"] == pytest.approx(float(ref.mean())) and fill["std"] == pytest.approx(float(ref.std()))
        w = params[name + ".weight"].detach().double()
        if w.numel() >= 2000:
            checked += 1
            assert abs(float(w.mean()) - float(ref.mean())) < STATS_TOL * float(ref.std())
            assert abs(float(w.std()) / float(ref.std()) - 1) < STATS_TOL
    assert checked >= 2
    # seeded by the run's seed, not the global RNG; another seed, other draws
    again = ResNet(8, 8, (1, 8, 8))
    torch.manual_seed(123)
    initium.create(f"zoo-stats(path={zoo})", seed=5)(again)
    assert torch.equal(again.stages[2][0].conv2.weight, model.stages[2][0].conv2.weight)
    initium.create(f"zoo-stats(path={zoo})", seed=6)(again)
    assert not torch.equal(again.stages[2][0].conv2.weight, model.stages[2][0].conv2.weight)


def test_zoo_stats_refuses_a_bad_zoo_and_an_unmatchable_model(zoo, tmp_path):
    with pytest.raises(vae.VAEError, match="zoo-stats"):
        initium.create(f"zoo-stats(path={tmp_path / 'nothing'})")
    with pytest.raises(vae.VAEError, match="needs path=ZOO"):
        initium.create("zoo-stats")
    method = initium.create(f"zoo-stats(path={zoo})")
    with pytest.raises(vae.VAEError, match="no layer of Siren matches the zoo"):
        method.validate(Siren(2, 1, hidden=8, layers=2))
