from __future__ import annotations

import pytest
import torch
from torch import nn

import initium.memory
from initium.memory import MemoryEstimate, check_fits, format_bytes, machine_memory, step_bytes
from initium.runner import RunConfig, run
from initium.tasks import TASKS

GiB = 1 << 30


def test_format_bytes():
    assert [format_bytes(n) for n in (512, 1536, 3 * GiB, 112 << 40)] == ["512 B", "1.5 KiB", "3 GiB", "112 TiB"]


def test_step_bytes_grows_with_the_input_and_allocates_nothing():
    net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 3))
    small, huge = step_bytes(net, (10**5, 2)), step_bytes(net, (10**10, 2))  # 10^10 points: measured on meta
    assert small is not None and huge is not None and huge == pytest.approx(small * 10**5, rel=1e-3)  # + weights
    assert small >= 2 * 10**5 * 64 * 4  # at least the hidden activations, twice (forward and backward)
    assert next(net.parameters()).device.type == "cpu"  # the model itself is left where it was


def test_step_bytes_is_none_for_a_forward_that_reads_values():
    class Reads(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * float(x.sum())  # .item() on meta: no value to read

    assert step_bytes(Reads(), (10, 2)) is None


def test_machine_memory_is_the_ram_on_the_cpu():
    have, what = machine_memory(torch.device("cpu"))
    assert what == "RAM" and have > 256 << 20


def _estimate():
    return MemoryEstimate(
        "--size", 1000, {"image": 2 * GiB, "grid": 1 * GiB, "step": 5 * GiB}, host=frozenset({"image"})
    )


def test_check_fits_on_the_cpu_counts_everything_against_the_ram(monkeypatch):
    monkeypatch.setattr(initium.memory, "_ram", lambda: 7 * GiB)
    message = (
        r"--size 1000 needs about 8 GiB of RAM \(image 2 GiB, grid 1 GiB, step 5 GiB\), but this machine has 7 GiB;"
        r" use a smaller --size \(at most about 935 would fit\)"
    )
    with pytest.raises(ValueError, match=message):
        check_fits(_estimate(), torch.device("cpu"))
    monkeypatch.setattr(initium.memory, "_ram", lambda: 8 * GiB)
    check_fits(_estimate(), torch.device("cpu"))
    check_fits(None, torch.device("cpu"))  # a task with nothing to estimate


def test_check_fits_on_a_gpu_counts_the_host_parts_against_the_ram(monkeypatch):
    memory = {"cpu": (3 * GiB, "RAM"), "cuda": (5 * GiB, "memory on cuda:0 (a test GPU)")}
    monkeypatch.setattr(initium.memory, "machine_memory", lambda device: memory[device.type])
    with pytest.raises(ValueError, match=r"needs about 6 GiB of memory on cuda:0 \(a test GPU\) \(grid 1 GiB, step"
                       r" 5 GiB\), but this machine has 5 GiB"):  # fmt: skip
        check_fits(_estimate(), torch.device("cuda", 0))  # the image is decoded in the RAM: 1 + 5 on the GPU
    memory["cuda"] = (6 * GiB, "memory on cuda:0 (a test GPU)")
    check_fits(_estimate(), torch.device("cuda", 0))
    memory["cpu"] = (1 * GiB, "RAM")
    with pytest.raises(ValueError, match=r"needs about 2 GiB of RAM \(image 2 GiB\)"):
        check_fits(_estimate(), torch.device("cuda", 0))


def test_oversized_work_is_refused_before_the_image_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr("initium.tasks.image_fit.load_image", lambda *a, **k: pytest.fail("the image was loaded"))
    cfg = RunConfig(task="image-fit", out=tmp_path / "o", methods=("default",), seeds=(0,), steps=5,
                    task_options={"image": "coffee", "size": 100_000})  # fmt: skip
    message = (
        r"--size 100000 needs about .* TiB of RAM \(image \(resizing\) .*coordinate grid .* one training step of"
        r" siren .*\), but this machine has .*; use a smaller --size"
    )
    with pytest.raises(ValueError, match=message):
        run(cfg)
    assert not (tmp_path / "o").exists()  # nothing written either


@pytest.mark.parametrize("task", ["image-fit", "dip-denoise", "ct"])
def test_the_estimate_grows_with_the_square_of_the_size(task):
    def total(size: int) -> int:
        t = TASKS.build(task, {"size": size})
        est = t.estimate_memory(*t.parse_arch(t.default_arch))
        assert est is not None and est.option == "--size" and est.value == size
        return est.total()

    assert total(512) == pytest.approx(4 * total(256), rel=0.05)  # the weights stay as they are


def test_a_size_that_fits_runs(tmp_path, monkeypatch):
    est = TASKS.build("image-fit", {"size": 16}).estimate_memory("siren", {"hidden": 8})
    monkeypatch.setattr(initium.memory, "_ram", lambda: est.total() + 1)  # just enough
    cfg = RunConfig(task="image-fit", out=tmp_path, arch="siren(hidden=8)", methods=("default",), seeds=(0,),
                    steps=2, task_options={"image": "coffee", "size": 16})  # fmt: skip
    assert [r["status"] for r in run(cfg)] == ["ok"]
    monkeypatch.setattr(initium.memory, "_ram", lambda: est.total() - 1)
    with pytest.raises(ValueError, match="--size 16 needs about"):
        run(cfg)
