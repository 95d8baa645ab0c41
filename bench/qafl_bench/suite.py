"""The benchmarks of ``qafl bench`` (:mod:`qafl_core.cli.bench`): what the simulator costs beyond the clients' local SGD.

Over 250 lines: it is the one table of benchmark lines (each a few lines of setup and formatting); the
workloads themselves are in :mod:`qafl_bench.workloads`, :mod:`qafl_bench.quantize` and :mod:`qafl_bench.device`.

Every ratio compares two runs made in this process, interleaved (A, B, A, B, ...: each engine round is
followed by the bare loop replaying exactly its steps), median of several repetitions, so that load from
other processes cancels out as far as it can. Single-threaded
runs are timed in this process's CPU time (on a shared 2-core machine, wall-clock pairs swung by
+-30 %; CPU time barely moves); anything multi-threaded or multi-process in wall-clock time.

* ``engine_vs_bare_cnn`` -- QuAFL (identity quantizer; n = 20, s = 5, K = 5, batch 32, sit = 10) on the LEAF
  FEMNIST CNN vs a bare torch loop (one ``nn.Module``, ``torch.optim.SGD``, ``loss.backward()``, batches
  sliced from pre-loaded tensors) replaying the same (client, steps) calls on the same clients' data.
  Per-step times; one intra-op thread on both sides; evaluation is not on the timed path (the runner
  evaluates every ``eval_every`` only). FEMNIST: the real LEAF sample (first 20 writers) when
  ``$QAFL_DATA_DIR`` is set, else FEMNIST-shaped random data (the line says which).
* ``engine_vs_bare_mlp`` -- the same for the paper code's MLP 784-32-10 (n = 20, s = 5, K = 5, batch 128) on
  Fashion-MNIST shards (MNIST-shaped random data when the files are absent); one thread (the runner's
  rule for models under 200k coordinates).
* ``batched_vs_bare_mlp`` -- the same engine with the contacted clients' local SGD batched
  (:mod:`qafl_core.batched`) vs the same sequential bare loop.
* ``flower_vs_engine`` -- Flower's ``run_simulation`` FedAvg round / this engine's FedAvg round on the MLP
  workload (``bench/flower_compare.py`` in a child process, the engine rounds run between Flower's;
  skipped when Flower is not installed).
* ``quantizer_gbps`` -- lattice and QSGD (b = 10) encode+decode throughput on a 6.6 M-coordinate vector
  (the FEMNIST CNN) next to ``copy_``, GB/s of float32 input; target: one message costs less than one CNN
  SGD step (batch 32), timed interleaved with the quantizers; all on one thread, as the engine runs them.
  The fused sends (``send``: encode+decode without codes) are reported next to them.
* ``lattice_vs_copy`` -- lattice (b = 12) encode+decode GB/s / ``copy_`` GB/s on the same vector (GB/s =
  vector bytes / time for both), the encode+decode being the fused send into a reused output (as the channel
  sends; the copy also writes a reused vector); a fresh output and encode-then-decode in the note.
* ``quafl_lattice_round_vs_sgd`` -- a QuAFL lattice:12 FEMNIST-CNN round (n = 20, s = 10, K = 5, batch 32)
  / the local SGD inside that round (CPU time of the task's ``local_sgd`` calls), median over rounds. ``sit``
  is 10 * 105/n, so that a client meets the server every 39 time units as in the n = 105 FEMNIST runs at
  s = 10 and completes its K steps as there (at sit 10 with n = 20 it would complete about 1.4).
* ``fedbuff_concurrency`` -- the CPU time of a FedBuff run at concurrency C = 2s divided by the same run at
  C = n (MLP 784-32-10 on Fashion-MNIST shards, n = 100, Z = s = 10, K = 5, batch 32, identity, one thread, the
  same simulated horizon), interleaved, median of repetitions; reported, no target. The value is at the
  default ``sit`` = 10, the note adds ``sit`` = 1 and the local SGD steps each run made.
* ``peak_rss_300_clients_gb`` -- peak resident memory (``ru_maxrss`` of a child process, via ``os.wait4``)
  of a QuAFL run (lattice, b = 10) with 300 FEMNIST-CNN clients: evaluation, a few rounds, evaluation.
* ``batched_vs_sequential``, ``engine_vs_bare_cuda``, ``batched_vs_sequential_cuda`` -- batched vs sequential local
  SGD, and the engine on a GPU (:mod:`qafl_bench.device`; the GPU lines print ``skipped: no GPU`` without one).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qafl_bench import device as bench_device
from qafl_bench.quantize import (
    lattice_vs_copy,
    quafl_round_vs_sgd,
    quantizer_throughput,
)
from qafl_bench.workloads import (
    cnn_dataset,
    engine_pair,
    keep_freed_memory,
    mlp_dataset,
)

NAMES = ("engine_vs_bare_cnn", "engine_vs_bare_mlp", "batched_vs_bare_mlp", "flower_vs_engine", "quantizer_gbps",
         "lattice_vs_copy", "quafl_lattice_round_vs_sgd", "peak_rss_300_clients_gb", "fedbuff_concurrency",
         "batched_vs_sequential", "engine_vs_bare_cuda", "batched_vs_sequential_cuda")
FLOWER_SCRIPT = Path(__file__).resolve().parent.parent / "flower_compare.py"


@dataclass
class Line:
    """One benchmark result: ``value`` against ``target`` (``passed`` None: skipped or informational)."""

    name: str
    value: Any
    target: str
    passed: bool | None
    note: str = ""
    detail: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- sizes
SIZES = {
    # cnn: n, s, K, batch, timed rounds per repetition, repetitions; mlp likewise; flower rounds; rss clients/rounds;
    # round: n, s, K, batch, timed rounds (quafl_lattice_round_vs_sgd)
    "full": dict(cnn=(20, 5, 5, 32, 1, 11), mlp=(20, 5, 5, 128, 20, 9), flower=10, rss=(300, 3), quant_reps=7,
                 round=(20, 10, 5, 32, 7)),
    "quick": dict(cnn=(20, 5, 5, 32, 1, 5), mlp=(20, 5, 5, 128, 10, 5), flower=5, rss=(300, 1), quant_reps=3,
                  round=(20, 10, 5, 32, 3)),
    "tiny": dict(cnn=(4, 2, 2, 8, 1, 2), mlp=(4, 2, 2, 16, 2, 2), flower=4, rss=(4, 1), quant_reps=2,
                 round=(4, 2, 2, 8, 2)),
}


def _ratio_line(name: str, res: dict, limit: float, what: str) -> Line:
    v = res["ratio"]
    note = (f"{what}: engine {res['engine_ms']:.2f} ms/step, bare {res['bare_ms']:.2f} ms/step, "
            f"{res['steps']} steps in {res['reps']} reps, {res['threads']} thread(s), {res['clock']} time")
    return Line(name, round(v, 3), f"<= {limit:.2f}", v <= limit, note, res)


def bench_cnn(size: str) -> Line:
    n, s, k, b, rounds, reps = SIZES[size]["cnn"]
    ds, source = cnn_dataset(n, tiny=size == "tiny")
    res = engine_pair(ds, "femnist_cnn", s, k, b, rounds, reps, threads=1)
    return _ratio_line("engine_vs_bare_cnn", res, 1.10, f"QuAFL identity, FEMNIST CNN ({source}), n={n} s={s} K={k} batch {b}")


def bench_mlp(size: str, batched: bool = False) -> Line:
    n, s, k, b, rounds, reps = SIZES[size]["mlp"]
    ds, source = mlp_dataset(n, tiny=size == "tiny")
    res = engine_pair(ds, "mlp", s, k, b, rounds, reps, batched=batched)
    what = f"QuAFL identity{' batched' if batched else ''}, MLP 784-32-10 ({source}), n={n} s={s} K={k} batch {b}"
    if batched:
        return _ratio_line("batched_vs_bare_mlp", res, 1.0, what)
    return _ratio_line("engine_vs_bare_mlp", res, 1.5, what)


def _child_env() -> dict[str, str]:
    """The environment of a benchmark child process.  The children (and Flower's Ray workers) import
    qafl_core and qafl_bench, so this checkout and its ``bench/`` go first on PYTHONPATH: that works whether or
    not the package is installed (e.g. ``python -m qafl_core bench`` run from the source tree)."""
    bench = Path(__file__).resolve().parent.parent
    paths = (str(bench.parent), str(bench), os.environ.get("PYTHONPATH"))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


def bench_flower(size: str) -> Line:
    import importlib.util

    name, target = "flower_vs_engine", ">= 40"
    if importlib.util.find_spec("flwr") is None:
        return Line(name, None, target, None, "skipped: Flower is not installed (pip install 'flwr[simulation]', "
                                                "the project's 'bench' extra)")
    if not FLOWER_SCRIPT.is_file():
        return Line(name, None, target, None, f"skipped: {FLOWER_SCRIPT} not found (run from a source checkout)")
    proc = subprocess.run([sys.executable, str(FLOWER_SCRIPT), "--rounds", str(SIZES[size]["flower"])],
                          capture_output=True, text=True, timeout=900, env=_child_env())
    out = [ln for ln in proc.stdout.splitlines() if ln.startswith("FLOWER_BENCH_JSON ")]
    if proc.returncode != 0 or not out:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return Line(name, None, target, False, f"Flower run failed (exit {proc.returncode}): {' | '.join(tail)}")
    res = json.loads(out[-1].split(" ", 1)[1])
    v = res["ratio"]
    note = (f"Flower {res['flower_version']} FedAvg round {res['flower_round_s']:.3f} s vs engine FedAvg round "
            f"{res['engine_round_s'] * 1e3:.1f} ms ({res['rounds_counted']} rounds; Flower start-up "
            f"{res['startup_s']:.0f} s + first rounds not counted); {res['workload']}")
    return Line(name, round(v, 1), target, v >= 40, note, res)


def bench_quantizers(size: str) -> Line:
    tiny = size == "tiny"
    res = quantizer_throughput(100_000 if tiny else 6_603_710, SIZES[size]["quant_reps"],
                               step_model="mlp" if tiny else "femnist_cnn")
    value = {k: round(v, 2) for k, v in res["gbps"].items()}
    ms = res["ms"]
    ok = max(ms["lattice"], ms["qsgd"]) < ms["sgd_step"]
    note = (f"GB/s of float32 input, encode+decode, d={res['d']} (FEMNIST CNN), b=10, 1 thread, median of "
            f"{res['reps']}: lattice {ms['lattice']:.1f} ms, qsgd {ms['qsgd']:.1f} ms, copy {ms['copy']:.2f} ms "
            f"per message vs {ms['sgd_step']:.1f} ms per CNN SGD step (batch 32, 1 thread), interleaved; fused send: "
            f"lattice {ms['lattice_send']:.1f} ms, qsgd {ms['qsgd_send']:.1f} ms; {_kernels_note(res)}")
    return Line("quantizer_gbps", value, "message < 1 CNN SGD step", ok, note, res)


def _kernels_note(res: dict) -> str:
    k = res.get("kernels")
    if not isinstance(k, dict):
        return "eager kernels"
    if k["failed"]:
        return f"eager kernels (compiling failed: {k['failed']})"
    on = k["mode"] == "on" or (k["mode"] == "auto" and res["d"] >= k["min_coords"])
    return f"{'compiled' if on else 'eager'} kernels (QAFL_QUANT_COMPILE={k['mode']}; warm-up {res['warmup_s']} s)"


def bench_lattice_vs_copy(size: str) -> Line:
    tiny = size == "tiny"
    res = lattice_vs_copy(100_000 if tiny else 6_603_710, SIZES[size]["quant_reps"])
    ms, v = res["ms"], res["ratio"]
    note = (f"lattice b={res['bits']} encode+decode fused (send, reused output as the channel sends) "
            f"{ms['send']:.2f} ms = {res['gbps']['send']:.2f} GB/s vs copy {ms['copy']:.2f} ms = "
            f"{res['gbps']['copy']:.2f} GB/s, d={res['d']}, 1 thread, median of {res['reps']}, interleaved; send into "
            f"a fresh output {ms['send_fresh']:.2f} ms (ratio {res['ratio_send_fresh']:.3f}); encode then decode "
            f"{ms['encode_decode']:.2f} ms (ratio {res['ratio_encode_decode']:.3f}); {_kernels_note(res)}")
    return Line("lattice_vs_copy", round(v, 3), ">= 0.50", v >= 0.5, note, res)


def bench_quafl_round(size: str) -> Line:
    n, s, k, b, reps = SIZES[size]["round"]
    name, target = "quafl_lattice_round_vs_sgd", "<= 1.10"
    try:
        ds, source = cnn_dataset(n, tiny=size == "tiny")
    except (FileNotFoundError, ValueError) as exc:
        return Line(name, None, target, None, f"skipped: FEMNIST data not found ({str(exc).splitlines()[0][:200]})")
    model = "mlp" if size == "tiny" else "femnist_cnn"
    res = quafl_round_vs_sgd(ds, model, s, k, b, reps, sit=10.0 * 105 / n)
    v = res["ratio"]
    note = (f"QuAFL lattice:12 round {res['round_ms']:.0f} ms vs its local SGD {res['sgd_ms']:.0f} ms, "
            f"{model} ({source}), n={n} s={s} K={k} batch {b} sit {res['sit']:g} (the n=105 runs' contact interval), "
            f"{res['local_steps']} steps in {reps} rounds, "
            f"1 thread, cpu time, median; {res['decode_failures']} decode failures")
    return Line(name, round(v, 3), target, v <= 1.10, note, res)


def bench_rss(size: str) -> Line:
    clients, rounds = SIZES[size]["rss"]
    model = "femnist_cnn" if size != "tiny" else "mlp"
    cmd = [sys.executable, "-m", "qafl_bench.workloads", "rss", str(clients), str(rounds), model]
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=_child_env())
        _, status, usage = os.wait4(proc.pid, 0)    # this child's own rusage (RUSAGE_CHILDREN mixes all children)
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    name, target = "peak_rss_300_clients_gb", "< 12"
    lines = [ln for ln in out.splitlines() if ln.startswith("RSS_JSON ")]
    if proc.returncode != 0 or not lines:
        tail = err.strip().splitlines()[-3:]
        return Line(name, None, target, False, f"child run failed (exit {proc.returncode}): {' | '.join(tail)}")
    res = json.loads(lines[-1].split(" ", 1)[1])
    res["ru_maxrss_bytes"] = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    gb = res["ru_maxrss_bytes"] / 1e9
    note = (f"QuAFL lattice b=10, {clients} clients x {res['dim']} coords ({res['source']}), {res['rounds']} rounds "
            f"+ 2 evaluations; client matrix {res['client_matrix_bytes'] / 1e9:.2f} GB; ru_maxrss of the child")
    return Line(name, round(gb, 2), target, gb < 12, note, res)


# fedbuff_concurrency: n, s, K, batch, ((sit, horizon), ...), repetitions
CONCURRENCY_SIZES = {"full": (100, 10, 5, 32, ((10.0, 500.0), (1.0, 60.0)), 3),
                     "quick": (100, 10, 5, 32, ((10.0, 200.0), (1.0, 30.0)), 3),
                     "tiny": (10, 2, 2, 8, ((10.0, 30.0), (1.0, 10.0)), 1)}


def bench_fedbuff_concurrency(size: str) -> Line:
    """What bounding FedBuff's concurrency saves: a run at C = 2s over the same run at C = n (every client busy).

    The simulator trains a job only when it reaches the server, so the cost follows the arrivals the server
    handles: at most Z per ``sit`` (server-bound), at most C per mean job time (client-bound)."""
    from qafl_bench.workloads import intra_op_threads
    from qafl_core.config import RunConfig
    from qafl_core.local import NeuralTask
    from qafl_core.runner import build_simulation

    n, s, k, batch, settings, reps = CONCURRENCY_SIZES[size]
    ds, source = mlp_dataset(n, tiny=size == "tiny")

    def run_once(c: int, sit: float, horizon: float) -> tuple[float, int]:
        cfg = RunConfig(dataset="fmnist", algorithm="fedbuff", num_clients=n, clients_per_round=s, local_steps=k,
                        batch_size=batch, lr=0.01, sit=sit, time_limit=horizon, concurrency=c, progress=False)
        sim = build_simulation(cfg, NeuralTask(ds, "mlp", 0, batch))
        t = time.process_time()
        while not sim.done():
            sim.step()
        return time.process_time() - t, sim.local_steps

    res = {}
    with intra_op_threads(1):
        for sit, horizon in settings:
            ratios, steps = [], None
            for _ in range(reps):                       # interleaved: C = n, then C = 2s, repeated
                full, lean = run_once(n, sit, horizon), run_once(2 * s, sit, horizon)
                ratios.append(lean[0] / full[0])
                steps = (full[1], lean[1])
            res[f"sit={sit:g}"] = {"ratio": statistics.median(ratios), "ratios": ratios, "horizon": horizon,
                                   "local_steps_n": steps[0], "local_steps_2s": steps[1]}
    (a, ra), (b, rb) = res.items()
    note = (f"reported, no target; FedBuff MLP ({source}), n={n} Z=s={s} K={k} batch {batch}, identity, 1 thread, "
            f"CPU time, median of {reps}: {a} (default, t<={ra['horizon']:g}) C=2s/C=n = {ra['ratio']:.3f} "
            f"({ra['local_steps_2s']} vs {ra['local_steps_n']} local steps); {b} (t<={rb['horizon']:g}) "
            f"{rb['ratio']:.3f} ({rb['local_steps_2s']} vs {rb['local_steps_n']} local steps)")
    return Line("fedbuff_concurrency", round(ra["ratio"], 3), "reported", None, note, res)


RUNNERS = {"engine_vs_bare_cnn": bench_cnn, "engine_vs_bare_mlp": bench_mlp,
           "batched_vs_bare_mlp": lambda size: bench_mlp(size, batched=True), "flower_vs_engine": bench_flower,
           "quantizer_gbps": bench_quantizers, "lattice_vs_copy": bench_lattice_vs_copy,
           "quafl_lattice_round_vs_sgd": bench_quafl_round, "peak_rss_300_clients_gb": bench_rss,
           "fedbuff_concurrency": bench_fedbuff_concurrency, "batched_vs_sequential": bench_device.bench_batched_cpu,
           "engine_vs_bare_cuda": bench_device.bench_engine_cuda,
           "batched_vs_sequential_cuda": bench_device.bench_batched_cuda}


# ---------------------------------------------------------------------- output
def format_table(lines: list[Line]) -> str:
    """A fixed-width table: name, value, target, pass/fail/skip, note."""
    rows = [f"{'name':<26} {'value':>28}  {'target':<24} {'result':<6} note"]
    for ln in lines:
        if isinstance(ln.value, dict):
            val = " ".join(f"{k}={v}" for k, v in ln.value.items())
        else:
            val = "-" if ln.value is None else str(ln.value)
        res = "skip" if ln.passed is None else "pass" if ln.passed else "FAIL"
        rows.append(f"{ln.name:<26} {val:>28}  {ln.target:<24} {res:<6} {ln.note}")
    return "\n".join(rows)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def run_bench(names: list[str], size: str, log=None) -> list[Line]:
    keep_freed_memory()      # an allocator artifact of interleaving two loops in one process (see its docstring)
    out = []
    for name in names:
        t = time.perf_counter()
        line = RUNNERS[name](size)
        if isinstance(line, dict):      # qafl_bench.device returns a line's fields but its name
            line = Line(name, **line)
        line.detail["wall_s"] = round(time.perf_counter() - t, 1)
        if log is not None:
            log(f"[{line.detail['wall_s']:.0f} s] {format_table([line]).splitlines()[1]}")
        out.append(line)
    return out
