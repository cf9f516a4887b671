from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from initium._registry import UnknownNameError
from initium.tasks import TASKS, grid, load_image
from initium.tasks.image_fit import ImageFit, ImageFitConfig


def test_grid_layout():
    g = grid(2, 3)
    assert g.shape == (6, 2)
    assert g.min() == -1 and g.max() == 1
    torch.testing.assert_close(g[1], torch.tensor([-1.0, 0.0]))  # 'ij': the column moves first
    torch.testing.assert_close(g[3], torch.tensor([1.0, -1.0]))
    assert grid(4).shape == (4, 1) and grid(2, 2, 2).shape == (8, 3)


@pytest.mark.parametrize("bad", [(0, 4), (4, -1), (2.5, 2), ()])
def test_grid_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="grid"):
        grid(*bad)


def test_bundled_images_load_in_unit_range():
    cam, astro = load_image("camera"), load_image("astronaut")
    assert cam.shape == (512, 512, 1) and astro.shape == (512, 512, 3)
    assert cam.dtype == np.float32 and cam.min() >= 0 and cam.max() <= 1
    assert load_image("astronaut", gray=True).shape == (512, 512, 1)


def test_unknown_image_name_suggests_closest():
    with pytest.raises(UnknownNameError, match="closest: camera"):
        load_image("camra")


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(str(tmp_path / "nope.png"))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="could not decode") as err:
        load_image(str(junk))
    assert "is not a readable image" in str(err.value) and "pip install" not in str(err.value)


def test_image_files_load_and_nan_images_are_rejected(tmp_path):
    img = (np.arange(64 * 64 * 3) % 256).astype(np.uint8).reshape(64, 64, 3)
    iio.imwrite(tmp_path / "ok.png", img)
    np.testing.assert_allclose(load_image(str(tmp_path / "ok.png")), img / 255.0, atol=1e-6)
    bad = np.full((16, 16), 0.5, np.float32)
    bad[3, 4] = np.nan
    iio.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_image(str(tmp_path / "nan.tif"))


def test_image_fit_crop_is_full_resolution():
    task = ImageFit(ImageFitConfig(image="camera", size=32, scale="crop"))
    task.setup(torch.device("cpu"))
    full = torch.from_numpy(load_image("camera"))
    torch.testing.assert_close(task.image, full[240:272, 240:272])
    assert task.inputs.shape == (32 * 32, 2) and task.target.shape == (32 * 32, 1)
    # rows of target line up with the coordinate grid
    torch.testing.assert_close(task.target.reshape(32, 32, 1), task.image)


def test_image_fit_resize_and_metrics_of_a_perfect_fit():
    task = TASKS.build("image-fit", {"image": "astronaut", "size": 48})
    task.setup(torch.device("cpu"))
    assert task.image.shape == (48, 48, 3)
    m = task.evaluate(task.target)
    assert m["psnr"] == float("inf") and m["ssim"] == pytest.approx(1.0)
    assert all(m[f"band_{b}"] == 0 for b in ("low", "mid", "high"))


def test_image_file_without_a_suffix(tmp_path):
    img = np.zeros((16, 16), np.uint8)
    img[4:8] = 255
    iio.imwrite(tmp_path / "plain.png", img)
    (tmp_path / "plain.png").rename(tmp_path / "plain")
    assert load_image(str(tmp_path / "plain")).sum() == 4 * 16


def test_image_fit_bad_config():
    with pytest.raises(ValueError, match="size"):
        TASKS.build("image-fit", {"size": 6})  # below SSIM's 7x7 window
    task = TASKS.build("image-fit", {"image": "text", "size": 300, "scale": "crop"})  # text is 172x448
    with pytest.raises(ValueError, match="larger than the image"):
        task.setup(torch.device("cpu"))


def test_a_one_pixel_image_is_refused_with_the_minimum_side(tmp_path):
    iio.imwrite(tmp_path / "dot.png", np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ValueError, match=r"is 1x1 pixels; an image needs at least 2 pixels a side") as err:
        load_image(str(tmp_path / "dot.png"))
    assert "expected (H, W)" not in str(err.value)  # the shape is fine: the size is not
    iio.imwrite(tmp_path / "line.png", np.zeros((1, 40), np.uint8))
    with pytest.raises(ValueError, match="is 1x40 pixels"):
        load_image(str(tmp_path / "line.png"))
    iio.imwrite(tmp_path / "two.png", np.zeros((2, 2), np.uint8))
    assert load_image(str(tmp_path / "two.png")).shape == (2, 2, 1)


def test_a_text_file_named_png_is_not_a_readable_image(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello, this is text\n")
    with pytest.raises(ValueError, match=r"notes\.png' is not a readable image") as err:
        load_image(str(text))
    assert "pip install" not in str(err.value)  # imageio's plugin advice does not help with a text file
