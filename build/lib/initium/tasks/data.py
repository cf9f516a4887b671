"""Offline data: scikit-image's bundled sample images, a user's image file, scikit-learn's
handwritten digits and mnist1d generated on the spot (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._registry import UnknownNameError, closest

__all__ = [
    "IMAGE_DESCRIPTIONS", "MIN_SIDE", "SAMPLE_IMAGES", "check_finite", "load_dataset", "load_digits", "load_image",
    "make_mnist1d",
]  # fmt: skip

# scikit-image samples that ship inside the wheel (the others need a download, which we never do).
SAMPLE_IMAGES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cat", "checkerboard", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "moon", "page", "retina", "rocket", "text",
)  # fmt: skip

# What each bundled image shows, for `initium list` (sizes as scikit-image ships them: height x width).
IMAGE_DESCRIPTIONS: dict[str, str] = {
    "astronaut": "colour 512x512 portrait of the astronaut Eileen Collins",
    "brick": "grey 512x512 texture of a brick wall",
    "camera": "grey 512x512 photograph of a cameraman",
    "cat": "colour 300x451 photograph of Chelsea the cat",
    "checkerboard": "grey 200x200 synthetic checkerboard (sharp edges)",
    "chelsea": "colour 300x451 photograph of Chelsea the cat (the same as cat)",
    "clock": "grey 300x400 motion-blurred photograph of a clock",
    "coffee": "colour 400x600 photograph of a coffee cup",
    "coins": "grey 303x384 photograph of Greek coins from Pompeii",
    "colorwheel": "colour 370x371 synthetic colour wheel",
    "grass": "grey 512x512 texture of grass",
    "gravel": "grey 512x512 texture of gravel",
    "horse": "black-and-white 328x400 silhouette of a horse",
    "hubble_deep_field": "colour 872x1000 Hubble eXtreme Deep Field (galaxies on black)",
    "immunohistochemistry": "colour 512x512 micrograph of immunohistochemical staining",
    "logo": "colour 500x500 scikit-image logo (RGBA)",
    "moon": "grey 512x512 photograph of the moon's surface",
    "page": "grey 191x384 scan of a printed page",
    "retina": "colour 1411x1411 photograph of a human retina",
    "rocket": "colour 427x640 photograph of a Falcon 9 launch",
    "text": "grey 172x448 image of text (scikit-image's corner-detection sample)",
}


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


_NPZ_FIX = "save it with np.savez(path, x=inputs, y=labels)"


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """``(N, C, H, W)`` images resized to ``size`` x ``size`` (anti-aliased, as scikit-image does)."""
    from skimage.transform import resize

    return np.stack([resize(im, (im.shape[0], size, size), anti_aliasing=True) for im in x]).astype(np.float32)


def _read_folder(root: Path, input_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(
            f"--dataset {str(root)!r} has {len(classes)} class folder(s); a classification dataset needs at"
            " least 2: put each class's images in a subfolder of its own (DIR/cat/1.png, DIR/dog/2.png)"
        )
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"--dataset {str(root)!r}: class folder {name!r} holds no images; add some or remove it")
        for f in files:
            images.append(load_image(str(f)))  # a file that is no image fails here, naming it
            labels.append(label)
    channels = max(im.shape[-1] for im in images)  # colour if any image has colour; grey ones repeated
    images = [np.repeat(im, channels, -1) if im.shape[-1] < channels else im for im in images]
    if input_size:
        from skimage.transform import resize

        images = [resize(im, (input_size, input_size), anti_aliasing=True) for im in images]
    shapes = sorted({im.shape[:2] for im in images})
    if len(shapes) > 1:
        raise ValueError(
            f"--dataset {str(root)!r} holds images of {len(shapes)} sizes ({shapes[0]}, {shapes[-1]}, ...);"
            " give --input-size N to resize them all to N x N"
        )
    x = np.stack([im.transpose(2, 0, 1) for im in images]).astype(np.float32)
    return x, np.asarray(labels, dtype=np.int64), classes


def _read_npz(path: Path, input_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as data:  # never unpickle a stranger's object arrays
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise ValueError(
                    f"--dataset {str(path)!r} has no array {' or '.join(map(repr, missing))} (it has"
                    f" {', '.join(data.files) or 'none'}); {_NPZ_FIX}"
                )
            x, y = np.asarray(data["x"]), np.asarray(data["y"])
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(
            f"--dataset {str(path)!r} is not a readable .npz of numeric arrays ({exc}); {_NPZ_FIX}"
        ) from exc
    except OSError as exc:
        raise ValueError(f"--dataset {str(path)!r} is not a readable .npz file ({exc}); {_NPZ_FIX}") from exc
    if x.ndim not in (2, 3, 4) or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(
            f"--dataset {str(path)!r}: x must be real numbers shaped (N, C, H, W), (N, H, W) or (N, L),"
            f" got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise ValueError(f"--dataset {str(path)!r}: y must be (N,) integer labels, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"--dataset {str(path)!r}: x has {len(x)} samples but y has {len(y)}; they must match")
    x = x.astype(np.float32)
    check_finite(x, f"--dataset {str(path)!r} x")
    # (N, H, W) images and (N, L) signals get their one channel
    x = x[:, None] if x.ndim in (2, 3) else x
    if input_size:
        if x.ndim != 4:
            raise ValueError(f"--input-size resizes images; --dataset {str(path)!r} holds signals {x.shape}")
        x = _resize(x, input_size)
    values, y = np.unique(y, return_inverse=True)  # labels 0..K-1 in the order of the given ones
    if len(values) < 2:
        raise ValueError(f"--dataset {str(path)!r}: y has {len(values)} class; a classification dataset needs >= 2")
    return x, y.astype(np.int64), [str(v) for v in values]


def load_dataset(source: str, input_size: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A user's classification data: ``(x, y, class names)`` with ``x`` float32 ``(N, C, H, W)``
    images or ``(N, 1, L)`` signals, ``y`` int64 labels ``0..K-1`` (K >= 2).

    ``source`` is a folder of class subfolders of images (the ImageFolder layout: ``DIR/<class>/<image>``;
    class names sorted; images read by :func:`load_image` into ``[0, 1]``, grey kept unless any image
    has colour) or an ``.npz`` file with arrays ``x`` ((N, C, H, W), (N, H, W) or (N, L)) and ``y``
    ((N,) integers, mapped to 0..K-1 in sorted order). ``input_size > 0`` resizes images to
    ``input_size`` x ``input_size``. Bad layouts are ``ValueError``s naming the path and the fix.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path, input_size)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(
                f"--dataset {str(path)!r} is a {path.suffix or 'suffix-less'} file; give a folder of class"
                " subfolders of images, or an .npz with arrays x and y"
            )
        return _read_npz(path, input_size)
    raise ValueError(
        f"--dataset {source!r} is neither a bundled dataset (digits, mnist1d) nor an existing folder or .npz file"
    )
