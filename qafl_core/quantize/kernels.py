"""Compiled or eager: how the quantizers' fused kernels run.

Each quantizer writes its arithmetic twice, and the tests hold both to the same bits: as a pure
function of whole vectors (``*_math``: one expression per output, no in-place ops) and as an eager loop
of in-place ops over cache-sized chunks with reused buffers. ``torch.compile`` (inductor) turns the pure
function into one C++ loop per kernel: it reads each input once and writes each output once, with no
temporaries. Inductor compiles with ``-ffp-contract=off`` (no fused multiply-add contraction, which
would round differently) and every operation is an IEEE float64/float32 operation in the eager order,
so the compiled kernels give the eager bits; the tests compare both with a frozen copy of the original
implementation.

Mode, ``QAFL_QUANT_COMPILE`` (or :func:`compiling`): ``auto`` (default) compiles on CPU for vectors of at
least :data:`COMPILE_MIN` coordinates, where one compile (about 30-60 s, then cached on disk by inductor;
a few seconds per process afterwards) pays for itself within a few hundred messages; ``on`` compiles for
every size and device (tests; a GPU needs Triton); ``off`` never compiles. Results do not depend on the
mode. When compiling fails (no C++ compiler, no Triton) the first failure is logged once and every
kernel runs eagerly from then on. Compiled CPU kernels run on one thread, as the engine runs all its
vector arithmetic (:func:`qafl_core.algorithms.base.vector_ops_on_one_thread`).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch

from qafl_core import environment

log = logging.getLogger("qafl")

COMPILE_MIN = 1 << 20      # coordinates; the FEMNIST CNN has 6.6 M, the paper's MLPs under 0.2 M
MODES = ("auto", "on", "off")
_state: dict = {"mode": None, "broken": None}
_compiled: dict[Callable, Callable] = {}
RECOMPILE_LIMIT = 64       # compiled variants per kernel (dynamo's default is 8)
FAILED = object()          # what run_compiled returns when it could not compile: the caller runs eagerly


def compile_mode() -> str:
    """The current mode: set by :func:`compiling`, else ``$QAFL_QUANT_COMPILE``, else ``auto``."""
    mode = _state["mode"] or environment.quant_compile() or "auto"
    if mode not in MODES:
        raise ValueError(f"QAFL_QUANT_COMPILE: expected one of {', '.join(MODES)}, got {mode!r}")
    return mode


@contextlib.contextmanager
def compiling(mode: str):
    """Run the block with compile mode ``mode`` (``auto``, ``on``, ``off``)."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    before = _state["mode"]
    _state["mode"] = mode
    try:
        yield
    finally:
        _state["mode"] = before


def use_compiled(n: int, device: torch.device) -> bool:
    """Whether a kernel over ``n`` coordinates on ``device`` runs compiled (sizes 0 and 1 never do:
    dynamic shapes specialise them, costing a compile each for nothing)."""
    mode = compile_mode()
    if mode == "off" or _state["broken"] is not None or n < 2:
        return False
    return mode == "on" or (device.type == "cpu" and n >= COMPILE_MIN)


def run_compiled(fn: Callable, *args):
    """``fn(*args)`` through its compiled twin; :data:`FAILED` when compiling failed (run eagerly then)."""
    compiled = _compiled.get(fn)
    if compiled is None:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1      # compile in this process: no worker pool under Ray or the runner
        inductor_config.cpp.threads = 1          # one thread, as the engine runs all its vector arithmetic
        # each kernel has a few variants (dither, key dtype, accumulate, b = 32), and a process running many
        # configurations (tests, a notebook's sweep) meets more than dynamo's default of 8 (raised, never lowered;
        # a context manager per call would cost about 0.4 ms, measured)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        compiled = _compiled[fn] = torch.compile(fn, dynamic=True, fullgraph=True)
    try:
        return compiled(*args)
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
        _state["broken"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        log.warning("quantizer kernels: torch.compile failed (%s); running them eagerly from now on "
                    "(same results, slower; set QAFL_QUANT_COMPILE=off to skip compiling)", _state["broken"])
        return FAILED


def compile_status() -> dict:
    """Mode, threshold and the failure that turned compiling off (None if none), for reports."""
    return {"mode": compile_mode(), "min_coords": COMPILE_MIN, "failed": _state["broken"]}
