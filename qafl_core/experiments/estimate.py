"""``qafl reproduce --estimate``: what each notebook of a profile would cost here, without training.

For every run of a notebook (its figure module's ``runs(params)``) the engine itself simulates the run's clock and
counters with a *null task* — one coordinate, local SGD that does nothing, an evaluation that returns zeros — and
an identity channel whose messages weigh what the run's quantizer would send for the real model (the size of one
real message, measured by encoding a vector of the model's dimension once).  The server loop, client sampling,
step durations, evaluation cadence and stopping rule are the run's own (:func:`qafl_core.runner.build_simulation`,
the same named random streams), so the number of server steps, local SGD steps, messages, bits and evaluations is

* **exact** for every run whose control flow does not depend on model values: all runs here, as long as they end
  at their time limit or step limit;
* **approximate** when a real run stops early because it diverges (the estimate runs to the end) and, for
  quantizers whose message size depends on the values (none of the lattice / QSGD / identity ones: their sizes
  are fixed by the dimension), in the bits.

The estimated wall time multiplies those counts by costs measured here in a few seconds per (dataset, model,
batch size, evaluation subset) and per quantizer: one local SGD step, one evaluation of the server model, one
encode + decode of a message; the costs are cached in ``$QAFL_CACHE_DIR/estimate-costs.json`` (per machine: the
CPU count and torch threads are part of the key).  Not counted: the server's averaging arithmetic, Python
overhead per step, loading the data and starting the kernels, so the time is a lower bound of the order of the
real one, not a prediction to the second.  Runs already in the run cache or in the committed results archive
(``results/<profile>``, :func:`qafl_core.archive.lookup`) cost nothing, and a run two notebooks share (tab1 reuses
fig5's) is counted once, where it first runs.

The module is longer than most (~380 lines): the null simulation, the cost probe and the report are the one
command, kept together so that what is exact and what is approximate is visible in one place.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from qafl_core.algorithms.base import _Threads, vector_ops_on_one_thread
from qafl_core.config import RunConfig
from qafl_core.quantize import IdentityQuantizer, make_quantizer
from qafl_core.quantize.base import Message


class NullTask:
    """A task of one coordinate whose local SGD and evaluation do nothing (:class:`qafl_core.local.Task`)."""

    dim = 1
    num_params = 1
    segments = [1]
    batched = False
    supports_batched = True     # a run with batched_clients is estimated too (it trains one by one here)

    def __init__(self, num_clients: int):
        self.num_clients = int(num_clients)

    def init_vector(self) -> torch.Tensor:
        return torch.zeros(1)

    def local_sgd(self, row: torch.Tensor, client: int, num_steps: int, lr: float) -> None:
        pass

    def evaluate(self, vec: torch.Tensor) -> dict[str, float]:
        return {"loss": 0.0, "accuracy": 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class SizedChannel(IdentityQuantizer):
    """The identity channel, with each message counted and weighing ``message_bits`` (a real message's size)."""

    def __init__(self, message_bits: int):
        super().__init__(copy=False)
        self.message_bits, self.messages = int(message_bits), 0

    def borrowing(self) -> "SizedChannel":
        return self

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message:
        self.messages += 1
        return Message({"values": x}, self.message_bits, x.numel())

    def send(self, *args: Any, **kwargs: Any):
        """``decode(encode(x))`` in one call, where the quantizers have it: the identity's, with the real size."""
        self.messages += 1
        return super().send(*args, **kwargs)._replace(bits=self.message_bits)


@dataclass
class RunCounts:
    """What one run does: its counters at the end, and whether it is already computed."""

    config_hash: str
    label: str
    server_steps: int = 0
    local_steps: int = 0
    messages: int = 0
    bits: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    status: str = "to run"        # "to run" | "cached" | "archived" | "shared" (counted in an earlier notebook)


@dataclass
class NotebookEstimate:
    """The runs of one notebook and their totals (runs not to run count 0)."""

    name: str
    runs: list[RunCounts] = field(default_factory=list)

    def total(self, key: str) -> float:
        return sum(getattr(r, key) for r in self.runs if r.status == "to run")

    def to_dict(self) -> dict[str, Any]:
        keys = ("server_steps", "local_steps", "messages", "bits", "evaluations", "seconds")
        return {"notebook": self.name, "runs": len(self.runs),
                "to_run": sum(r.status == "to run" for r in self.runs),
                **{k: self.total(k) for k in keys}, "per_run": [asdict(r) for r in self.runs]}


# ---------------------------------------------------------------------- counts
def null_run(cfg: RunConfig, message_bits: int = 32, server_message_bits: int | None = None):
    """``cfg`` run by the engine with :class:`NullTask` and :class:`SizedChannel`: its results table (zeros for
    the model's metrics; the counters and clock statistics — steps per contact, zero-step contacts — are the real
    run's) and the simulation at its end.

    Args:
        cfg: the run.
        message_bits: the size of one message of the run's quantizer for the real model.
        server_message_bits: the size of a server broadcast (algorithms with their own server quantizer).
    """
    from qafl_core import runner

    sim = runner.build_simulation(cfg, task=NullTask(_num_clients(cfg)))
    sim.quantizer = SizedChannel(message_bits)
    if hasattr(sim, "server_quantizer"):
        sim.server_quantizer = SizedChannel(server_message_bits if server_message_bits is not None else message_bits)
    return runner._execute(cfg, sim, None, None, None, None), sim


def null_results(runs: Sequence[Any]) -> "pd.DataFrame":
    """:func:`null_run` of every :class:`~qafl_core.experiments.common.Run`, as one table with a ``label``
    column (what :func:`qafl_core.experiments.common.run_variants` returns, without training)."""
    import pandas as pd

    return pd.concat([null_run(r.config)[0].assign(label=r.label) for r in runs], ignore_index=True)


def simulate_counts(cfg: RunConfig, message_bits: int, server_message_bits: int | None = None) -> dict[str, int]:
    """The counters of ``cfg`` at its end (:func:`null_run`): server steps, local steps, messages (each encoded
    message once, however many receivers decode it), bits (as the run counts them), evaluations, time."""
    df, sim = null_run(cfg, message_bits, server_message_bits)
    channels = [c for c in (sim.quantizer, getattr(sim, "server_quantizer", None)) if c is not None]
    return {"server_steps": int(sim.server_steps), "local_steps": int(sim.local_steps),
            "messages": sum(c.messages for c in dict.fromkeys(channels)), "bits": int(sim.bits_up + sim.bits_down),
            "evaluations": int(((df["split"] == "test") & (df["metric"] == "loss")).sum()), "time": float(sim.time)}


_TASKS: dict[str, Any] = {}


def _task(cfg: RunConfig):
    """The run's real task (data and model, no training), kept per data + model setting."""
    from qafl_core import runner

    key = json.dumps({k: cfg.to_dict().get(k) for k in ("dataset", "dataset_options", "num_clients", "model",
                                                          "batch_size", "eval_max_samples", "seed")}, sort_keys=True)
    if key not in _TASKS:
        _TASKS.clear()  # one task at a time: a FEMNIST CNN task holds the data and a 6.6 M-parameter model
        _TASKS[key] = runner.build_task(cfg)
    return _TASKS[key]


def _num_clients(cfg: RunConfig) -> int:
    return cfg.num_clients if cfg.num_clients is not None and cfg.dataset == "quadratic" else _task(cfg).num_clients


def message_bits(cfg: RunConfig, quantizer: str | None = None, bits: int | None = None) -> int:
    """The size in bits of one message of ``quantizer`` (default: the run's) for the run's real model."""
    task = _task(cfg)
    q = make_quantizer(quantizer or cfg.quantizer, bits=bits or cfg.bits, eps=cfg.lattice_eps, bucket=cfg.qsgd_bucket,
                       segments=task.segments)
    x = torch.randn(task.dim, generator=torch.Generator().manual_seed(0)) * 0.01
    return int(q.encode(x, torch.Generator().manual_seed(1)).bits)


def run_counts(cfg: RunConfig) -> dict[str, int]:
    """:func:`simulate_counts` with the real message sizes of ``cfg``."""
    server = None
    if cfg.algorithm == "qafel":
        name, bits = cfg.effective_server_quantizer
        server = message_bits(cfg, name, bits)
    return simulate_counts(cfg, message_bits(cfg), server)


# ---------------------------------------------------------------------- costs
def _median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


class _Probe:
    """A one-step "simulation" for :func:`qafl_core.runner._execute` whose step measures the costs of ``cfg``'s
    task and quantizer under the engine's own thread policy (the runner's for local SGD and evaluation, one
    thread for message arithmetic as in every algorithm's step): two threads on a busy machine can make a
    logistic-regression step 20x slower."""

    def __init__(self, cfg: RunConfig, task, budget_s: float):
        self.cfg, self.task, self.budget_s = cfg, task, budget_s
        self.server, self.n, self.time, self.finished, self.costs = task.init_vector().clone(), task.num_clients, 0.0, False, {}
        self._sgd_threads: int | None = None

    def counters(self) -> dict[str, float]:
        return {"time": 0.0, "server_steps": 0, "local_steps": 0, "bits_up": 0, "bits_down": 0}

    def sim_metrics(self) -> dict[str, float]:
        return {}

    def done(self) -> bool:
        return self.finished

    @vector_ops_on_one_thread
    def step(self) -> None:
        cfg, task, x = self.cfg, self.task, self.server
        row = x.clone()
        evaluate = getattr(task, "evaluate_with_clients", task.evaluate)  # what the runner calls
        with _Threads(self._sgd_threads):  # local SGD and evaluation on the runner's thread count
            task.local_sgd(row, 0, 1, cfg.lr)  # warm-up (allocations, first-call overheads)
            steps, elapsed = 1, 0.0
            while elapsed < self.budget_s / 2 and steps <= 64:
                elapsed = _median_time(lambda: task.local_sgd(row, 0, steps, cfg.lr), 1)
                steps *= 2
            evaluation = _median_time(lambda: evaluate(x), 1)
        q = make_quantizer(cfg.quantizer, bits=cfg.bits, eps=cfg.lattice_eps, bucket=cfg.qsgd_bucket,
                           segments=task.segments)
        self.costs = {"sgd_step_s": elapsed / (steps // 2), "evaluation_s": evaluation,
                      "message_s": _median_time(lambda: q.decode(q.encode(x, torch.Generator().manual_seed(0)), x))}
        self.finished = True


def measure_costs(cfg: RunConfig, budget_s: float = 2.0) -> dict[str, float]:
    """Seconds per local SGD step, per evaluation of the server model and per message (one encode and one decode
    of the run's quantizer) of ``cfg``'s real task, measured here in about ``budget_s`` seconds."""
    from qafl_core import runner

    probe = _Probe(cfg, _task(cfg), budget_s)
    runner._execute(cfg, probe, None, None, None, None)
    return probe.costs


def cost_key(cfg: RunConfig) -> str:
    """What the costs depend on: data, model, batch size, evaluation subset, quantizer, and this machine (CPU
    count, torch threads)."""
    from qafl_core import runner

    return json.dumps({"dataset": cfg.dataset, "options": cfg.dataset_options, "num_clients": cfg.num_clients,
                       "model": runner.model_name(cfg), "batch_size": cfg.batch_size,
                       "eval_max_samples": cfg.eval_max_samples,
                       "quantizer": [cfg.quantizer, cfg.bits, cfg.lattice_eps, cfg.qsgd_bucket], "num_threads": cfg.num_threads,
                       "cpus": os.cpu_count(), "threads": torch.get_num_threads()}, sort_keys=True)


class CostCache:
    """Measured costs by :func:`cost_key`, kept in a JSON file (written atomically).

    Each entry also records ``load1``, the machine's 1-minute load average when it was measured: a cost measured
    while other jobs shared the cores is too high for a run that will have them to itself, and :meth:`note` says so.
    ``remeasure=True`` measures every key again, once in this object's life, and replaces the stored entry."""

    def __init__(self, path: Path | None, remeasure: bool = False):
        self.path = path
        self.remeasure = remeasure
        self.costs: dict[str, dict[str, float]] = {}
        self.used: set[str] = set()
        self._measured: set[str] = set()
        if path is not None and path.is_file():
            try:
                self.costs = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.costs = {}  # a damaged cache is measured again

    def get(self, cfg: RunConfig) -> dict[str, float]:
        """``sgd_step_s``, ``evaluation_s`` and ``message_s`` of ``cfg``, measured once per :func:`cost_key`."""
        key = cost_key(cfg)
        self.used.add(key)
        if key not in self.costs or (self.remeasure and key not in self._measured):
            load = _load1()
            self.costs[key] = {**measure_costs(cfg), **({"load1": load} if load is not None else {})}
            self._measured.add(key)
            if self.path is not None:
                from qafl_core.store import atomic_write_json

                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(self.path, self.costs, sort_keys=True)
        return self.costs[key]

    def note(self) -> str:
        """Under what load the costs used so far were measured, for the estimate's caption."""
        loads = [self.costs[k].get("load1") for k in sorted(self.used) if k in self.costs]
        known = [x for x in loads if x is not None]
        parts = []
        if known:
            lo, hi = min(known), max(known)
            parts.append(f"measured at a 1-min load average of {lo:.1f}" + (f"-{hi:.1f}" if hi > lo else "")
                         + f" on {os.cpu_count()} CPUs")
        if len(known) < len(loads):
            parts.append(f"{len(loads) - len(known)} measured at a load not recorded")
        return "; ".join(parts) + ("; --remeasure measures them again" if parts else "")


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):   # no load average on this platform
        return None


def default_cost_path() -> Path:
    from qafl_core.cache import cache_root

    return cache_root() / "estimate-costs.json"


# ---------------------------------------------------------------------- per run
def estimate_run(cfg: RunConfig, label: str = "", costs: CostCache | None = None) -> RunCounts:
    """What ``cfg`` does from start to end (:func:`run_counts`) and its estimated seconds here: local steps, evaluations
    and messages times their measured costs (:class:`CostCache`; default: the machine's cost cache)."""
    costs = costs if costs is not None else CostCache(default_cost_path())
    c = run_counts(cfg)
    cost = costs.get(cfg)
    return RunCounts(cfg.config_hash(), label, c["server_steps"], c["local_steps"], c["messages"], c["bits"],
                     c["evaluations"], c["local_steps"] * cost["sgd_step_s"] + c["evaluations"] * cost["evaluation_s"]
                     + c["messages"] * cost["message_s"])


# ---------------------------------------------------------------------- per notebook
def already_computed(cfg: RunConfig, cache_dir: str | os.PathLike | None, archive: Sequence[Path]) -> str | None:
    """``"cached"`` / ``"archived"`` when the run needs no computing, else None."""
    from qafl_core import archive as _archive
    from qafl_core import store
    from qafl_core.cache import cache_entry
    from qafl_core.fingerprint import run_identity

    ident = run_identity(cfg)
    try:
        if store.read_entry(cache_entry(ident, cache_dir), ident.identity) is not None:
            return "cached"
    except store.EntryProblem:
        pass
    if archive and _archive.lookup(cfg, roots=archive) is not None:
        return "archived"
    return None


def estimate(profiles: Mapping[str, Mapping[str, Any]], cache_dir: str | os.PathLike | None = None,
             archive: Sequence[Path] = (), costs: CostCache | None = None) -> list[NotebookEstimate]:
    """The estimate of every notebook (``{name: profile parameters}``, in run order)."""
    from qafl_core.experiments import figure

    costs = costs if costs is not None else CostCache(default_cost_path())
    seen: set[str] = set()
    out = []
    for name, params in profiles.items():
        module = figure(name)
        if module is None:
            raise ValueError(f"--estimate: notebook {name} has no figure module in qafl_core.experiments")
        nb = NotebookEstimate(name)
        for run in module.runs(params):
            cfg, h = run.config, run.config.config_hash()
            counts = RunCounts(h, run.label)
            status = "shared" if h in seen else already_computed(cfg, cache_dir, archive)
            seen.add(h)
            if status is None:
                counts = estimate_run(cfg, run.label, costs)
            else:
                counts.status = status
            nb.runs.append(counts)
        out.append(nb)
    return out


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def format_table(estimates: Sequence[NotebookEstimate]) -> str:
    """Per notebook: runs (to run / all), server steps, local SGD steps, messages, Gbit, evaluations, time."""
    head = ("notebook", "runs", "server steps", "local SGD steps", "messages", "Gbit", "evaluations", "est. time")
    rows = [head]
    for e in estimates:
        todo = sum(r.status == "to run" for r in e.runs)
        rows.append((e.name, f"{todo}/{len(e.runs)}", f"{e.total('server_steps'):,.0f}", f"{e.total('local_steps'):,.0f}",
                     f"{e.total('messages'):,.0f}", f"{e.total('bits') / 1e9:,.2f}", f"{e.total('evaluations'):,.0f}",
                     _human(e.total("seconds"))))
    total = sum(e.total("seconds") for e in estimates)
    rows.append(("total", "", "", f"{sum(e.total('local_steps') for e in estimates):,.0f}", "", "", "", _human(total)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_json(estimates: Sequence[NotebookEstimate]) -> str:
    """The estimate as JSON: per notebook its totals and every run's counts."""
    return json.dumps({"notebooks": [e.to_dict() for e in estimates],
                       "total_seconds": sum(e.total("seconds") for e in estimates),
                       "exact": "counts (identity channel, runs that reach their limit)",
                       "approximate": "seconds (measured costs x counts); runs that diverge stop earlier"},
                      indent=2, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v)
