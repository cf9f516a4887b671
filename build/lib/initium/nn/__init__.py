"""Models and layers used by initium's tasks, each with its paper's init rule in one place.

``ARCHS`` maps the ``--arch`` names to the model classes; a task builds a model with
``ARCHS.build(name, kwargs, in_features=..., out_features=...)``.
"""

from __future__ import annotations

from torch import nn

from .._registry import Registry
from .classifier import ClassifierCNN as ClassifierCNN
from .classifier import ClassifierMLP as ClassifierMLP
from .dip import DIPNet as DIPNet
from .feedback import FAConv1d as FAConv1d
from .feedback import FAConv2d as FAConv2d
from .feedback import FALinear as FALinear
from .fourier import PEMLP as PEMLP
from .fourier import FourierFeatures as FourierFeatures
from .fourier import FourierMLP as FourierMLP
from .fourier import PositionalEncoding as PositionalEncoding
from .mlp import MLP as MLP
from .mlp import DeepONet as DeepONet
from .resnet import BottleneckResNet as BottleneckResNet
from .resnet import ResNet as ResNet
from .resnet import build_bottleneck_resnet as _build_bottleneck_resnet
from .resnet import build_resnet as _build_resnet
from .siren import Sine as Sine
from .siren import Siren as Siren
from .siren import siren_uniform_ as siren_uniform_
from .space import Net as Net
from .space import sample_space as sample_space
from .space import split_space as split_space
from .vae import ConvSliceVAE as ConvSliceVAE
from .vae import MLPSliceVAE as MLPSliceVAE
from .vae import SliceVAE as SliceVAE

ARCHS: Registry[nn.Module] = Registry("architecture")
ARCHS.register("siren")(Siren)
ARCHS.register("fourier")(FourierMLP)
ARCHS.register("pe")(PEMLP)
ARCHS.register("mlp")(MLP)
ARCHS.register("deeponet")(DeepONet)
ARCHS.register("classifier-mlp")(ClassifierMLP)
ARCHS.register("classifier-cnn")(ClassifierCNN)
ARCHS.register("dip")(DIPNet)
ARCHS.register("resnet")(_build_resnet)
ARCHS.register("resnet-bottleneck")(_build_bottleneck_resnet)
ARCHS.register("net")(Net)

__all__ = [
    "ARCHS", "MLP", "PEMLP", "BottleneckResNet", "ClassifierCNN", "ClassifierMLP", "ConvSliceVAE", "DIPNet", "DeepONet",
    "FAConv1d", "FAConv2d", "FALinear", "FourierFeatures", "FourierMLP", "MLPSliceVAE", "Net", "PositionalEncoding",
    "ResNet", "Sine", "Siren", "SliceVAE", "sample_space", "siren_uniform_", "split_space",
]  # fmt: skip
