"""Initialisation methods, one file per family, all registered in ``METHODS``."""

from . import classic as classic
from . import fa as fa
from . import noise as noise
from . import reparam as reparam
from . import rwf as rwf
from ._base import METHODS as METHODS
from ._base import Compose as Compose
from ._base import Method as Method
from ._base import create as create
from ._base import list_methods as list_methods

__all__ = ["METHODS", "Compose", "Method", "classic", "create", "fa", "list_methods", "noise", "reparam", "rwf"]
