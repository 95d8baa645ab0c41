"""``qafl bench`` lines about where and how the clients' local SGD runs: batched vs sequential, and on a GPU.

* ``batched_vs_sequential`` -- the same QuAFL run (n = 20, s = 10, K = 5, batch 32, identity) with the contacted
  clients' local SGD sequential (``NeuralTask.local_sgd``, one client at a time) and batched
  (:mod:`qafl_core.batched`, one call for all of them), for the MLP and logistic regression (hand-written batched
  matmuls) and the FEMNIST CNN (``torch.func.vmap``); the value is the speed-up, sequential time / batched time
  per server step, interleaved (a sequential block, then a batched block, repeated), median, CPU time on one
  thread. Reported, no target: a value below 1 means batching is slower there (``batched_clients`` stays off by
  default everywhere; results would change in the last bits).
* ``engine_vs_bare_cuda`` -- :func:`qafl_bench.workloads.engine_pair` on the GPU: QuAFL on the FEMNIST CNN
  (FEMNIST-shaped random inputs, n = 20, s = 10, K = 5, batch 32) vs a bare torch loop replaying its steps on
  the GPU, wall-clock after ``torch.cuda.synchronize()``; target <= 1.10.
* ``batched_vs_sequential_cuda`` -- the speed-up of batched over sequential local SGD on the GPU for the FEMNIST
  CNN at s = 10; target >= 5.

Without CUDA the two GPU lines print ``skipped: no GPU``.  Each ``bench_*`` function returns the fields of a
:class:`qafl_bench.suite.Line` but its name (``value``, ``target``, ``passed``, ``note``, ``detail``).
"""
from __future__ import annotations

import statistics
import time

import torch

from qafl_bench.workloads import (
    _synced,
    cnn_dataset,
    engine_pair,
    intra_op_threads,
    mlp_dataset,
)
from qafl_core.config import RunConfig
from qafl_core.device import configure
from qafl_core.local import NeuralTask
from qafl_core.runner import build_simulation

#: size -> (n, s, K, batch, server steps per block, repetitions)
SIZES = {"full": (20, 10, 5, 32, 10, 7), "quick": (20, 10, 5, 32, 5, 3), "tiny": (6, 3, 2, 8, 2, 1)}
#: the same for the FEMNIST CNN on the CPU line (a QuAFL step there costs ~100x an MLP step)
CNN_SIZES = {"full": (20, 10, 5, 32, 2, 5), "quick": (20, 10, 5, 32, 1, 3), "tiny": (6, 3, 2, 8, 2, 1)}
#: the models measured on the CPU line: the hand-written batched matmuls (qafl_core.batched.BATCHED_FORWARDS) and
#: the FEMNIST CNN through torch.func (qafl_core.batched_func)
CPU_MODELS = ("mlp", "logreg", "femnist_cnn")


def _simulation(ds, model: str, s: int, k: int, batch: int, batched: bool, device: str):
    cfg = RunConfig(dataset=ds.name, clients_per_round=s, local_steps=k, batch_size=batch, lr=0.01, sit=10.0,
                    time_limit=1e12, progress=False)
    task = NeuralTask(ds, model, 0, batch, device=device)
    task.batched = batched
    return build_simulation(cfg, task)


