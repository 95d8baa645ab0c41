"""QuAFL reproduction suite: asynchronous, quantized federated averaging on LEAF.

Reference: M. Zakerinia, S. Talaei, G. Nadiradze, D. Alistarh, "Communication-Efficient Federated
Learning With Data and Client Heterogeneity", AISTATS 2024 (arXiv:2206.10032).

Entry points: :func:`qafl_core.run` (one simulation -> tidy results), the ``qafl`` command line.
"""
import os as _os

# Large tensors (a 6.6 M-coordinate model is 26 MB) cost ~12 ms of page faults per fresh allocation on
# the machines this suite is developed on; huge pages bring that to ~1.4 ms.  Only effective when set
# before torch is first imported (the ``qafl`` command imports this package first); a user's own
# setting wins.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"


def run(config, **kwargs):
    """Run one simulation; see :func:`qafl_core.runner.run`."""
    from qafl_core.runner import run as _run

    return _run(config, **kwargs)


__all__ = ["run", "__version__"]
