"""The quantizer workloads behind ``qafl bench`` (:mod:`qafl_bench.suite`): throughput next to ``copy_`` and
to a CNN SGD step, and the share of a QuAFL lattice round that is not local SGD.

Everything runs on one intra-op thread, as the engine runs its vector arithmetic (on a loaded shared machine
two-thread timings swing tenfold: a descheduled OpenMP worker stalls every parallel region), and is timed in
this process's CPU time. The first repetition warms up: it compiles the quantizer kernels (reported as
``warmup_s``) and is not counted.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch

from qafl_bench.workloads import LR, BareLoop, intra_op_threads, random_dataset
from qafl_core.data.federated import FederatedDataset
from qafl_core.rng import torch_generator


def _vectors(d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A model-like vector and a receiver's key well inside the lattice window (eps = 1e-4, b >= 10)."""
    g = torch_generator(0, "bench_quant")
    x = torch.randn(d, generator=g).mul_(0.05)
    return x, x + torch.randn(d, generator=g).mul_(1e-3)


def interleaved(ops: dict[str, Callable[[], object]], reps: int) -> tuple[dict[str, float], float]:
    """Median CPU seconds of each op over ``reps`` rounds, the order rotating every round (round 0 warms up
    and is not counted); and the warm-up's wall seconds. One intra-op thread."""
    names, times = list(ops), {k: [] for k in ops}
    warmup = 0.0
    with intra_op_threads(1):
        for r in range(reps + 1):
            t_round = time.perf_counter()
            for name in names[r % len(names):] + names[:r % len(names)]:
                t = time.process_time()
                ops[name]()
                if r:
                    times[name].append(time.process_time() - t)
            if not r:
                warmup = time.perf_counter() - t_round
    return {k: statistics.median(v) for k, v in times.items()}, warmup


def _kernels_status():
    """How the quantizer kernels run (:func:`qafl_core.quantize.kernels.compile_status`); "eager" for the
    implementation before them, so the same harness measures before and after."""
    try:
        from qafl_core.quantize import kernels
    except ImportError:
        return "eager"
    return kernels.compile_status()


def _send(q, x, key, generator=None, out=None):
    """``q.send`` where the quantizer has it, else what it replaces: decode(encode(x))."""
    if hasattr(q, "send"):
        return q.send(x, key, generator) if out is None else q.send(x, key, generator, out=out)
    return q.decode(q.encode(x, generator), key)


def quantizer_throughput(d: int, reps: int, bits: int = 10, eps: float = 1e-4, step_model: str = "femnist_cnn") -> dict:
    """Median encode+decode GB/s (of float32 input) of lattice and QSGD, of ``copy_``, and -- interleaved with
    them -- the time of one SGD step (batch 32) of ``step_model``, the model whose messages these are. Also
    the fused sends (``lattice_send``, ``qsgd_send``), reported in ``ms``."""
    from qafl_core.quantize import make_quantizer

    x, key = _vectors(d)
    qs = {"lattice": make_quantizer("lattice", bits=bits, eps=eps), "qsgd": make_quantizer("qsgd", bits=bits)}
    dst = torch.empty_like(x)
    step = BareLoop(random_dataset("femnist", 1, 64, (1, 28, 28), 62), step_model, 32)
    failures = [0]

    def message(name: str, fused: bool):
        def run():
            g = torch_generator(0, "msg", name)
            out = _send(qs[name], x, key, g) if fused else qs[name].decode(qs[name].encode(x, g), key)
            failures[0] += out.failures
        return run

    ops = {"copy": lambda: dst.copy_(x), "lattice": message("lattice", False), "qsgd": message("qsgd", False),
           "lattice_send": message("lattice", True), "qsgd_send": message("qsgd", True),
           "sgd_step": lambda: step.run([(0, 32)])}
    sec, warmup = interleaved(ops, reps)
    ms = {k: v * 1e3 for k, v in sec.items()}
    return {"gbps": {k: 4 * d / ms[k] / 1e6 for k in ("copy", *qs)}, "ms": ms, "d": d, "reps": reps, "bits": bits,
            "lattice_decode_failures": failures[0], "warmup_s": round(warmup, 1),
            "kernels": _kernels_status()}


