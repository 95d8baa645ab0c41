"""The error a run's training raises when a loss stops being finite (the runner marks the run as diverged).

Its own module so that the sequential (:mod:`qafl_core.local`) and the batched (:mod:`qafl_core.batched`) local
SGD can both raise it without importing each other.
"""
from __future__ import annotations


class Diverged(RuntimeError):
    """Raised when a loss becomes NaN or infinite; the runner marks the run as diverged."""
