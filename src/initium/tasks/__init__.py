"""Tasks (registered in ``TASKS``), coordinate grids and offline data."""

from . import dip as dip
from . import image_fit as image_fit
from ._base import TASKS as TASKS
from ._base import Task as Task
from ._base import grid as grid
from .data import SAMPLE_IMAGES as SAMPLE_IMAGES
from .data import load_image as load_image

__all__ = ["SAMPLE_IMAGES", "TASKS", "Task", "dip", "grid", "image_fit", "load_image"]
