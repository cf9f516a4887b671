from __future__ import annotations

import os

import pytest
import torch

import initium
from initium.cache import CacheError, InitCache
from initium.nn import Siren
from initium.tasks import grid


def _model(seed=0):
    torch.manual_seed(seed)
    return Siren(2, 1, hidden=16)


class Forwards:
    """Counts the training forward passes of a model (those with autograd on); the probe that
    checks the model and fingerprints what it computes runs under no_grad and is not counted."""

    def __init__(self, model):
        self.n = 0
        model.register_forward_hook(lambda *_: setattr(self, "n", self.n + torch.is_grad_enabled()))


def test_second_identical_call_is_a_hit(tmp_path):
    store = InitCache(tmp_path)
    coords = grid(8, 8)
    first = initium.noise_pretrain(_model(), coords, steps=10, cache=store)
    second = _model()
    calls = Forwards(second)
    initium.noise_pretrain(second, coords, steps=10, cache=store)
    assert calls.n == 0  # no training step (only the no_grad probe)
    for (k, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert len(store.entries()) == 1


CHANGES = {
    "seed": dict(seed=1),
    "steps": dict(steps=6),
    "noise": dict(noise="uniform"),
    "noise options": dict(noise="spectral(alpha=1)"),
    "lr": dict(lr=2e-4),
    "resample": dict(resample=True),
    "target_range": dict(target_range=(0.0, 2.0)),
}


@pytest.mark.parametrize("change", [*CHANGES, "inputs", "model"])
def test_anything_that_matters_changes_the_key(tmp_path, change):
    store = InitCache(tmp_path)
    base = dict(steps=5, seed=0, noise="spectral(alpha=2)")
    initium.noise_pretrain(_model(), grid(8, 8), cache=store, **base)
    kw = base | CHANGES.get(change, {})
    model = _model(seed=1) if change == "model" else _model()
    coords = grid(8, 8) * 0.5 if change == "inputs" else grid(8, 8)
    calls = Forwards(model)
    initium.noise_pretrain(model, coords, cache=store, **kw)
    assert calls.n > 0
    assert len(store.entries()) == 2


def test_default_cache_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("INITIUM_CACHE", str(tmp_path / "elsewhere"))
    initium.noise_pretrain(_model(), grid(4, 4), steps=2)
    assert len(InitCache(tmp_path / "elsewhere").entries()) == 1


def test_corrupted_entry_is_discarded_and_recomputed(tmp_path):
    store = InitCache(tmp_path)
    coords = grid(8, 8)
    reference = initium.noise_pretrain(_model(), coords, steps=10, cache=store).state_dict()
    (entry,) = store.entries()
    data = bytearray(entry.path.read_bytes())
    data[-5] ^= 0xFF
    entry.path.write_bytes(bytes(data))
    again = _model()
    calls = Forwards(again)
    with pytest.warns(RuntimeWarning, match="corrupted"):
        initium.noise_pretrain(again, coords, steps=10, cache=store)
    assert calls.n > 0  # recomputed
    assert all(torch.equal(reference[k], v) for k, v in again.state_dict().items())
    (fresh,) = store.entries()
    assert store.load(fresh.key) is not None  # the rewritten entry verifies


def test_unwritable_cache_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    model = _model()
    calls = Forwards(model)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(CacheError, match="INITIUM_CACHE"):
        initium.noise_pretrain(model, grid(4, 4), steps=5, cache=InitCache(blocker / "cache"))
    assert calls.n == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_no_partial_entry_when_the_commit_fails(tmp_path, monkeypatch):
    store = InitCache(tmp_path)

    def fail(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("initium.cache.atomic_write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        initium.noise_pretrain(_model(), grid(4, 4), steps=3, cache=store)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".probe")]
    assert leftovers == []


def test_no_entry_when_pretraining_diverges(tmp_path):
    store = InitCache(tmp_path)

    class Exploding(torch.nn.Module):
        in_features = 2

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.lin(x) * 1e30  # finite outputs (the probe passes), a squared error that overflows

    with pytest.raises(FloatingPointError):
        initium.noise_pretrain(Exploding(), grid(4, 4), steps=3, cache=store)
    assert store.entries() == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_writes_leave_no_temp_files_and_clear_empties(tmp_path):
    store = InitCache(tmp_path)
    for seed in range(3):
        initium.noise_pretrain(_model(), grid(4, 4), steps=2, seed=seed, cache=store)
    names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith(".tmp")]
    assert len(store.entries()) == 3
    assert store.clear() == 3 and store.entries() == []
    assert os.path.isdir(tmp_path)
