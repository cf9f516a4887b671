"""Content-addressed store of computed initialisations (DESIGN.md section 5).

An entry is ``ROOT/<key[:2]>/<key>.safetensors`` (the weights) and ``<key>.json`` (what made them
and the weights file's sha256). The key hashes everything the result depends on: the model's
class, structure (``repr``) and every parameter and buffer value before the method ran, what the
model computes (a digest of its outputs at the inputs, and the source of its module classes: an
edited ``forward`` or an attribute that ``repr`` does not show changes the key), the inputs'
shape, dtype and values, the method's config, the device type and the torch version.

Both files are written atomically, weights first: the JSON is the commit record, so a crash
between the two leaves at most an orphan weights file (``clear`` removes it), never an entry
that loads. On load the entry is verified (its record, the checksum, tensors that fit the model);
an entry that fails is discarded with a warning and the caller recomputes: no bad entry can jam
the cache. A cache that cannot be written still serves its hits; the caller computes a miss
without storing it (:meth:`InitCache.unwritable` says why).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import marshal
import os
import shutil
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from ._io import atomic_write_bytes, atomic_write_json, remove_stale_temps, sha256, temp_prefix, tensors_to_bytes

__all__ = [
    "CacheEntry", "CacheError", "InitCache", "default_cache_dir", "output_digest", "probe_forward", "source_digest",
    "tensor_digest",
]  # fmt: skip

log = logging.getLogger(__name__)
FORMAT = 2  # bump when the key recipe changes, so old entries are never mistaken for new ones (2: function)


class CacheError(OSError):
    """The cache folder cannot be used (not creatable or not writable)."""


def default_cache_dir() -> Path:
    """``$INITIUM_CACHE``, else ``~/.cache/initium`` (read at call time, not import time)."""
    return Path(os.environ.get("INITIUM_CACHE") or Path.home() / ".cache" / "initium")


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def probe_forward(model: torch.nn.Module, inputs: torch.Tensor) -> Any:
    """``model(inputs)`` as training would compute it, leaving no trace: under ``no_grad``, in the
    modules' own train/eval modes, with the random number generators that dropout draws from set to
    a fixed seed (so that the output is a function of the model alone) and restored after, and
    every buffer (BatchNorm's running statistics) put back as it was. Methods check a model with
    it before any work, and the cache fingerprints what the model computes from its output."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    cuda = [inputs.device] if inputs.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(0)
        for device in cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(0)  # this device only: fork_rng restores no other
        try:
            return model(inputs)
        finally:
            for buffer, saved in buffers:
                buffer.copy_(saved)


def output_digest(outputs: Any) -> str:
    """sha256 of a model's outputs, exactly (a tensor, or tuples, lists and dicts of them). Exact,
    as the key's weights and inputs are: a hit promises the weights this very computation gives,
    and outputs that differ in their last bits (another thread count reordering a sum) cost a
    recompute, never a wrong hit."""
    if isinstance(outputs, torch.Tensor):
        return tensor_digest({"outputs": outputs})
    if isinstance(outputs, (tuple, list)):
        parts = [output_digest(item) for item in outputs]
    elif isinstance(outputs, Mapping):
        parts = [f"{k}={output_digest(outputs[k])}" for k in sorted(outputs, key=str)]
    else:
        parts = [repr(outputs)]
    return hashlib.sha256(f"{type(outputs).__name__}|{'|'.join(parts)}".encode()).hexdigest()


_SOURCES: weakref.WeakKeyDictionary[type, bytes] = weakref.WeakKeyDictionary()


def _class_source(cls: type) -> bytes:
    """The class's source code; for a class with none on disk (defined in ``python -c``, ``exec``),
    the compiled code of its functions instead, which changes with them just as well. Remembered
    per class object: the code that runs, even if its file is edited later without a reload."""
    if cls not in _SOURCES:
        try:
            source = inspect.getsource(cls).encode()
        except (OSError, TypeError):
            parts = [f"py{sys.version_info[0]}.{sys.version_info[1]}|".encode()]  # marshal's format
            for name, attr in sorted(vars(cls).items()):
                code = getattr(getattr(attr, "__func__", attr), "__code__", None)
                if code is not None:
                    parts.append(name.encode() + b"|" + marshal.dumps(code))
            source = b"".join(parts)
        _SOURCES[cls] = source
    return _SOURCES[cls]


def source_digest(model: torch.nn.Module) -> str:
    """sha256 over the source of every module class in ``model`` and their bases, up to
    ``nn.Module``; torch's own classes are left out (the key holds the torch version)."""
    classes: dict[str, type] = {}
    for module in model.modules():
        for cls in type(module).__mro__:
            if cls is torch.nn.Module or not issubclass(cls, torch.nn.Module):
                break
            if not cls.__module__.startswith("torch."):
                classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    h = hashlib.sha256()
    for name in sorted(classes):
        h.update(name.encode() + b"\0" + _class_source(classes[name]) + b"\0")
    return h.hexdigest()


def _misfit(tensors: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``tensors`` cannot be loaded into a model whose ``state_dict()`` is ``like`` (None: they can)."""

    def names(keys: Any) -> str:
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    missing, unexpected = like.keys() - tensors.keys(), tensors.keys() - like.keys()
    wrong = [
        k
        for k in like.keys() & tensors.keys()
        if (tensors[k].shape, tensors[k].dtype) != (like[k].shape, like[k].dtype)
    ]
    problems = [f"{what}: {names(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                            ("other shape or dtype", wrong)) if keys]  # fmt: skip
    return f"its tensors do not fit the model ({'; '.join(problems)})" if problems else None


@dataclass(frozen=True)
class CacheEntry:
    key: str
    path: Path
    size: int
    created: float
    meta: dict[str, Any]


class InitCache:
    """A folder of computed inits; see the module docstring for the layout and guarantees."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def unwritable(self) -> str | None:
        """Why entries cannot be written here, or ``None`` when they can (the folder is created and
        a file written and removed in it, the one test that holds on every file system)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.root)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=temp_prefix("probe"), suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def ensure_writable(self) -> None:
        """Raise :class:`CacheError` if entries cannot be written (for a caller that must store)."""
        if (why := self.unwritable()) is not None:
            raise CacheError(
                f"init cache folder {str(self.root)!r} is not writable ({why});"
                " set INITIUM_CACHE to a writable folder, or pass cache=False"
            )

    @staticmethod
    def key(model: torch.nn.Module, inputs: torch.Tensor, config: Mapping[str, Any], *, outputs: Any = None) -> str:
        """The content address of ``config`` applied to ``model`` (as it is now) at ``inputs``.

        ``outputs`` is ``model(inputs)`` as :func:`probe_forward` computes it (run here if not
        given): with the source of the model's classes, the fingerprint of what the model computes.
        """
        if outputs is None:
            outputs = probe_forward(model, inputs)
        state = dict(model.state_dict())
        record = {
            "format": FORMAT,
            "model": f"{type(model).__module__}.{type(model).__qualname__}",
            "structure": repr(model),
            "state": tensor_digest(state),
            "outputs": output_digest(outputs),  # what it computes: attributes repr does not show
            "source": source_digest(model),  # how it computes it: an edited forward
            "inputs": tensor_digest({"inputs": inputs}),
            "device": inputs.device.type,
            "torch": torch.__version__,  # numerics change between releases
            "config": config,
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.safetensors", folder / f"{key}.json"

    def load(self, key: str, like: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
        """The stored tensors, or ``None`` on a miss. An entry that cannot be used (a record that is
        not an entry's, a checksum mismatch, a file safetensors cannot read, or tensors that do not
        fit ``like``, the model's ``state_dict()``) is discarded with a warning: the caller
        recomputes, and the next call finds the fresh entry. Reading needs no write access."""
        weights, meta_path = self._paths(key)
        try:
            if not meta_path.exists():
                return None
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
                raise ValueError(f"its record is not an entry's JSON object: {str(meta)[:40]}")
            data = weights.read_bytes()
            if sha256(data) != meta["sha256"]:
                raise ValueError("checksum mismatch")
            tensors = load(data)
            if like is not None and (why := _misfit(tensors, like)) is not None:
                raise ValueError(why)
            return tensors
        except (OSError, ValueError, SafetensorError) as exc:
            kept = self._discard(key)
            warnings.warn(
                f"initium cache entry {key[:12]} is corrupted or does not fit ({exc}); recomputing"
                + ("" if kept is None else f" (it could not be removed: {kept})"),
                RuntimeWarning,
                stacklevel=2,
            )
            return None

    def save(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
        weights, meta_path = self._paths(key)
        data = tensors_to_bytes(tensors)
        atomic_write_bytes(weights, data)
        try:  # the JSON record commits the entry; without it the weights file must not linger
            atomic_write_json(meta_path, {**meta, "sha256": sha256(data), "created": time.time(), "key": key})
        except BaseException:
            weights.unlink(missing_ok=True)
            raise
        log.debug("cached init %s (%d bytes)", key[:12], len(data))
        return weights

    def discard(self, key: str) -> None:
        for path in self._paths(key):
            path.unlink(missing_ok=True)

    def _discard(self, key: str) -> str | None:
        """:meth:`discard`, or why it could not (a read-only cache): the caller recomputes either way."""
        try:
            self.discard(key)
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def entries(self) -> list[CacheEntry]:
        """Every committed entry that can be read, newest first; entries whose record cannot be
        read are left out with one warning (``clear`` removes them; a call that needs one
        discards and recomputes it)."""
        out, unreadable = [], []
        for meta_path in self.root.glob("??/*.json"):
            try:
                meta = json.loads(meta_path.read_text())
                if not isinstance(meta, dict):
                    raise ValueError(f"not a JSON object but {type(meta).__name__}")
                created = float(meta.get("created", 0.0))
                weights = meta_path.with_suffix(".safetensors")
                size = weights.stat().st_size if weights.exists() else 0
            except (OSError, ValueError, TypeError) as exc:
                unreadable.append(f"{meta_path.stem[:12]}: {exc}")
                continue
            out.append(CacheEntry(meta_path.stem, weights, size, created, meta))
        if unreadable:
            log.warning(
                "init cache %s: left out %d entr%s that cannot be read (%s); `initium cache clear` removes those",
                self.root, len(unreadable), "y" if len(unreadable) == 1 else "ies", "; ".join(unreadable[:3]),
            )  # fmt: skip
        return sorted(out, key=lambda e: -e.created)

    def clear(self) -> int:
        """Remove every entry, readable or not, and what killed writers left; returns how many
        entries there were."""
        n = sum(1 for _ in self.root.glob("??/*.json"))
        try:
            for folder in self.root.glob("??"):
                if folder.is_dir():
                    shutil.rmtree(folder)
        except OSError as exc:
            raise CacheError(f"cannot clear the init cache {str(self.root)!r}: {exc.strerror or exc}") from exc
        with contextlib.suppress(OSError):
            remove_stale_temps(self.root)
        return n
