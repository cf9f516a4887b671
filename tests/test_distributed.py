from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from initium import distributed
from initium._io import append_line
from initium.records import ELAPSED
from initium.runner import RunConfig, load_results, resolve_device, run
from initium.tasks import TASKS

SRC = Path(__file__).resolve().parents[1] / "src"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
METHODS = ("default", "noise(steps=5,cache=False)")  # no cache: a retried init is not a cache hit
SWEEP = ["--image", "camera", "--size", "16", "--arch", "siren(hidden=16)", "--steps", "10",
         "--methods", ",".join(METHODS), "--seeds", "2"]  # fmt: skip
# The kill test's task: image-fit (records identical to it) whose rank $KILL_RANK dies at its
# $KILL_AT-th training, as a crash or a lost machine would, before that run's record is written.
KILLABLE = textwrap.dedent(
    """
    import os, sys
    from initium.cli import main
    from initium.tasks import TASKS
    from initium.tasks.image_fit import ImageFit, ImageFitConfig

    @TASKS.register("image-fit-killable", ImageFitConfig)
    class Killable(ImageFit):
        fits = 0

        def fit(self, model, **kwargs):
            Killable.fits += 1
            if os.environ.get("KILL_RANK") == os.environ["RANK"] and Killable.fits == int(os.environ["KILL_AT"]):
                os._exit(1)
            with open(os.environ["FITS_LOG"], "a") as f:
                f.write(os.environ["RANK"] + "\\n")
            return super().fit(model, **kwargs)

    sys.exit(main(sys.argv[1:]))
    """
)


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    path = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "INITIUM_CACHE": str(tmp / "cache")} | extra


def _comparable(records: list[dict]) -> list[dict]:
    """Everything but the timings (the wall times, the curve's elapsed seconds), the environment
    (threads, which GPU) and the command line (its --out differs)."""
    return [
        {k: v for k, v in r.items() if k not in ("wall", "env", "command")}
        | {"curve": {k: v for k, v in r["curve"].items() if k != ELAPSED}}
        for r in records
    ]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The sweep as one process runs it (one thread, as each torchrun rank below)."""
    out = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("INITIUM_CACHE", str(out / "cache"))
            cfg = RunConfig(task="image-fit", out=out, arch="siren(hidden=16)", methods=METHODS, seeds=(0, 1),
                            steps=10, task_options={"image": "camera", "size": 16})  # fmt: skip
            records = run(cfg)
    finally:
        torch.set_num_threads(threads)
    assert [(r["method"], r["seed"]) for r in records] == [(m, s) for m in METHODS for s in (0, 1)]
    return records


@pytest.mark.slow
def test_torchrun_sweep_gives_the_one_process_records(tmp_path, one_process):
    out = tmp_path / "out"
    cmd = [*TORCHRUN, "-m", "initium.cli", "run", "image-fit", *SWEEP, "--out", str(out)]
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("psnr@10") == 1  # rank 0 alone prints the table
    assert not list(out.glob("results.rank*.jsonl"))
    lines = (out / "results.jsonl").read_text().splitlines()
    assert _comparable([json.loads(x) for x in lines]) == _comparable(one_process)
    assert {json.loads(x)["env"]["threads"] for x in lines} == {1}


@pytest.mark.slow
def test_a_sweep_killed_on_one_rank_resumes_to_the_same_end(tmp_path, one_process):
    script, out, fits = tmp_path / "killable.py", tmp_path / "out", tmp_path / "fits.log"
    script.write_text(KILLABLE)
    cmd = [*TORCHRUN, str(script), "run", "image-fit-killable", *SWEEP, "--out", str(out)]
    env = _env(tmp_path, FITS_LOG=str(fits))
    killed = subprocess.run(cmd, env=env | {"KILL_RANK": "1", "KILL_AT": "2"}, capture_output=True, timeout=120)
    assert killed.returncode != 0
    assert not (out / "results.jsonl").exists()  # no merge happened
    (first,) = [json.loads(x) for x in (out / "results.rank1.jsonl").read_text().splitlines()]
    assert (first["method"], first["seed"]) == ("default", 1)  # rank 1's runs: (default, 1), (noise, 1)
    kept = load_results(out)  # rank 0 may have finished 0, 1 or 2 runs before torchrun stopped it
    fits.unlink()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(fits.read_text().split()) == 4 - len(kept)  # only the runs not recorded were trained
    assert not list(out.glob("results.rank*.jsonl"))
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert _comparable(records) == _comparable(one_process)  # each run once, in the one-process order


def _rec(method: str, seed: int, **kw: object) -> str:
    """A record with the fields every finished run's record has (records.RECORD_FIELDS, FINISHED_FIELDS)."""
    base = {"task": "t", "arch": "a", "method": method, "seed": seed, "status": "ok", "steps": 1, "metric": "m"}
    return json.dumps(base | {"curve": {}, "wall": {}} | kw)