def lattice_vs_copy(d: int, reps: int, bits: int = 12, eps: float = 1e-4) -> dict:
    """Lattice encode+decode GB/s over ``copy_`` GB/s on one ``d``-coordinate float32 vector (GB/s = vector
    bytes / time for both): the fused send (encode+decode in one pass, a one-receiver message) into a reused
    output, as :meth:`qafl_core.channel.Channel.send` makes it and as the copy writes into a reused ``dst``;
    for reference, the send into a fresh output (``send_fresh``: its page faults) and encode then decode
    through the codes (a message several receivers decode)."""
    from qafl_core.quantize import make_quantizer

    x, key = _vectors(d)
    q = make_quantizer("lattice", bits=bits, eps=eps)
    dst = torch.empty_like(x)
    fails = []
    out = torch.empty_like(x)
    ops = {"copy": lambda: dst.copy_(x), "send": lambda: fails.append(_send(q, x, key, out=out).failures),
           "send_fresh": lambda: fails.append(_send(q, x, key).failures),
           "encode_decode": lambda: fails.append(q.decode(q.encode(x), key).failures)}
    sec, warmup = interleaved(ops, reps)
    gbps = {k: 4 * d / v / 1e9 for k, v in sec.items()}
    return {"ratio": gbps["send"] / gbps["copy"], "ratio_encode_decode": gbps["encode_decode"] / gbps["copy"],
            "ratio_send_fresh": gbps["send_fresh"] / gbps["copy"],
            "gbps": gbps, "ms": {k: v * 1e3 for k, v in sec.items()}, "d": d, "bits": bits, "eps": eps, "reps": reps,
            "warmup_s": round(warmup, 1), "decode_failures": sum(fails), "kernels": _kernels_status()}


def quafl_round_vs_sgd(ds: FederatedDataset, model: str, s: int, k: int, batch: int, reps: int, bits: int = 12,
                       eps: float = 1e-4, sit: float = 10.0) -> dict:
    """CPU time of a QuAFL lattice round over the CPU time of that round's local SGD (the task's ``local_sgd``
    calls inside it), median over ``reps`` rounds after warm-up rounds (QuAFL's first contacts take no steps,
    and the first messages compile the kernels). One intra-op thread for everything. ``sit`` sets how many
    local steps a client completes between two contacts (every ``n/s`` rounds of ``sit * b/32`` time units)."""
    from qafl_core.config import RunConfig
    from qafl_core.local import NeuralTask
    from qafl_core.runner import build_simulation

    cfg = RunConfig(dataset=ds.name, algorithm="quafl", clients_per_round=s, local_steps=k, batch_size=batch, lr=LR,
                    quantizer="lattice", bits=bits, lattice_eps=eps, sit=sit, time_limit=1e12, progress=False)
    task = NeuralTask(ds, model, 0, batch)
    sim = build_simulation(cfg, task)
    sgd = [0.0]
    local_sgd = task.local_sgd

    def timed_local_sgd(*args, **kwargs):
        t = time.process_time()
        try:
            return local_sgd(*args, **kwargs)
        finally:
            sgd[0] += time.process_time() - t

    task.local_sgd = timed_local_sgd
    rounds, sgd_s, ratios = [], [], []
    with intra_op_threads(1):
        t0 = time.perf_counter()
        for _ in range(math.ceil(ds.num_clients / s) + 1):
            sim.step()
        warmup = time.perf_counter() - t0
        steps0 = sim.local_steps
        while len(ratios) < reps:
            sgd[0] = 0.0
            t = time.process_time()
            sim.step()
            total = time.process_time() - t
            if sgd[0] > 0:                                  # a round whose clients all took 0 steps has no SGD
                rounds.append(total)
                sgd_s.append(sgd[0])
                ratios.append(total / sgd[0])
            if sim.server_steps > 50 * (reps + 1):
                raise RuntimeError("quafl_round_vs_sgd: no local steps were taken; check the workload")
    if not bool(torch.isfinite(sim.server).all()):
        raise RuntimeError("quafl_round_vs_sgd: the server model diverged; timings would be skewed")
    return {"ratio": statistics.median(ratios), "ratios": [round(r, 3) for r in ratios],
            "round_ms": statistics.median(rounds) * 1e3, "sgd_ms": statistics.median(sgd_s) * 1e3,
            "local_steps": sim.local_steps - steps0, "sit": sit, "reps": reps, "dim": task.dim,
            "num_clients": ds.num_clients, "decode_failures": sim.decode_failures, "warmup_s": round(warmup, 1)}