def batched_speedup(ds, model: str, size: str, device: str = "cpu", sizes: dict | None = None) -> dict:
    """Sequential / batched time per QuAFL server step (same seed, so both make the same contacts and steps)."""
    n, s, k, batch, rounds, reps = (sizes or SIZES)[size]
    sims = {b: _simulation(ds, model, s, k, batch, b, device) for b in (False, True)}
    if not sims[True].task.supports_batched:
        raise ValueError(f"{model}: batched local SGD does not support this model")
    cuda = torch.device(device).type == "cuda"
    clock = _synced(time.perf_counter) if cuda else time.process_time
    times: dict[bool, list[float]] = {False: [], True: []}
    with intra_op_threads(1 if not cuda else torch.get_num_threads()):
        for sim in sims.values():                      # warm-up: QuAFL's first contacts take no steps
            for _ in range(-(-ds.num_clients // s) + 1):
                sim.step()
        for r in range(reps):
            for b in ((False, True) if r % 2 == 0 else (True, False)):
                t = clock()
                for _ in range(rounds):
                    sims[b].step()
                times[b].append((clock() - t) / rounds)
    seq, bat = statistics.median(times[False]), statistics.median(times[True])
    return {"speedup": seq / bat, "sequential_ms": seq * 1e3, "batched_ms": bat * 1e3, "reps": reps,
            "rounds": rounds, "local_steps": [sims[False].local_steps, sims[True].local_steps],
            "clock": "wall" if cuda else "cpu", "n": n, "s": s, "k": k, "batch": batch}


def _line(value, target: str, passed: bool | None, note: str, detail: dict | None = None) -> dict:
    return {"value": value, "target": target, "passed": passed, "note": note, "detail": detail or {}}


def bench_batched_cpu(size: str) -> dict:
    n, s, k, batch, _, _ = SIZES[size]
    ds, source = mlp_dataset(n, tiny=size == "tiny")
    cnn, cnn_source = cnn_dataset(CNN_SIZES[size][0], tiny=size == "tiny")
    res = {m: batched_speedup(cnn, m, size, sizes=CNN_SIZES) if m == "femnist_cnn" else batched_speedup(ds, m, size)
           for m in CPU_MODELS}
    note = (f"reported, no target; sequential / batched time per QuAFL step (mlp, logreg: {source}; femnist_cnn: "
            f"{cnn_source}), n={n} s={s} K={k} batch {batch}, identity, 1 thread, CPU time, median of "
            f"{res[CPU_MODELS[0]]['reps']} (femnist_cnn: {res['femnist_cnn']['reps']}): " + "; ".join(
                f"{m} {r['sequential_ms']:.1f} vs {r['batched_ms']:.1f} ms" for m, r in res.items()))
    return _line({m: round(r["speedup"], 2) for m, r in res.items()}, "reported", None, note, res)


def bench_engine_cuda(size: str) -> dict:
    target = "<= 1.10"
    if not torch.cuda.is_available():
        return _line(None, target, None, "skipped: no GPU")
    configure(torch.device("cuda"))
    n, s, k, batch, rounds, reps = SIZES[size]
    ds, source = cnn_dataset(n, tiny=True)              # FEMNIST-shaped random inputs
    res = engine_pair(ds, "femnist_cnn", s, k, batch, rounds, reps, device="cuda")
    v = res["ratio"]
    note = (f"QuAFL identity, FEMNIST CNN ({source}), n={n} s={s} K={k} batch {batch}, {torch.cuda.get_device_name()}: "
            f"engine {res['engine_ms']:.2f} ms/step, bare {res['bare_ms']:.2f} ms/step, wall time")
    return _line(round(v, 3), target, v <= 1.10, note, res)


def bench_batched_cuda(size: str) -> dict:
    target = ">= 5"
    if not torch.cuda.is_available():
        return _line(None, target, None, "skipped: no GPU")
    configure(torch.device("cuda"))
    n, s, k, batch, _, _ = SIZES[size]
    ds, source = cnn_dataset(n, tiny=True)
    try:
        res = batched_speedup(ds, "femnist_cnn", size, device="cuda")
    except ValueError as exc:
        return _line(None, target, None, f"skipped: {exc}")
    v = res["speedup"]
    note = (f"FEMNIST CNN ({source}), n={n} s={s} K={k} batch {batch}, {torch.cuda.get_device_name()}: "
            f"sequential {res['sequential_ms']:.1f} vs batched {res['batched_ms']:.1f} ms per QuAFL step, wall time")
    return _line(round(v, 2), target, v >= 5, note, res)
