"""Tasks (registered in ``TASKS``), coordinate grids and offline data."""

from . import classify as classify
from . import ct as ct
from . import deeponet as deeponet
from . import dip as dip
from . import image_fit as image_fit
from . import pinn as pinn
from . import regress_1d as regress_1d
from . import shape3d as shape3d
from ._base import TASKS as TASKS
from ._base import Task as Task
from ._base import grid as grid
from .data import IMAGE_DESCRIPTIONS as IMAGE_DESCRIPTIONS
from .data import SAMPLE_IMAGES as SAMPLE_IMAGES
from .data import load_image as load_image

__all__ = [
    "IMAGE_DESCRIPTIONS", "SAMPLE_IMAGES", "TASKS", "Task", "classify", "ct", "deeponet", "dip", "grid", "image_fit",
    "load_image", "pinn", "regress_1d", "shape3d",
]  # fmt: skip
