"""Content-addressed store of computed initialisations (DESIGN.md section 5).

An entry is ``ROOT/<key[:2]>/<key>.safetensors`` (the weights) and ``<key>.json`` (what made them
and the weights file's sha256). The key hashes everything the result depends on: the model's
class, structure (``repr``) and every parameter and buffer value before the method ran, the
inputs' shape, dtype and values, the method's config, the device type and the torch version.
Both files are written atomically, weights first: the JSON is the commit record, so a crash
between the two leaves at most an orphan weights file (``clear`` removes it), never an entry
that loads. On load the checksum is verified; a mismatch is discarded with a warning and
the caller recomputes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from ._io import atomic_write_bytes, atomic_write_json, sha256, tensors_to_bytes

__all__ = ["CacheEntry", "CacheError", "InitCache", "default_cache_dir", "probe_forward", "tensor_digest"]

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the key recipe changes, so old entries are never mistaken for new ones


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

    def ensure_writable(self) -> None:
        """Raise :class:`CacheError` now, before any training, if entries cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe."):
                pass
        except OSError as exc:
            raise CacheError(
                f"init cache folder {str(self.root)!r} is not writable ({exc.strerror or exc});"
                " set INITIUM_CACHE to a writable folder, or pass cache=False"
            ) from exc

    @staticmethod
    def key(model: torch.nn.Module, inputs: torch.Tensor, config: Mapping[str, Any]) -> str:
        """The content address of ``config`` applied to ``model`` (as it is now) at ``inputs``."""
        state = dict(model.state_dict())
        record = {
            "format": FORMAT,
            "model": f"{type(model).__module__}.{type(model).__qualname__}",
            "structure": repr(model),
            "state": tensor_digest(state),
            "inputs": tensor_digest({"inputs": inputs}),
            "device": inputs.device.type,
            "torch": torch.__version__,  # numerics change between releases
            "config": config,
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.safetensors", folder / f"{key}.json"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors, or ``None`` on a miss or a corrupted entry (discarded, with a warning)."""
        weights, meta_path = self._paths(key)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            data = weights.read_bytes()
            if sha256(data) != meta["sha256"]:
                raise ValueError("checksum mismatch")
            return load(data)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            warnings.warn(
                f"initium cache entry {key[:12]} is corrupted ({exc}); discarding it and recomputing",
                RuntimeWarning,
                stacklevel=2,
            )
            self.discard(key)
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

    def entries(self) -> list[CacheEntry]:
        """Every committed entry, newest first."""
        out = []
        for meta_path in self.root.glob("??/*.json"):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            weights = meta_path.with_suffix(".safetensors")
            size = weights.stat().st_size if weights.exists() else 0
            out.append(CacheEntry(meta_path.stem, weights, size, float(meta.get("created", 0.0)), meta))
        return sorted(out, key=lambda e: -e.created)

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        n = len(self.entries())
        for folder in self.root.glob("??"):
            if folder.is_dir():
                shutil.rmtree(folder)
        return n
