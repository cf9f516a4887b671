from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings

import pytest
import torch

import initium
from initium._io import sha256, tensors_to_bytes
from initium.cache import CacheError, InitCache
from initium.cli import main
from initium.methods.noise import NoiseConfig, NoisePretrain
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


def _pretrained(store, steps=5, **kw):
    """A fresh model (seed 0), pretrained through the method (``store=None``: no cache); returns
    (model, what the cache did)."""
    model = _model()
    method = NoisePretrain(NoiseConfig(steps=steps, cache=store is not None, **kw), store=store)
    method(model, grid(4, 4))
    return model, method.info["cache"]


def test_unwritable_cache_computes_without_storing_with_one_warning(tmp_path):
    """A cache folder that cannot be created (its parent is a file) was an error before any work."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    store = InitCache(blocker / "cache")
    with pytest.warns(RuntimeWarning, match=r"not writable \(Not a directory\): pretraining without storing") as got:
        model, cache = _pretrained(store)
    assert len(got) == 1 and cache == "miss"
    expected, _ = _pretrained(None)  # the same pretraining without any cache
    assert all(torch.equal(a, b) for a, b in zip(expected.parameters(), model.parameters(), strict=True))
    assert store.entries() == [] and blocker.read_text() == ""


def test_read_only_cache_serves_hits_and_computes_misses_without_storing(tmp_path, monkeypatch):
    """Tests run as root, where chmod stops no write: the cache is made read-only by its probe
    answering as a read-only mount does and by every write failing as it would there."""
    store = InitCache(tmp_path)
    reference, _ = _pretrained(store)
    (entry,) = store.entries()

    def read_only(*_a, **_k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(InitCache, "unwritable", lambda self: "Read-only file system")
    monkeypatch.setattr("initium.cache.atomic_write_bytes", read_only)
    monkeypatch.setattr("initium.cache.atomic_write_json", read_only)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a hit needs no write: no warning at all
        hit, cache = _pretrained(store)
    assert cache == "hit"
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), hit.parameters(), strict=True))
    with pytest.warns(RuntimeWarning, match="Read-only file system.*pretraining without storing") as got:
        _, cache = _pretrained(store, steps=6)
    assert cache == "miss" and len(got) == 1
    assert [e.key for e in store.entries()] == [entry.key]


def test_ensure_writable_still_raises_for_callers_that_must_store(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(CacheError, match="INITIUM_CACHE"):
        InitCache(blocker / "cache").ensure_writable()


def test_a_failed_store_keeps_the_work_and_leaves_no_partial_entry(tmp_path, monkeypatch):
    store = InitCache(tmp_path)

    def fail(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("initium.cache.atomic_write_json", fail)
    with pytest.warns(RuntimeWarning, match="could not store.*No space left on device.*the model is pretrained"):
        model, _ = _pretrained(store)
    expected, _ = _pretrained(None)
    assert all(torch.equal(a, b) for a, b in zip(expected.parameters(), model.parameters(), strict=True))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


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


def _break_record(entry, text):
    entry.path.with_suffix(".json").write_text(text)


def _break_tensors(entry, tensors):
    """Weights that safetensors reads and whose checksum matches, but that are not the model's."""
    _break_weights(entry, tensors_to_bytes(tensors))


def _break_weights(entry, data):
    """A weights file with a matching checksum: the record vouches for it."""
    entry.path.write_bytes(data)
    meta = json.loads(entry.path.with_suffix(".json").read_text())
    entry.path.with_suffix(".json").write_text(json.dumps({**meta, "sha256": sha256(data)}))


BAD_ENTRIES = {
    "json list": lambda e: _break_record(e, "[1, 2, 3]"),
    "json null": lambda e: _break_record(e, "null"),
    "json string": lambda e: _break_record(e, '"x"'),
    "no checksum": lambda e: _break_record(e, '{"created": 1}'),
    "not json": lambda e: _break_record(e, "{oops"),
    "other tensors": lambda e: _break_tensors(e, {"x": torch.zeros(3)}),
    "wrong shapes": lambda e: _break_tensors(e, {k: torch.zeros(2) for k in _model().state_dict()}),
    "not safetensors": lambda e: _break_weights(e, b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage"),
}


@pytest.mark.parametrize("bad", BAD_ENTRIES)
def test_an_entry_that_parses_but_is_wrong_is_discarded_recomputed_and_never_jams(tmp_path, monkeypatch, bad):
    """Each of these made every later call raise (and `initium cache ls|clear` fail) before."""
    store = InitCache(tmp_path)
    reference, _ = _pretrained(store)
    (entry,) = store.entries()
    BAD_ENTRIES[bad](entry)
    monkeypatch.setenv("INITIUM_CACHE", str(tmp_path))
    assert main(["cache", "ls"]) == 0  # lists the good entries, warns about the bad one
    with pytest.warns(RuntimeWarning, match="corrupted or does not fit.*recomputing"):
        model, cache = _pretrained(store)
    assert cache == "miss"
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), model.parameters(), strict=True))
    _, cache = _pretrained(store)
    assert cache == "hit"  # the fresh entry replaced the bad one
    BAD_ENTRIES[bad](store.entries()[0])
    assert main(["cache", "clear"]) == 0
    assert store.entries() == [] and not list(tmp_path.rglob("*.json"))


