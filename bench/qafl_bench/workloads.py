"""The workloads behind ``qafl bench`` (:mod:`qafl_bench.suite`): data, the bare torch loop, the interleaved
engine-vs-bare timing (on the CPU or a GPU), and the peak-memory child run
(``python -m qafl_bench.workloads rss CLIENTS ROUNDS MODEL``). The quantizer workloads are in :mod:`qafl_bench.quantize`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from qafl_core.data.federated import FederatedDataset
from qafl_core.rng import torch_generator

LR = 0.01        # small enough that neither side diverges on random data (NaN/denormal arithmetic would skew timings)


# ---------------------------------------------------------------------- data
def random_dataset(name: str, n: int, per_client: int, shape: tuple[int, ...], classes: int,
                   seed: int = 0) -> FederatedDataset:
    """``n`` clients of uniform random inputs and labels, shaped like ``name`` (timings only)."""
    g = torch_generator(seed, "bench_data", name)
    parts = [(torch.rand(per_client, *shape, generator=g), torch.randint(0, classes, (per_client,), generator=g))
             for _ in range(n)]
    test = [(x[:4], y[:4]) for x, y in parts]
    return FederatedDataset.from_clients(name, [str(i) for i in range(n)], parts, test, classes)


def cnn_dataset(n: int, tiny: bool = False) -> tuple[FederatedDataset, str]:
    """The first ``n`` writers of the real LEAF FEMNIST sample if ``$QAFL_DATA_DIR`` is set, else FEMNIST-shaped
    random data (140 samples per client, the sample's mean)."""
    if not tiny and os.environ.get("QAFL_DATA_DIR"):
        from qafl_core.data.femnist import load_femnist

        ds = load_femnist(None)
        return ds.subset(list(range(min(n, ds.num_clients)))), "real LEAF FEMNIST sample"
    return random_dataset("femnist", n, 20 if tiny else 140, (1, 28, 28), 62), "FEMNIST-shaped random data"


def mlp_dataset(n: int, tiny: bool = False) -> tuple[FederatedDataset, str]:
    """Fashion-MNIST in ``n`` i.i.d. shards if its files are installed, else MNIST-shaped random data."""
    if not tiny:
        try:
            from qafl_core.data.vision import load_vision

            return load_vision("fmnist", None, num_clients=n, seed=0), "Fashion-MNIST"
        except (FileNotFoundError, ValueError):
            pass
    return random_dataset("mnist", n, 40 if tiny else 3000, (1, 28, 28), 10), "MNIST-shaped random data"


def keep_freed_memory() -> bool:
    """glibc: keep freed heap memory for reuse (trim threshold 1 GiB, mmap threshold 32 MiB) in this process.

    With glibc's adaptive defaults, running the bare loop between engine rounds left the engine's 26 MB
    gradient buffers coming from memory just returned to the OS: 10-15k page faults per engine round in
    some processes and none in others, which showed up as +2-30 % noise on the CNN line. Tuning makes
    both sides reuse their memory. Returns False where ``mallopt`` is not available (non-glibc systems).
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 32 << 20))


@contextlib.contextmanager
def intra_op_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------- the reference
class BareLoop:
    """What a hand-written simulation's inner loop does: one ``nn.Module``, ``torch.optim.SGD``,
    ``loss.backward()``, batches sliced from pre-loaded tensors. No averaging, no messages."""

    def __init__(self, ds: FederatedDataset, model: str, batch: int, lr: float = LR, seed: int = 0,
                 device: torch.device | str = "cpu"):
        from qafl_core.models import build_model, set_dropout_generator

        self.net = build_model(model, ds.input_shape, ds.num_classes,
                               generator=torch_generator(seed, "bare_init")).to(device)
        set_dropout_generator(self.net, torch_generator(seed, "bare_dropout", device=device))
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)
        self.x, self.y, self.off = ds.x_train.to(device), ds.y_train.to(device), ds.train_offsets.tolist()
        self.device = torch.device(device)
        self.gen = torch_generator(seed, "bare_batches")
        self.batch = batch

    def run(self, steps: list[tuple[int, int]], clock=time.perf_counter) -> float:
        """One SGD step on a random batch of ``size`` samples of client ``c`` for each ``(c, size)``; returns
        the seconds taken (by ``clock``)."""
        t = clock()
        self.net.train()
        for c, size in steps:
            idx = torch.randint(self.off[c], self.off[c + 1], (size,), generator=self.gen).to(self.device)
            self.opt.zero_grad()
            F.cross_entropy(self.net(self.x[idx]), self.y[idx]).backward()
            self.opt.step()
        dt = clock() - t
        # drop the last gradients: held between runs, they change the heap the engine's next round allocates
        # from (measured: ~4000 page faults per engine round, +10-30 % CPU time, none without the bare loop)
        self.opt.zero_grad(set_to_none=True)
        return dt


# ---------------------------------------------------------------------- engine vs bare
def engine_pair(ds: FederatedDataset, model: str, s: int, k: int, batch: int, rounds: int, reps: int,
                batched: bool = False, algorithm: str = "quafl", threads: int | None = None,
                device: str = "cpu") -> dict:
    """Per-step time of the engine (``rounds`` server steps) over that of :class:`BareLoop` replaying exactly
    the engine's steps (client and batch size of each: epochs end with a short batch) right after it, for
    ``reps`` pairs; the median ratio. ``threads``: intra-op threads of both sides (None: the runner's rule,
    one below 200k coordinates, else torch's default). On one thread the clock is this process's CPU time,
    which other processes on a shared machine barely disturb (wall-clock pairs swung by +-30 % there); with
    more threads it is wall-clock time (CPU time would count the workers' spinning). On a GPU (``device``) both
    sides run there, timed in wall-clock time after ``torch.cuda.synchronize()``."""
    from qafl_core.config import RunConfig
    from qafl_core.local import NeuralTask
    from qafl_core.runner import build_simulation

    cfg = RunConfig(dataset=ds.name, algorithm=algorithm, clients_per_round=s, local_steps=k, batch_size=batch, lr=LR,
                    time_limit=1e12, progress=False)
    task = NeuralTask(ds, model, 0, batch, device=device)
    if batched:
        task.batched = True
    sim = build_simulation(cfg, task)
    cuda = task.device.type == "cuda"
    steps: list[tuple[int, int]] = []                     # (client, batch size) of every local step, in order
    draw = task.batcher.next

    def recorded_next(client: int) -> torch.Tensor:
        idx = draw(client)
        steps.append((client, len(idx)))
        return idx

    task.batcher.next = recorded_next
    bare = BareLoop(ds, model, batch, device=task.device)
    if threads is None:
        threads = 1 if task.dim < 200_000 else torch.get_num_threads()
    clock = time.process_time if threads == 1 and not cuda else time.perf_counter
    if cuda:
        clock = _synced(clock)
    ratios, eng_ms, bare_ms, total, faults = [], [], [], 0, []
    with intra_op_threads(threads):
        for _ in range(math.ceil(ds.num_clients / s)):   # warm-up: QuAFL's first contacts take no steps
            sim.step()
        for r in range(-2, reps):                         # two unrecorded pairs settle both sides' heaps
            steps.clear()
            f_start = _minor_faults()
            t = clock()
            for _ in range(rounds):
                sim.step()
            te = clock() - t
            f_mid = _minor_faults()
            done = list(steps)
            tb = bare.run(done, clock)
            if done and r >= 0:
                faults.append((f_mid - f_start, _minor_faults() - f_mid))
                eng_ms.append(te / len(done) * 1e3)
                bare_ms.append(tb / len(done) * 1e3)
                ratios.append(te / tb)
                total += len(done)
    if not ratios:
        raise RuntimeError("engine_pair: no local steps were taken; use more rounds")
    if not all(bool(torch.isfinite(p).all()) for p in bare.net.parameters()):
        raise RuntimeError("engine_pair: the bare loop diverged (non-finite weights); timings would be skewed")
    return {"ratio": statistics.median(ratios), "engine_ms": statistics.median(eng_ms),
            "bare_ms": statistics.median(bare_ms), "ratios": [round(x, 3) for x in ratios], "steps": total,
            "reps": len(ratios), "threads": threads, "clock": "wall" if cuda or threads > 1 else "cpu", "dim": task.dim,
            "num_clients": ds.num_clients, "page_faults_engine_bare": faults}


def _synced(clock):
    """``clock`` read after the GPU has finished everything queued (its kernels run asynchronously)."""
    def read() -> float:
        torch.cuda.synchronize()
        return clock()
    return read


def _minor_faults() -> int:
    """Minor page faults of this process so far (fresh memory touched: a cost that shows up in CPU time)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ---------------------------------------------------------------------- peak memory (child process)
def rss_child(clients: int, rounds: int, model: str) -> dict:
    """A QuAFL run (lattice, b = 10, s = 5, K = 5) with ``clients`` clients: evaluate, ``rounds`` rounds,
    evaluate. Merged LEAF FEMNIST (300 writers) when ``$QAFL_DATA_DIR`` is set, else random data."""
    from qafl_core.config import RunConfig
    from qafl_core.local import NeuralTask
    from qafl_core.runner import build_simulation

    t0 = time.perf_counter()
    ds, source = None, "FEMNIST-shaped random data"
    if model == "femnist_cnn" and os.environ.get("QAFL_DATA_DIR"):
        from qafl_core.data.femnist import load_femnist

        ds = load_femnist(None, merge=True)
        source = f"merged LEAF FEMNIST, {ds.num_clients} writers"
        if ds.num_clients > clients:
            ds = ds.subset(list(range(clients)))
    if ds is None:
        ds = random_dataset("femnist", clients, 140 if model == "femnist_cnn" else 20, (1, 28, 28), 62)
    cfg = RunConfig(dataset="femnist", algorithm="quafl", clients_per_round=min(5, ds.num_clients), local_steps=5,
                    batch_size=32, lr=LR, quantizer="lattice", bits=10, lattice_eps=1e-4, time_limit=1e12,
                    progress=False)
    task = NeuralTask(ds, model, 0, 32)
    sim = build_simulation(cfg, task)
    task.evaluate(sim.server)
    for _ in range(rounds):
        sim.step()
    task.evaluate(sim.server)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_bytes": self_kb * (1 if sys.platform == "darwin" else 1024), "dim": task.dim,
            "num_clients": ds.num_clients, "client_matrix_bytes": sim.clients.numel() * sim.clients.element_size(),
            "rounds": rounds, "local_steps": sim.local_steps, "decode_failures": sim.decode_failures,
            "source": source, "wall_s": round(time.perf_counter() - t0, 1)}


if __name__ == "__main__":   # the bench's child process: python -m qafl_bench.workloads rss CLIENTS ROUNDS MODEL
    if len(sys.argv) != 5 or sys.argv[1] != "rss":
        sys.exit("usage: python -m qafl_bench.workloads rss CLIENTS ROUNDS MODEL")
    print("RSS_JSON " + json.dumps(rss_child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])), flush=True)
