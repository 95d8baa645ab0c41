"""One root seed -> named, independent random streams.

Every random choice in the suite (model init, client sampling, client speeds, mini-batches,
quantization dither, data generation) draws from a generator obtained here by *name*, so that
(i) one root seed reproduces a run bit for bit, (ii) streams do not shift when another stream is
used more or less often, and (iii) nothing depends on the global torch/numpy RNG state.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(root_seed: int, *names: object) -> int:
    """A 63-bit seed for the stream ``names`` under ``root_seed`` (stable across Python versions)."""
    key = "/".join([str(int(root_seed))] + [str(n) for n in names]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def torch_generator(root_seed: int, *names: object, device: torch.device | str | None = None) -> torch.Generator:
    """A ``torch.Generator`` for the named stream, on the CPU unless ``device`` says otherwise (a CUDA generator
    draws other numbers from the same seed: qafl_core/device.py)."""
    g = torch.Generator() if device is None or torch.device(device).type == "cpu" else torch.Generator(device=device)
    g.manual_seed(derive_seed(root_seed, *names))
    return g


def numpy_generator(root_seed: int, *names: object) -> np.random.Generator:
    """A numpy ``Generator`` (PCG64) for the named stream."""
    return np.random.default_rng(derive_seed(root_seed, *names))
