"""Initialisation methods, one file per family, all registered in ``METHODS``.

One home per family: a family's whole logic is one module here (its layers in :mod:`initium.nn`),
public under one name at the package root, the same module object: ``initium.fa is
initium.methods.fa``, ``initium.vae is initium.methods.vae``, ``initium.ghn is initium.methods.ghn``.
"""

from . import classic as classic
from . import fa as fa
from . import ghn as ghn
from . import noise as noise
from . import reparam as reparam
from . import rwf as rwf
from . import vae as vae
from ._base import DEFAULT_RULE as DEFAULT_RULE
from ._base import METHODS as METHODS
from ._base import RULES as RULES
from ._base import Compose as Compose
from ._base import LearningRule as LearningRule
from ._base import Method as Method
from ._base import create as create
from ._base import list_methods as list_methods

__all__ = [
    "DEFAULT_RULE", "METHODS", "RULES", "Compose", "LearningRule", "Method", "classic", "create", "fa", "ghn",
    "list_methods", "noise", "reparam", "rwf", "vae",
]  # fmt: skip
