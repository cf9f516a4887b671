"""The model zoo (initium.zoo, `initium zoo build|ls|verify`): tiny ResNets on digits, one epoch."""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from initium import zoo as zoo_module
from initium.cli import main
from initium.nn import ResNet
from initium.records import load_results
from initium.tasks import TASKS
from initium.zoo import Zoo, ZooError, accuracy, build

SPEC = "resnet(depth=8,width=4)"
SRC = Path(__file__).resolve().parents[1] / "src"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# A build that dies (os._exit: no cleanup, no finally, as kill -9) at one point of its 2nd net:
# in its training, after its file's temporary write (before the rename), or after the rename
# (before its row). Each Classify.fit logs "rank seed" to $FITS_LOG, so tests count trainings.
SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    from initium import zoo
    from initium.cli import main
    from initium.tasks.classify import Classify

    STAGE, AT = os.environ.get("KILL_STAGE"), int(os.environ.get("KILL_AT", "0"))
    calls = [0]

    def hit():
        calls[0] += 1
        return calls[0] == AT

    fit = Classify.fit

    def logged_fit(self, model, **kw):
        if STAGE == "train" and hit():
            os._exit(9)
        with open(os.environ["FITS_LOG"], "a") as f:
            f.write(f"{os.environ.get('RANK', '0')} {torch.initial_seed()}\\n")
        return fit(self, model, **kw)

    Classify.fit = logged_fit
    if STAGE == "temp":
        replace = os.replace

        def dying_replace(src, dst):
            if f"{os.sep}nets{os.sep}" in str(dst) and hit():
                os._exit(9)
            return replace(src, dst)

        os.replace = dying_replace
    if STAGE == "row":
        insert = zoo._insert_row

        def dying_insert(z, row):
            if hit():
                os._exit(9)
            return insert(z, row)

        zoo._insert_row = dying_insert
    sys.exit(main(sys.argv[1:]))
    """
)
BUILD = ["zoo", "build", "--arch", SPEC, "--epochs", "1"]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    path = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "INITIUM_CACHE": str(tmp / "cache")} | extra


def _script(tmp: Path) -> Path:
    script = tmp / "zoo_build.py"
    script.write_text(SCRIPT)
    return script


def _fits(log: Path) -> list[tuple[int, int]]:
    """(rank, seed) of every training, in order."""
    return [tuple(int(v) for v in line.split()) for line in log.read_text().splitlines()] if log.exists() else []


def _rows(path: Path) -> list[dict]:
    """The catalog apart from what differs between two builds of the same nets: row ids, creation
    and training times, and the run records (timings, environment)."""
    skip = {"id", "created", "train_s"}
    return [{k: v for k, v in vars(e).items() if k not in skip} for e in Zoo(path).entries()]


@pytest.fixture(scope="module")
def one_thread():
    """One thread, as each torchrun rank (and the subprocesses: OMP_NUM_THREADS=1): the same arithmetic,
    so every build of a seed gives the same bytes; and 2 shared cores run tiny nets fastest so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo3(tmp_path_factory, one_thread) -> tuple[Path, zoo_module.BuildResult]:
    """The reference: 3 nets (seeds 0, 1, 2), one epoch each, one process."""
    path = tmp_path_factory.mktemp("ref") / "zoo"
    return path, build(path, SPEC, count=3, epochs=1)


@pytest.fixture(scope="module")
def digits():
    task = TASKS.build("classify", {"dataset": "digits", "epochs": 1})
    task.setup(torch.device("cpu"))
    return task


def _copy(src: Path, tmp: Path) -> Path:
    dst = tmp / "zoo"
    shutil.copytree(src, dst)
    return dst


# --- classify trains a ResNet ------------------------------------------------------------------------


