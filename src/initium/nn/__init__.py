"""Models and layers used by initium's tasks, each with its paper's init rule in one place.

``ARCHS`` maps the ``--arch`` names to the model classes; a task builds a model with
``ARCHS.build(name, kwargs, in_features=..., out_features=...)``.
"""

from __future__ import annotations

from torch import nn

from .._registry import Registry
from .dip import DIPNet as DIPNet
from .fourier import PEMLP as PEMLP
from .fourier import FourierFeatures as FourierFeatures
from .fourier import FourierMLP as FourierMLP
from .fourier import PositionalEncoding as PositionalEncoding
from .siren import Sine as Sine
from .siren import Siren as Siren
from .siren import siren_uniform_ as siren_uniform_

ARCHS: Registry[nn.Module] = Registry("architecture")
ARCHS.register("siren")(Siren)
ARCHS.register("fourier")(FourierMLP)
ARCHS.register("pe")(PEMLP)
ARCHS.register("dip")(DIPNet)

__all__ = [
    "ARCHS", "PEMLP", "DIPNet", "FourierFeatures", "FourierMLP", "PositionalEncoding",
    "Sine", "Siren", "siren_uniform_",
]  # fmt: skip
