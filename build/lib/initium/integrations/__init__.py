"""Bridges to the tools a training script already uses, each behind its own extra.

- :mod:`initium.integrations.lightning`: :class:`~initium.integrations.lightning.InitCallback`, a
  Lightning callback that applies any method spec at fit start (``pip install "initium[lightning]"``).

TensorBoard logging of a sweep lives in :mod:`initium.tensorboard` (``initium run ... --tensorboard DIR``).
Nothing here is imported by ``import initium``: each module imports its tool when it is imported.
"""