def test_listing_leaves_out_unreadable_records_with_a_warning(tmp_path, caplog):
    store = InitCache(tmp_path)
    _pretrained(store)
    _pretrained(store, steps=6)
    first, second = store.entries()
    _break_record(first, "null")
    assert [e.key for e in store.entries()] == [second.key]
    assert "left out 1 entry that cannot be read" in caplog.text and "cache clear" in caplog.text
    assert store.clear() == 2


class Sine(torch.nn.Module):
    """sin(w0 x): ``w0`` is a plain attribute, not in ``repr`` (as an activation's width often is)."""

    def __init__(self, w0=1.0):
        super().__init__()
        self.w0 = w0

    def forward(self, x):
        return torch.sin(self.w0 * x)


def _sine_net(w0):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), Sine(w0), torch.nn.Linear(16, 1))


def test_an_attribute_that_repr_does_not_show_changes_the_key(tmp_path):
    """Stale hit before: the old pretrained weights came back for w0=30 in milliseconds."""
    store = InitCache(tmp_path)
    assert repr(_sine_net(1.0)) == repr(_sine_net(30.0))
    for w0, expected in ((1.0, "miss"), (1.0, "hit"), (30.0, "miss")):
        method = NoisePretrain(NoiseConfig(steps=3), store=store)
        method(_sine_net(w0), grid(4, 4))
        assert method.info["cache"] == expected, w0
    assert len(store.entries()) == 2


def _key_of_edited_net(tmp_path, monkeypatch, tag, forward):
    """The key of ``Net`` from a module ``edited_net`` written with the given forward body and
    imported as the one of that name: the same module, class name, repr and weights, as after a
    user edits the file and starts again."""
    folder = tmp_path / tag
    folder.mkdir()
    path = folder / "edited_net.py"
    path.write_text(
        "import torch\n\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        f"        self.lin = torch.nn.Linear(2, 1)\n\n    def forward(self, x):\n        return {forward}\n"
    )
    spec = importlib.util.spec_from_file_location("edited_net", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "edited_net", module)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.Net()
    assert repr(net) == "Net(\n  (lin): Linear(in_features=2, out_features=1, bias=True)\n)"
    return InitCache.key(net, grid(4, 4), {"method": "noise"})


@pytest.mark.parametrize(
    "edited",
    [
        "torch.tanh(self.lin(x))",  # computes something else
        "self.lin(x) + 0.0 * x.sum()",  # the same outputs at these inputs: the source tells them apart
    ],
)
def test_an_edited_forward_changes_the_key(tmp_path, monkeypatch, edited):
    original = _key_of_edited_net(tmp_path, monkeypatch, "a", "self.lin(x)")
    assert _key_of_edited_net(tmp_path, monkeypatch, "b", "self.lin(x)") == original
    assert _key_of_edited_net(tmp_path, monkeypatch, "c", edited) != original


def test_a_class_without_source_is_fingerprinted_by_its_code():
    """A class defined in ``python -c`` or ``exec`` has no source file: its compiled code stands in."""

    def define(body):
        scope = {"torch": torch}
        exec(  # a class with no source on disk
            "class Plain(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            f"        self.lin = torch.nn.Linear(2, 1)\n    def forward(self, x):\n        return {body}\n",
            scope,
        )
        torch.manual_seed(0)
        return scope["Plain"]()

    coords, config = grid(4, 4), {"method": "noise"}
    keys = [InitCache.key(define(body), coords, config) for body in ("self.lin(x)", "self.lin(x)", "self.lin(x) * 1")]
    assert keys[0] == keys[1] != keys[2]
