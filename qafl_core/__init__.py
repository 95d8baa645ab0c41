"""QuAFL reproduction suite: asynchronous, quantized federated averaging on LEAF.

Reference: M. Zakerinia, S. Talaei, G. Nadiradze, D. Alistarh, "Communication-Efficient Federated
Learning With Data and Client Heterogeneity", AISTATS 2024 (arXiv:2206.10032).

Entry points: :func:`qafl_core.run` (one simulation -> tidy results), the ``qafl`` command line.
"""
__version__ = "0.1.0"


def run(config, **kwargs):
    """Run one simulation; see :func:`qafl_core.runner.run`."""
    from qafl_core.runner import run as _run

    return _run(config, **kwargs)


__all__ = ["run", "__version__"]
