"""Example model: a one-hidden-layer tanh MLP for any input shape.

One file plus one registration line (README "Extending the suite"):

    from examples.tanh_mlp import tanh_mlp
    register_model("tanh_mlp", tanh_mlp)

:func:`qafl_core.models.build_model` builds it on the ``meta`` device and initialises every tensor from the
run's ``model_init`` stream (PyTorch's default initialisation of ``nn.Linear``), so the builder draws nothing.
Use it with ``--set model=tanh_mlp``.
"""
from __future__ import annotations

import math

from torch import nn


def tanh_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 16) -> nn.Module:
    """``Flatten -> Linear(d, hidden) -> tanh -> Linear(hidden, num_classes)``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.Tanh(),
                         nn.Linear(hidden, num_classes))
