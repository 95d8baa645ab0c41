"""Where a run computes: the ``device`` key (``cpu``, ``cuda``, ``cuda:N``, ``auto``) and CUDA determinism.

Everything a simulation holds in tensors -- the data, the model, the client matrix, the server model, the
quantizers' work and the evaluation -- lives on the run's device.  What stays on the CPU: the named random
streams of client sampling, step durations and mini-batch indices (so that a client trains on the same
batches on every device), the clocks and the counters.  The streams that fill whole tensors on the device
(quantization noise, dropout masks) draw from a generator *on* that device, seeded from the same named
stream (:func:`qafl_core.rng.torch_generator`): the same name and seed, but CUDA's generator (Philox) gives
other numbers than the CPU's (Mersenne Twister).

On CUDA a run is made deterministic for a given GPU model and software stack (:func:`configure`):
``torch.use_deterministic_algorithms(True)`` (an operation without a deterministic kernel raises instead of
varying), ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (required by cuBLAS for reproducible matrix products),
``torch.backends.cudnn.deterministic = True`` and ``torch.backends.cudnn.benchmark = False`` (no
timing-based choice of convolution algorithms).  CUDA and CPU kernels round differently, so a non-CPU device
is part of the config hash (:func:`identity_device`); ``cpu`` -- and ``auto`` on a machine without a GPU --
keep every existing hash.
"""
from __future__ import annotations

import os
import re

import torch

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N")
_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(value: object) -> None:
    """ValueError (naming the ``device`` field) unless ``value`` is one of :data:`DEVICE_NAMES`."""
    if not isinstance(value, str) or not _PATTERN.match(value):
        raise ValueError(f"device: unknown value {value!r}; expected one of auto, cpu, cuda, cuda:N "
                         f"(N = a GPU index)")


def resolve_device(value: str) -> torch.device:
    """The ``torch.device`` a run uses; ``auto`` is ``cuda`` when a GPU is available, else ``cpu``.

    Raises:
        ValueError: naming ``device``, for a malformed value, CUDA without a usable GPU, or a GPU index
            beyond the ones present.
    """
    check_device(value)
    if value == "cpu" or (value == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if value == "auto":
        return torch.device("cuda")
    if not torch.cuda.is_available():
        raise ValueError(f"device: {value} requested but CUDA is not available here (no GPU, or a CPU-only "
                         f"build of torch {torch.__version__}); use device: cpu or auto")
    dev = torch.device(value)
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"device: {value} requested but only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return dev


def identity_device(value: str) -> str:
    """The device as the config hash records it: ``cpu`` or ``cuda`` (the kind of kernels, not the GPU index:
    two GPUs of one machine give the same numbers).  ``auto`` counts as what it resolves to here."""
    check_device(value)
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu" if value == "cpu" else "cuda"


def configure(device: torch.device) -> None:
    """Make CUDA computation deterministic (module docstring); nothing to do on the CPU.

    ``torch.use_deterministic_algorithms`` is process-wide: once a CUDA run was built, CPU runs in the same
    process also use deterministic algorithms, which on the CPU are the ones they use anyway.
    """
    if device.type != "cuda":
        return
    # must be set before cuBLAS creates its first handle; an explicit setting by the user is kept
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
