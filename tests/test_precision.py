"""``--precision``: what each setting means on which device, and what bf16 costs in accuracy."""

from __future__ import annotations

import pytest
import torch

from initium.metrics import psnr_from_mse
from initium.nn import Siren
from initium.precision import matmul_precision, resolve_precision
from initium.train import fit


def test_auto_is_fp32_on_cpu_and_tf32_on_cuda():
    assert resolve_precision(None, torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "tf32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("auto", torch.device("cuda"), supported=("fp32",)) == "fp32"  # e.g. classify


def test_a_task_refuses_a_precision_it_does_not_honour(tmp_path):
    from initium.runner import RunConfig, run

    cfg = RunConfig(task="classify", out=tmp_path, arch="mlp(hidden=(8,))", methods=("default",), seeds=(0,),
                    precision="bf16", task_options={"epochs": 1})  # fmt: skip
    with pytest.raises(ValueError, match="task 'classify' trains in fp32 only"):
        run(cfg)
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize(("name", "message"), [("tf32", "needs a CUDA device"), ("fp16", "is not one of")])
def test_bad_precision(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_precision(name, torch.device("cpu"))


def test_tf32_flags_are_set_inside_and_restored_after():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with pytest.raises(RuntimeError), matmul_precision("tf32"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        raise RuntimeError
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_bf16_step_runs_in_bf16_and_follows_fp32_early(camera64):
    x, y = camera64.inputs, camera64.target.mean(dim=1, keepdim=True)
    dtypes = []

    def curve(precision):
        torch.manual_seed(0)
        model = Siren(2, 1, hidden=64)
        history = fit(model, x, y, steps=150, lr=1e-4, precision=precision, evaluate_at=[150],
                      on_eval=lambda _s, p: dtypes.append(p.dtype))  # fmt: skip
        return psnr_from_mse(history)

    fp32, bf16 = curve("fp32"), curve("bf16")
    assert dtypes == [torch.float32, torch.bfloat16]  # the forward pass really ran in bfloat16
    gap = (fp32 - bf16).abs()
    assert fp32[-1] > 25  # a real fit, ...
    assert gap.max() < 0.3  # ... which bf16 tracks to the 0.3 dB below 30 dB
    assert gap.max() > 0  # (and not by running fp32)
