"""Offline data: scikit-image's bundled sample images, a user's image file, scikit-learn's
handwritten digits and mnist1d generated on the spot (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._registry import UnknownNameError, closest

__all__ = ["MIN_SIDE", "SAMPLE_IMAGES", "check_finite", "load_digits", "load_image", "make_mnist1d"]

# scikit-image samples that ship inside the wheel (the others need a download, which we never do).
SAMPLE_IMAGES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cat", "checkerboard", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "moon", "page", "retina", "rocket", "text",
)  # fmt: skip


MIN_SIDE = 2  # the smallest height and width load_image takes: one pixel is a colour, not an image


def check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{what} contains {bad} NaN or infinite values; clean or replace it")


def _read(source: str) -> np.ndarray:
    if source in SAMPLE_IMAGES:
        import skimage.data

        return np.asarray(getattr(skimage.data, source)())
    path = Path(source).expanduser()
    if path.is_file() or path.suffix or path.parent != Path("."):  # a file, or meant as one
        if not path.is_file():
            raise FileNotFoundError(f"image file {str(path)!r} does not exist (or give a bundled image name)")
        import skimage.io

        try:
            return np.asarray(skimage.io.imread(path))
        except Exception as exc:  # decoders raise many types; all mean "not an image we can read"
            # Only the reason's first line: imageio goes on to suggest plugins to "pip install",
            # advice that is wrong for a file that is no image at all (a text file named .png).
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(
                f"image file {str(path)!r} is not a readable image (PNG, JPEG, TIFF, BMP ...): the decoders could"
                f" not decode it ({reason}); check that it is an image and not damaged"
            ) from exc
    raise UnknownNameError(
        f"unknown image {source!r}; closest: {', '.join(closest(source, list(SAMPLE_IMAGES)))}"
        f" (bundled: {', '.join(SAMPLE_IMAGES)}), or give the path of an image file"
    )


def load_image(source: str, *, gray: bool = False) -> np.ndarray:
    """A bundled sample (``"camera"``) or an image file as float32 ``(H, W, C)`` in ``[0, 1]``.

    Integer images are divided by their dtype's maximum; float images outside ``[0, 1]`` are
    min-max scaled; an alpha channel is dropped; ``gray`` averages the colour channels.
    """
    img = _read(source)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"image {source!r} has shape {img.shape}; expected (H, W) or (H, W, C) with C <= 4")
    if min(img.shape[:2]) < MIN_SIDE:
        h, w = img.shape[:2]
        raise ValueError(
            f"image {source!r} is {h}x{w} pixels; an image needs at least {MIN_SIDE} pixels a side"
            " (it is cropped to a square and resized from there)"
        )
    if img.shape[-1] in (2, 4):
        img = img[..., :-1]  # drop alpha
    if img.dtype == bool:
        out = img.astype(np.float32)
    elif np.issubdtype(img.dtype, np.integer):
        out = img.astype(np.float32) / np.iinfo(img.dtype).max
    else:
        out = img.astype(np.float32)
        check_finite(out, f"image {source!r}")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0 or hi > 1:
            out = (out - lo) / max(hi - lo, 1e-12)
    if gray and out.shape[-1] > 1:
        out = out.mean(-1, keepdims=True)
    return out


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits (1797 real 8x8 scans shipped inside the wheel):
    ``(x, y)`` with ``x`` float32 ``(N, 1, 8, 8)`` in ``[0, 1]`` (the 0-16 counts divided by 16)
    and ``y`` int64 labels 0-9."""
    from sklearn.datasets import load_digits as _load

    data = _load()
    x = (data.images.astype(np.float32) / 16.0)[:, None]
    return x, data.target.astype(np.int64)


def make_mnist1d(seed: int = 42, num_samples: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D (Greydanus & Kobak 2020, arXiv 2011.14439) generated offline with the package's
    own ``make_dataset`` from its bundled templates (its ``get_dataset`` would download a pickle:
    never used): ``(x, y)``, ``x`` float32 ``(N, 1, 40)`` standardised by the generator, ``y``
    int64 0-9, train and test parts pooled. ``make_dataset`` reseeds NumPy's and Python's global
    RNGs; their states are restored afterwards."""
    import random

    from mnist1d.data import get_dataset_args
    from mnist1d.data import make_dataset as _make

    args = get_dataset_args()
    args.seed, args.num_samples = seed, num_samples
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = _make(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)[:, None]
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return x, y
