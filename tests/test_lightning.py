"""The Lightning callback: the same weights as the direct call, once, and never again on resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import initium

L = pytest.importorskip("lightning.pytorch")
from initium.integrations.lightning import InitCallback, batch_inputs  # noqa: E402

SPEC = "rwf+noise(steps=5,cache=False)"


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class Capture(L.Callback):
    """The module's weights when fit starts, after the callbacks before it."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, generator=gen) * 2 - 1
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True).sin()), batch_size=16, shuffle=False)


def _trainer(tmp_path, steps: int, callbacks: list[L.Callback]) -> L.Trainer:
    return L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks,
    )  # fmt: skip


def test_callback_matches_direct_call_and_skips_on_resume(tmp_path, monkeypatch):
    torch.manual_seed(0)
    module = Regressor()
    direct = copy.deepcopy(module.net)
    loader = _loader()
    x = next(iter(loader))[0]  # the batch the callback takes: the loader's first (not shuffled)
    initium.create(SPEC, seed=0)(direct, x)

    init, capture = InitCallback(SPEC, submodule="net"), Capture()
    first = _trainer(tmp_path, 4, [init, capture])
    first.fit(module, loader)
    # exact: the callback is the direct call on the same model, batch and seed
    expected = {f"net.{k}": v for k, v in direct.state_dict().items()}
    assert capture.state.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(capture.state[k], v), k
    assert init.summary is not None and init.summary["inputs_shape"] == [16, 2]
    assert "0.weight" in init.summary["removed"] and "0.parametrizations.weight.original0" in init.summary["added"]
    # the optimizer was rebuilt: training moved the new parameters (s and V) away from the init
    trained = module.state_dict()
    assert not torch.equal(
        trained["net.0.parametrizations.weight.original0"], expected["net.0.parametrizations.weight.original0"]
    )
    ckpt = tmp_path / "run.ckpt"
    first.save_checkpoint(ckpt)

    # resuming into a freshly built module: no init runs (its noise part is never called), the
    # module gets rwf's structure and then the checkpoint's weights
    calls = []
    resumed_init = InitCallback(SPEC, submodule="net")
    noise = resumed_init.method.methods[1]
    monkeypatch.setattr(type(noise), "__call__", lambda self, *a: calls.append(a))
    capture2 = Capture()
    _trainer(tmp_path, 6, [resumed_init, capture2]).fit(Regressor(), _loader(), ckpt_path=ckpt)
    assert calls == []
    assert resumed_init.summary == init.summary  # restored from the checkpoint's callback state
    assert capture2.state.keys() == trained.keys()
    for k, v in trained.items():
        assert torch.equal(capture2.state[k], v), k


def test_batch_inputs_and_bad_arguments():
    x, y = torch.ones(3, 2), torch.zeros(3)
    assert batch_inputs((x, y)) is x and batch_inputs([x, y], 1) is y and batch_inputs(x) is x
    assert batch_inputs({"coords": x, "rgb": y}, "coords") is x
    assert batch_inputs((x, y), lambda b: b[1]) is y
    with pytest.raises(ValueError, match="no key 'x'"):
        batch_inputs({"coords": x}, "x")
    with pytest.raises(ValueError, match="pass inputs="):
        batch_inputs({"coords": x})
    with pytest.raises(ValueError, match="batches"):
        InitCallback("rwf", batches=0)
    with pytest.raises(ValueError, match="closest"):
        InitCallback("noise", step=3)  # misspelt option: fails when the callback is built


class DictRegressor(Regressor):
    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        return nn.functional.mse_loss(self(batch["coords"]), batch["value"])


def test_callback_concatenates_batches_of_dicts(tmp_path):
    x = torch.linspace(-1, 1, 64).unsqueeze(1).repeat(1, 2)
    data = [{"coords": x[i], "value": x[i, :1].sin()} for i in range(64)]
    loader = DataLoader(data, batch_size=16)  # default collate: dicts of stacked tensors
    torch.manual_seed(0)
    module = DictRegressor()
    direct = copy.deepcopy(module)
    initium.create("noise(steps=3,cache=False)", seed=7)(direct, x[:32])  # the first two batches
    init, capture = InitCallback("noise(steps=3,cache=False)", seed=7, batches=2, inputs="coords"), Capture()
    _trainer(tmp_path, 1, [init, capture]).fit(module, loader)
    assert init.summary["inputs_shape"] == [32, 2] and init.summary["added"] == []
    for k, v in direct.state_dict().items():
        assert torch.equal(capture.state[k], v), k
