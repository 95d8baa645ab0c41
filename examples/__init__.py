"""Worked examples of extending the suite: one file per algorithm, quantizer, dataset and model.

:func:`register_all` registers all four (README "Extending the suite"; ``examples/extend.ipynb``)."""
from __future__ import annotations


def register_all() -> None:
    """Register the four examples under the names their docstrings use."""
    from qafl_core.algorithms import register_algorithm
    from qafl_core.data.registry import register_dataset
    from qafl_core.models import register_model
    from qafl_core.quantize import register_quantizer

    from examples.server_momentum import FedAvgMomentum
    from examples.sign_quantizer import SignQuantizer
    from examples.tanh_mlp import tanh_mlp
    from examples.two_gaussians import load_two_gaussians

    register_algorithm("fedavg_momentum", FedAvgMomentum)
    register_quantizer("sign", lambda bits, eps, bucket, segments: SignQuantizer())
    register_dataset("two_gaussians", load_two_gaussians, default_model="logreg", label="Two Gaussians")
    register_model("tanh_mlp", tanh_mlp)