def test_classify_trains_a_tiny_resnet(tmp_path, one_thread):
    argv = ["run", "classify", "--arch", SPEC, "--methods", "default", "--seeds", "1", "--epochs", "1",
            "--no-ood", "--no-track", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    (rec,) = load_results(tmp_path)
    assert rec["status"] == "ok" and rec["arch"] == "resnet" and rec["arch_config"]["depth"] == 8
    acc = rec["curve"]["test_acc"]
    assert acc[-1] > 0.3 and acc[-1] > acc[0] + 0.2  # one epoch from chance (0.1) to well above it


# --- build, ls, load ---------------------------------------------------------------------------------


def test_build_stores_each_seed_with_its_row(zoo3):
    path, result = zoo3
    assert (result.trained, result.kept, result.failed) == ((0, 1, 2), (), ())
    assert sorted(os.listdir(path)) == [".build.lock", "catalog.sqlite", "nets"]  # the work folder is gone
    entries = Zoo(path).entries()
    assert [e.seed for e in entries] == [0, 1, 2] and list(result.entries) == entries
    assert sorted(f"nets/{n}" for n in os.listdir(path / "nets")) == sorted(e.file for e in entries)
    for e in entries:
        data = (path / e.file).read_bytes()
        assert e.sha256 == zoo_module.sha256(data) and e.bytes == len(data)
        assert (e.arch, e.arch_spec, e.dataset, e.epochs, e.task, e.lr) == (
            "resnet",
            SPEC,
            "digits",
            1,
            "classify",
            0.01,
        )
        assert e.arch_config == {"in_shape": [1, 8, 8], "out_features": 10, "depth": 8, "width": 4}
        assert e.task_config["epochs"] == 1 and e.task_config["ood"] is False
        assert e.initium_version and e.torch_version == torch.__version__ and e.device == "cpu"
        created = datetime.datetime.fromisoformat(e.created)
        assert created.utcoffset() == datetime.timedelta(0)
        assert 0.3 < e.test_acc <= 1 and 0.3 < e.train_acc <= 1
    assert len({e.sha256 for e in entries}) == 3 and len({e.family for e in entries}) == 1


def test_a_loaded_net_reproduces_its_stored_accuracy(zoo3, digits):
    path, _ = zoo3
    zoo = Zoo(path)
    rng = torch.get_rng_state()
    for e in zoo.entries():
        model = zoo.load(e)
        assert isinstance(model, ResNet) and not model.training  # eval mode: BatchNorm's running statistics
        assert accuracy(model, digits.test_x, digits.test_y) == e.test_acc  # exactly
        assert accuracy(model, digits.inputs, digits.target) == e.train_acc
        # the runner measured the same in its last evaluation (classify scores in eval mode)
        assert zoo.record(e)["curve"]["test_acc"][-1] == pytest.approx(e.test_acc, abs=1e-6)
        fresh = zoo.build_model(e)
        assert accuracy(fresh, digits.test_x, digits.test_y) < e.test_acc - 0.2  # trained weights, not an init
    assert torch.equal(torch.get_rng_state(), rng)  # building models to load leaves the caller's RNG alone
    e = zoo.entries()[0]
    mine = ResNet(8, 4, in_shape=(1, 8, 8), num_classes=10)
    assert zoo.load(e, mine) is mine and mine.training  # into a given model: its mode kept
    state = zoo.state_dict(e)
    assert all(torch.equal(v, state[k]) for k, v in mine.state_dict().items())
    with pytest.raises(ZooError, match="does not fit this model"):
        zoo.load(e, ResNet(8, 8, in_shape=(1, 8, 8), num_classes=10))


def test_entries_filter_and_ls(zoo3, capsys):
    path, _ = zoo3
    zoo = Zoo(path)
    accs = sorted(e.test_acc for e in zoo.entries())
    assert len(zoo.entries(arch="resnet")) == 3 == len(zoo.entries(arch="resnet(width=4, depth=8)"))
    assert zoo.entries(arch="classifier-cnn") == [] and zoo.entries(dataset="mnist1d") == []
    best = [e.seed for e in zoo.entries() if e.test_acc >= accs[1]]
    assert len(best) == 2 and [e.seed for e in zoo.entries(dataset="digits", min_acc=accs[1])] == best
    with pytest.raises(ValueError, match=r"min_acc must be a test accuracy in \[0, 1\]"):
        zoo.entries(min_acc=95)
    assert len(zoo.digest()) == 64 and zoo.digest() == Zoo(path).digest()
    assert main(["zoo", "ls", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 nets" in out and out.count("digits") == 3
    assert main(["zoo", "ls", str(path), "--min-acc", "1.0"]) == 0
    assert "0 of 3 nets" in capsys.readouterr().out


def test_resume_trains_only_the_missing_seeds(zoo3, tmp_path, one_thread):
    path = _copy(zoo3[0], tmp_path)
    before = Zoo(path).entries()
    labels = set()
    result = build(path, SPEC, count=4, epochs=1, progress=lambda ev: labels.add(ev.label))
    assert (result.trained, result.kept) == ((3,), (0, 1, 2))
    assert labels <= {"default · seed 3", "classify"}  # trained seed 3 alone
    assert Zoo(path).entries()[:3] == before  # the kept rows untouched, times included
    again = build(path, SPEC, count=4, epochs=1, progress=lambda ev: pytest.fail("nothing to train"))
    assert again.trained == () and again.kept == (0, 1, 2, 3)
    assert Zoo(path).verify().ok


# --- crashes ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "temp", "row"])
def test_a_killed_build_leaves_a_sound_catalog_and_resumes(zoo3, tmp_path, stage, one_thread):
    """Killed (os._exit, as kill -9) in the 2nd net's training, after its file's temporary write, or
    after the file's rename before its row: the catalog stays sound, and the same build again keeps
    seed 0, stores seed 1 from its finished run (or trains it, if it had not finished), and ends
    with the nets of an uninterrupted build, bit for bit."""
    path, log = tmp_path / "zoo", tmp_path / "fits.log"
    env = _env(tmp_path, FITS_LOG=str(log), KILL_STAGE=stage, KILL_AT="2")
    cmd = [sys.executable, str(_script(tmp_path)), *BUILD, "--count", "2", "--out", str(path)]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 9, killed.stderr[-3000:]
    assert [s for _, s in _fits(log)] == ([0] if stage == "train" else [0, 1])
    # what the kill left: seed 0 stored; seed 1 nowhere, as a temporary file, or as a file without a row
    assert [e.seed for e in Zoo(path).entries()] == [0] and (path / ".work").is_dir()
    nets = sorted(os.listdir(path / "nets"))
    assert len(nets) == (1 if stage == "train" else 2)
    if stage == "temp":
        assert nets[0].startswith(".") and nets[0].endswith(".tmp")

    labels = set()
    result = build(path, SPEC, count=2, epochs=1, progress=lambda ev: labels.add(ev.label))
    finished = stage != "train"  # seed 1's run had finished: its net is stored from the work folder
    assert result.trained == (() if finished else (1,)) and result.kept == ((0, 1) if finished else (0,))
    assert ("default · seed 1" in labels) != finished and "default · seed 0" not in labels
    assert Zoo(path).verify().ok and not (path / ".work").exists()
    assert sorted(os.listdir(path / "nets")) == [Path(e.file).name for e in Zoo(path).entries()]
    assert _rows(path) == _rows(zoo3[0])[:2]  # the same nets, bit for bit, as the uninterrupted build


def test_verify_finds_corrupt_and_missing_files_and_fix_repairs(zoo3, tmp_path, capsys, caplog, monkeypatch):
    path = _copy(zoo3[0], tmp_path)
    zoo = Zoo(path)
    e0, e1, e2 = zoo.entries()
    data = bytearray((path / e0.file).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    (path / e0.file).write_bytes(bytes(data))
    (path / e1.file).unlink()
    (path / "nets" / "stray.safetensors").write_bytes(b"x")
    (path / "nets" / ".resnet-x.safetensors.abc.tmp").write_bytes(b"x")

    report = zoo.verify()
    assert (report.missing, report.corrupt) == ((e1,), (e0,)) and not report.ok and not report.fixed
    assert report.orphans == ("nets/.resnet-x.safetensors.abc.tmp", "nets/stray.safetensors")
    # never parsed: the sha256 check comes first
    monkeypatch.setattr(zoo_module, "load_tensors", lambda data: pytest.fail("a bad file was parsed"))
    with pytest.raises(ZooError, match="sha256 does not match"):
        zoo.load(e0)
    with pytest.raises(ZooError, match=r"seed 1 .* is missing"):
        zoo.state_dict(e1)
    with caplog.at_level(logging.WARNING, logger="initium.zoo"):
        assert zoo.entries(check=True) == [e2]  # reported and skipped
    assert "skipping" in caplog.text and e0.file in caplog.text and e1.file in caplog.text
    monkeypatch.undo()

    assert main(["zoo", "verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"sha256 mismatch: {e0.file}" in err and f"missing file: {e1.file}" in err and "4 problem(s)" in err
    assert main(["zoo", "verify", str(path), "--fix"]) == 0
    assert zoo.entries() == [e2] and os.listdir(path / "nets") == [Path(e2.file).name]
    assert zoo.verify().ok and main(["zoo", "verify", str(path)]) == 0


def test_a_repaired_zoo_rebuilds_the_removed_nets(zoo3, tmp_path, one_thread):
    path = _copy(zoo3[0], tmp_path)
    e0 = Zoo(path).entries()[0]
    (path / e0.file).write_bytes(b"not the net")
    result = build(path, SPEC, count=3, epochs=1)  # a build checks every file first
    assert result.trained == (0,) and _rows(path) == _rows(zoo3[0])


# --- torchrun -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_build_trains_each_seed_once_and_equals_one_process(zoo3, tmp_path):
    path, log = tmp_path / "zoo", tmp_path / "fits.log"
    cmd = [*TORCHRUN, str(_script(tmp_path)), *BUILD, "--count", "3", "--out", str(path)]
    done = subprocess.run(cmd, env=_env(tmp_path, FITS_LOG=str(log)), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(_fits(log)) == [(0, 0), (0, 2), (1, 1)]  # rank r: seeds r, r+2, ...; each once
    assert done.stderr.count("trained 3, kept 0") == 1  # rank 0 alone reports
    assert _rows(path) == _rows(zoo3[0]) and Zoo(path).digest() == Zoo(zoo3[0]).digest()
    assert Zoo(path).verify().ok and not (path / ".work").exists()


def test_concurrent_writers_all_land(tmp_path):
    """The catalog's design under torchrun: every rank inserts its own rows, each insert one
    `BEGIN IMMEDIATE` transaction that waits for the others (busy timeout) rather than failing."""
    zoo = Zoo.create(tmp_path / "zoo")
    row = dict(family="f", arch="a", arch_spec="a", arch_config="{}", task="t", dataset="d", task_config="{}",
               epochs=1, lr=0.1, train_acc=0.5, test_acc=0.5, device="cpu", sha256="0", bytes=1, train_s=0.0,
               created="c", initium_version="v", torch_version="v", record="{}")  # fmt: skip
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for s in range(k, 40, 4):
                assert zoo._insert(row | {"seed": s, "file": f"nets/{s}.safetensors"})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and zoo._seeds("f") == set(range(40))
    assert not zoo._insert(row | {"seed": 3, "file": "nets/again.safetensors"})  # (family, seed) is unique


# --- bad input ----------------------------------------------------------------------------------------


def test_a_folder_that_is_not_a_zoo(tmp_path):
    with pytest.raises(ZooError, match="not a model zoo: no such folder"):
        Zoo(tmp_path / "nope")
    with pytest.raises(ZooError, match=r"not a model zoo: it has no catalog\.sqlite"):
        Zoo(tmp_path)
    (tmp_path / "catalog.sqlite").write_text("hello")
    with pytest.raises(ZooError, match="is not its catalog"):
        Zoo(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / "catalog.sqlite") as db:
        db.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        db.execute("CREATE TABLE nets (id INTEGER)")
    with pytest.raises(ZooError, match="another program's database"):
        Zoo(other)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ZooError, match="is a file"):
        Zoo.create(tmp_path / "file")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ZooError, match=r"not a model zoo .* and not empty"):
        Zoo.create(busy)  # never a zoo on top of other files: its cleanup removes files it does not know
    assert main(["zoo", "ls", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(count=0), ValueError, "count must be an int >= 1, got 0"),
        (dict(count=2.0), ValueError, "count must be an int >= 1"),
        (dict(epochs=0), ValueError, "epochs must be an int >= 1, got 0"),
        (dict(arch="resnet(depth=9)"), ValueError, r"depth must be 6n\+2"),
        (dict(arch="resnett"), ValueError, "unknown architecture 'resnett'; closest: resnet"),
        (dict(arch="resnet(depth=8,in_shape=(3,32,32))"), ValueError, "in_shape is set by the task"),
        (dict(dataset="cifar"), ValueError, "dataset"),
        (dict(lr=-1.0), ValueError, "lr must be > 0 and finite"),
        (dict(task_options={"epochs": 3}), ValueError, "give epochs as build's own argument"),
    ],
)
def test_bad_build_input_fails_before_any_work(tmp_path, kwargs, error, match):
    args = dict(arch=SPEC, count=2, epochs=1) | kwargs
    with pytest.raises(error, match=match):
        build(tmp_path / "zoo", **args)
    assert not (tmp_path / "zoo").exists()


@pytest.mark.parametrize("count", ["0", "-3", "many"])
def test_cli_count_must_be_positive(tmp_path, capsys, count):
    with pytest.raises(SystemExit) as exc:
        main([*BUILD, "--count", count, "--out", str(tmp_path / "zoo")])
    assert exc.value.code == 2 and "--count" in capsys.readouterr().err
    assert not (tmp_path / "zoo").exists()


def test_cli_bad_arch_exits_2_before_work(tmp_path, capsys):
    assert main(["zoo", "build", "--arch", "resnet(depth=10)", "--count", "2", "--out", str(tmp_path / "z")]) == 2
    assert "depth must be 6n+2" in capsys.readouterr().err and not (tmp_path / "z").exists()


def test_a_catalog_cannot_point_outside_its_zoo(zoo3, tmp_path):
    path = _copy(zoo3[0], tmp_path)
    with sqlite3.connect(path / "catalog.sqlite") as db:
        db.execute("UPDATE nets SET file = '../../etc/passwd' WHERE seed = 0")
    zoo = Zoo(path)
    with pytest.raises(ZooError, match="not a file under nets/"):
        zoo.load(zoo.entries()[0])


def test_fix_and_build_are_refused_while_another_build_writes(zoo3, tmp_path):
    path = _copy(zoo3[0], tmp_path)
    zoo = Zoo(path)
    with zoo._lock():  # as a running build holds it
        with pytest.raises(ZooError, match="being written by another build"):
            zoo.verify(fix=True)
        with pytest.raises(ZooError, match="being written by another build"):
            build(path, SPEC, count=4, epochs=1)
        assert zoo.verify().ok  # reading needs no lock