def test_load_results_merges_shards_later_records_win(tmp_path, caplog):
    (tmp_path / "results.jsonl").write_text(
        "\n".join([_rec("a", 0, status="diverged"), _rec("b", 0), '{"task": "t", "trunc']) + "\n"
    )
    (tmp_path / "results.rank0.jsonl").write_text("\n".join([_rec("a", 0), "[1, 2]", "{}"]) + "\n")
    (tmp_path / "results.rank1.jsonl").write_text(_rec("c", 1) + "\n" + '{"task": "t", "meth')  # torn last line
    with caplog.at_level(logging.WARNING, logger="initium.runner"):
        records = load_results(tmp_path)
    assert [(r["method"], r["status"]) for r in records] == [("b", "ok"), ("a", "ok"), ("c", "ok")]
    assert len(caplog.records) == 4  # the two torn lines, [1, 2] and {}

    append_line(tmp_path / "results.rank1.jsonl", _rec("d", 2))  # starts a line of its own after the torn one
    assert [r["method"] for r in load_results(tmp_path)] == ["b", "a", "c", "d"]


def test_save_weights_reproduce_the_final_metric(tmp_path, monkeypatch):
    monkeypatch.setenv("INITIUM_CACHE", str(tmp_path / "cache"))
    cfg = RunConfig(task="image-fit", out=tmp_path, arch="siren(hidden=16)", methods=("default",), seeds=(0, 1),
                    steps=10, task_options={"image": "camera", "size": 16}, save_weights=True)  # fmt: skip
    records = run(cfg)
    task = TASKS.build("image-fit", {"image": "camera", "size": 16})
    task.setup(torch.device("cpu"))
    for rec in records:
        model = task.build_model(rec["arch"], {"hidden": 16})
        model.load_state_dict(load_file(tmp_path / rec["weights"]))
        with torch.no_grad():
            psnr = task.evaluate(model(task.inputs))["psnr"]
        final, start = rec["curve"]["psnr"][-1], rec["curve"]["psnr"][0]
        assert psnr == pytest.approx(final, abs=1e-4) and abs(final - start) > 0.1  # the trained weights, not the init
    assert records[0]["weights"] != records[1]["weights"]


def test_resolve_device_takes_the_local_rank_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None, local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)  # a bare "cuda": this rank's GPU
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # an explicit one as given
    assert distributed.device_for(distributed.Rank(1, 2, 1), None) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="LOCAL_RANK 2: this machine has 2 CUDA"):
        resolve_device(None, local_rank=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None, local_rank=1) == torch.device("cpu")


def test_rank_info_and_shard(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.rank_info() == distributed.Rank(0, 1, 0) and distributed.init() == distributed.Rank(0, 1, 0)
    assert not distributed.is_joined()  # one process joins no group
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    me = distributed.rank_info()
    assert me == distributed.Rank(3, 4, 1) and me.is_distributed and not me.is_main
    assert distributed.shard(range(10), me) == [3, 7]
    shares = [distributed.shard("abcdefg", distributed.Rank(r, 3)) for r in range(3)]
    assert shares == [list("adg"), list("be"), list("cf")]
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4, WORLD_SIZE=4"):
        distributed.rank_info()
