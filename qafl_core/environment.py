"""The one place that reads environment variables: every ``QAFL_*`` setting, with its default.

Modules call these functions instead of reading ``os.environ`` themselves, so that the settings a process
honours are listed here (and in the README's "Environment variables"), and a test can check that no other
module reads the environment (``tests/test_architecture.py``).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Mapping


def get(name: str, default: str | None = None) -> str | None:
    """The raw value of environment variable ``name`` (``default`` when unset)."""
    return os.environ.get(name, default)


def data_dir() -> str | None:
    """``$QAFL_DATA_DIR``: the folder holding one sub-folder per dataset (None or empty when unset)."""
    return os.environ.get("QAFL_DATA_DIR")


def cache_dir() -> Path:
    """``$QAFL_CACHE_DIR`` (default ``~/.cache/qafl``): run cache, fingerprints, generated data."""
    return Path(os.environ.get("QAFL_CACHE_DIR") or Path.home() / ".cache" / "qafl")


def quant_compile() -> str | None:
    """``$QAFL_QUANT_COMPILE``: ``auto`` (default), ``on`` or ``off`` -- whether the lattice kernels are compiled."""
    return os.environ.get("QAFL_QUANT_COMPILE")


@contextlib.contextmanager
def children_environment(updates: Mapping[str, str]) -> Iterator[None]:
    """Variables for the processes started inside the block (notebook kernels inherit them); the process's own
    environment is restored on the way out."""
    saved = dict(os.environ)
    os.environ.update(updates)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
