from __future__ import annotations

import pytest
import torch

from initium.tasks.image_fit import ImageFit, ImageFitConfig


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Module- and session-scoped fixtures run before the per-test isolation below: they get a
    cache of the session's own, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INITIUM_CACHE", str(tmp_path_factory.mktemp("session-cache")))
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own init cache, so no test sees another's entries."""
    monkeypatch.setenv("INITIUM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def camera64() -> ImageFit:
    """A 64 px crop (full resolution) of scikit-image's camera, as an image-fit task."""
    task = ImageFit(ImageFitConfig(image="camera", size=64, scale="crop"))
    task.setup(torch.device("cpu"))
    return task
