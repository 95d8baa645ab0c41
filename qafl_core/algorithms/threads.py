"""Intra-op thread counts of a simulation step: vector ops on one thread, the clients' local SGD on the caller's.

Results never depend on it (elementwise ops and the exact reductions used by the algorithms do not depend on the
thread count); only the speed does.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch


def vector_ops_on_one_thread(step: Callable) -> Callable:
    """Decorator for ``step()``: the round's vector arithmetic (encode/decode, averaging) runs on one
    intra-op thread, the clients' local SGD (:meth:`Simulation.train_many`) on the caller's thread count.

    The vector ops are memory-bound, so a second thread adds little bandwidth; on a shared machine a
    descheduled worker thread stalls every parallel op. Measured on the loaded 2-core machine: the
    non-SGD time of a FEMNIST-CNN QuAFL round (s = 5) fell from 135 ms to 80 ms. Results do not change:
    elementwise ops and the exact reductions used here do not depend on the thread count.
    """
    @functools.wraps(step)
    def wrapped(self, *args, **kwargs):
        n = torch.get_num_threads()
        if n == 1:
            return step(self, *args, **kwargs)
        self._sgd_threads = n
        torch.set_num_threads(1)
        try:
            return step(self, *args, **kwargs)
        finally:
            torch.set_num_threads(n)
            self._sgd_threads = None
    return wrapped


def _on_one_thread(fn: Callable, n: int) -> Callable:
    """``fn`` run on one intra-op thread, from inside a block on ``n`` threads."""
    def wrapped(*args):
        torch.set_num_threads(1)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(n)
    return wrapped


class _Threads:
    """Context: ``n`` intra-op threads inside (None: leave as is), one thread again on exit."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self) -> None:
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        if self.n is not None:
            torch.set_num_threads(1)
