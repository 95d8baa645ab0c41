"""``run(config)``: one simulation -> a tidy results table, with caching, checkpoints and resume.

Results are a long-format ``pandas.DataFrame``: one row per (evaluation point, metric) with the
columns of :data:`COLUMNS`.  ``split`` is ``test`` for server-model metrics on the pooled test set,
``clients`` for LEAF's per-client summary of the same evaluation (10th/50th/90th percentiles over clients of
each client's accuracy and loss: ``accuracy_p10`` ... ``loss_p90``),
``sim`` for simulator statistics (decode failures, zero-step contacts, steps per contact) and
``status`` for the end state (``diverged`` or ``interrupted``, with the time it happened).

A run with an output directory writes, through :mod:`qafl_core.store` (atomically, under the directory's
lock): ``config.json`` (after validation), ``results.csv`` and, last, its completion record ``done.json``.
With ``checkpoint_every`` it also keeps ``checkpoint.pt`` (:mod:`qafl_core.checkpoint`): the whole simulation
state — models, clocks, every generator state (:mod:`qafl_core.algorithms.state`) — and the results so far, as
tensors and plain containers, with the run identity (:mod:`qafl_core.fingerprint`), so that ``resume=True``
continues bit for bit, and only the same run.

The dataset of a run is built by :func:`qafl_core.data.build.build_dataset`; the run cache
(:func:`qafl_core.cache.load_or_run`: verified results keyed by the run identity) is in :mod:`qafl_core.cache`.
This module is longer than most (~300 lines) because the loop, its checkpoints and its interruption handling
belong together.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from qafl_core import checkpoint, fingerprint, store
from qafl_core.config import RunConfig
from qafl_core.data.build import build_dataset
from qafl_core.limits import check_memory

log = logging.getLogger("qafl")

COLUMNS = ["algorithm", "dataset", "model", "seed", "quantizer", "bits", "clients_per_round", "num_clients",
           "time", "server_steps", "local_steps", "bits_up", "bits_down", "split", "metric", "value", "config_hash"]


# ---------------------------------------------------------------------- building blocks
def model_name(cfg: RunConfig) -> str:
    """The model a config trains: ``cfg.model``, with ``auto`` resolved to the dataset's default."""
    if cfg.dataset == "quadratic":
        return "quadratic"
    if cfg.model != "auto":
        return cfg.model
    from qafl_core.models import default_model

    return default_model(cfg.dataset)


def build_task(cfg: RunConfig):
    """The learning problem of ``cfg`` on its device (``cfg.device``; a clear error when that is unavailable)."""
    from qafl_core.device import configure, resolve_device

    device = resolve_device(cfg.device)
    configure(device)
    if cfg.dataset == "quadratic":
        from qafl_core.theory import QuadraticTask

        if cfg.num_clients is None:
            raise ValueError("num_clients: the quadratic problem needs an explicit number of clients")
        opts = dict(cfg.dataset_options)
        valid = ("dim", "sigma", "heterogeneity", "offset")
        for key, value in opts.items():
            if key not in valid:
                raise ValueError(f"dataset_options.{key}: unknown option of the quadratic problem; "
                                 f"valid: {', '.join(valid)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"dataset_options.{key}: expected a number, got {value!r}")
        check_memory(cfg, cfg.num_clients, int(opts.get("dim", 20)))  # refuse before the centres are allocated
        return QuadraticTask(num_clients=cfg.num_clients, seed=cfg.seed, device=device, **opts)
    from qafl_core.local import NeuralTask

    ds = build_dataset(cfg)
    return NeuralTask(ds, model_name(cfg), cfg.seed, cfg.batch_size, cfg.eval_max_samples, cfg.eval_batch_size,
                      optimizer=cfg.optimizer, momentum=cfg.momentum, weight_decay=cfg.weight_decay, device=device)


def build_simulation(cfg: RunConfig, task=None):
    from qafl_core.algorithms import ALGORITHMS
    from qafl_core.quantize import make_quantizer
    from qafl_core.timing import ClientClocks

    task = task if task is not None else build_task(cfg)
    check_memory(cfg, task.num_clients, task.dim)  # refuse before the clients' models are allocated
    quantizer = make_quantizer(cfg.quantizer, bits=cfg.bits, eps=cfg.lattice_eps, bucket=cfg.qsgd_bucket,
                               segments=task.segments)
    clocks = ClientClocks(task.num_clients, cfg.timing, cfg.slow_fraction, cfg.fast_mean, cfg.slow_mean, cfg.seed,
                          speed_sigma=cfg.speed_sigma, trace=cfg.timing_trace)
    if hasattr(task, "set_slow_clients"):  # the quadratic task reports the server's bias toward the fast clients
        task.set_slow_clients(clocks.is_slow)
    return ALGORITHMS[cfg.algorithm](cfg, task, quantizer, clocks)


def as_config(config: RunConfig | Mapping[str, Any]) -> RunConfig:
    return config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config))


# ---------------------------------------------------------------------- the loop
class _Recorder:
    def __init__(self, cfg: RunConfig, num_clients: int):
        self.cfg, self.rows, self.committed = cfg, [], 0
        self.fixed = {"algorithm": cfg.algorithm, "dataset": cfg.dataset, "model": model_name(cfg), "seed": cfg.seed, "quantizer": cfg.quantizer,
                      "bits": cfg.bits, "clients_per_round": cfg.clients_per_round, "num_clients": num_clients,
                      "config_hash": cfg.config_hash()}

    def add(self, sim, split: str, metrics: Mapping[str, float], counters: Mapping[str, Any] | None = None) -> None:
        base = {**self.fixed, **(counters if counters is not None else sim.counters())}
        for k, v in metrics.items():
            self.rows.append({**base, "split": split, "metric": k, "value": float(v)})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


def _evaluate(sim, rec: _Recorder) -> bool:
    """Record test and simulator metrics; False when the model has diverged."""
    if hasattr(sim.task, "evaluate_with_clients"):
        metrics, per_client = sim.task.evaluate_with_clients(sim.server)
    else:
        metrics, per_client = sim.task.evaluate(sim.server), {}
    if hasattr(sim.task, "evaluate_mean_model") and getattr(sim, "clients", None) is not None:
        rec.add(sim, "mean_model", sim.task.evaluate_mean_model(sim))
    rec.add(sim, "test", metrics)
    if per_client:
        rec.add(sim, "clients", per_client)
    rec.add(sim, "sim", sim.sim_metrics())
    rec.committed = len(rec.rows)  # an interruption keeps whole evaluations only
    return not _diverged(rec, metrics)


def _diverged(rec: _Recorder, metrics: Mapping[str, float]) -> bool:
    """The divergence criterion of an evaluation (README, Reliability): a test metric is non-finite, or the
    test loss exceeds ``divergence_factor`` times ``max(1, |first test loss|)`` — a finite blow-up (e.g. a loss of
    1e43) is a divergence too.  The reference is the run's first recorded evaluation, so a resumed run uses the
    same one; ``divergence_factor: null`` keeps only the non-finite check."""
    if not all(math.isfinite(v) for v in metrics.values()):
        return True
    factor = rec.cfg.divergence_factor
    if factor is None or "loss" not in metrics:
        return False
    start = next(r["value"] for r in rec.rows if r["split"] == "test" and r["metric"] == "loss")
    return metrics["loss"] > factor * max(1.0, abs(start))


def run(config: RunConfig | Mapping[str, Any], out_dir: str | os.PathLike | None = None, resume: bool = False,
        checkpoint_every: float | None = None) -> pd.DataFrame:
    """Run one simulation and return its results table.

    Args:
        config: a :class:`RunConfig` or a flat mapping of its keys.
        out_dir: where to write ``results.csv``, ``done.json``, ``config.json`` (and ``checkpoint.pt``);
            None keeps everything in memory.  The directory is locked for the run: a second run on it is
            refused (:class:`qafl_core.store.Locked`, a ValueError naming the directory and the holder's pid).
        resume: continue from ``out_dir/checkpoint.pt`` (an error if it is missing, corrupt, not plain data
            or was written by another run: other config, other data or other code).  A refused resume
            changes nothing in ``out_dir``.
        checkpoint_every: simulated-time interval between checkpoints (overrides the config's).

    Returns:
        The long-format results table (:data:`COLUMNS`).  Interrupted (Ctrl-C) without checkpoints, the
        evaluations done so far are kept in ``results.csv`` with a ``status``/``interrupted`` row before
        the KeyboardInterrupt propagates.
    """
    cfg = as_config(config)
    every = checkpoint_every if checkpoint_every is not None else cfg.checkpoint_every
    cfg.check_intervals(every)  # a run that would evaluate or checkpoint without end is refused before it starts
    out = Path(out_dir) if out_dir is not None else None
    if (every or resume) and out is None:
        raise ValueError("checkpoint_every/resume: an output directory is needed to keep the checkpoint")
    sim = build_simulation(cfg)  # every check that needs the data happens before anything is written
    if out is None:
        return _execute(cfg, sim, None, None, None, every)
    ident = fingerprint.run_identity(cfg)
    ckpt = out / checkpoint.FILE
    seen = _stat(ckpt) if resume else None
    state = checkpoint.load(ckpt, ident, sim.State) if resume else None
    with store.DirLock(out).acquire(wait=0):
        if resume and _stat(ckpt) != seen:  # replaced between our read and the lock: read it again
            state = checkpoint.load(ckpt, ident, sim.State)
        return _execute(cfg, sim, out, ident, state, every)


def _stat(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _execute(cfg: RunConfig, sim, out: Path | None, ident, state: checkpoint.Checkpoint | None,
             every: float | None) -> pd.DataFrame:
    """The run itself, with ``out`` (if any) locked by the caller."""
    if out is not None:
        store.unfinish(out)  # from here on the directory's results are being replaced
        store.atomic_write_json(out / "config.json", {**cfg.to_dict(), **ident.to_dict()})
    with _threads(cfg.num_threads if cfg.num_threads is not None else (1 if sim.task.dim < 200_000 else None)):
        return _loop(cfg, sim, out, ident, state, every)


@contextlib.contextmanager
def _threads(n: int | None):
    """Small models run fastest on one intra-op thread (thread start-up dominates their tiny kernels,
    and on a shared machine spinning threads steal each other's cores); restored afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _loop(cfg: RunConfig, sim, out: Path | None, ident, state: checkpoint.Checkpoint | None,
          every: float | None) -> pd.DataFrame:
    from qafl_core.local import Diverged

    rec = _Recorder(cfg, sim.n)
    next_eval, next_ckpt = 0.0, every
    if state is not None:
        state.sim.restore(sim)
        rec.rows = list(state.rows)
        rec.committed = len(rec.rows)
        next_eval, next_ckpt = state.next_eval, state.next_ckpt

    bar = _progress(cfg)
    shown, status = 0.0, "ok"
    last = sim.counters()  # the counters after the last whole step (what an interruption reports)
    try:
        while True:
            if sim.time >= next_eval or sim.done():
                if not _evaluate(sim, rec):
                    rec.add(sim, "status", {"diverged": 1.0})
                    status = "diverged"
                    log.warning("run %s diverged at t=%.1f (test metric non-finite, or test loss above "
                                "divergence_factor x its start)", cfg.config_hash(), sim.time)
                    break
                while next_eval <= sim.time:
                    next_eval += cfg.eval_every
                if sim.done():
                    break
            if every and sim.time >= next_ckpt:
                while next_ckpt <= sim.time:
                    next_ckpt += every
                checkpoint.save(out / checkpoint.FILE, checkpoint.Checkpoint(
                    **ident.to_dict(), algorithm=cfg.algorithm, sim=sim.state(), rows=rec.rows, next_eval=next_eval,
                    next_ckpt=next_ckpt))
            try:
                sim.step()
                if not bool(torch.isfinite(sim.server).all()):
                    raise Diverged("the server model became non-finite")
            except (Diverged, ValueError) as exc:
                # a quantizer refuses non-finite or out-of-range input with a ValueError: divergence, not a user error
                if not isinstance(exc, Diverged) and not _numerical_fault(exc, sim):
                    raise
                rec.add(sim, "status", {"diverged": 1.0})
                status = "diverged"
                log.warning("run %s diverged at t=%.1f: %s", cfg.config_hash(), sim.time, exc)
                break
            last = sim.counters()
            if bar is not None:
                now = min(sim.time, cfg.time_limit)
                bar.update(now - shown)
                shown = now
    except KeyboardInterrupt:
        # with checkpoints the checkpoint is the record of progress; without, keep what was evaluated
        if out is not None and not every:
            del rec.rows[rec.committed:]
            rec.add(sim, "status", {"interrupted": 1.0}, counters=last)
            _finish(out, ident, rec.frame(), "interrupted", last["time"])
        raise
    finally:
        if bar is not None:
            bar.close()
    df = rec.frame()
    if out is not None:
        _finish(out, ident, df, status, sim.time)
    return df


def _finish(out: Path, ident, df: pd.DataFrame, status: str, time: float) -> dict:
    """``results.csv``, then the completion record."""
    return store.write_entry(out, df, {**ident.to_dict(), "status": status, "time": float(time),
                                       "git_commit": _git_commit()})


_COMMIT: list = []


def _git_commit() -> str | None:
    """The commit of the code this process runs (once per process; ``+dirty`` with local changes)."""
    if not _COMMIT:
        from qafl_core.experiments.manifest import git_commit

        _COMMIT.append(git_commit())
    return _COMMIT[0]


#: What the quantizers say when they refuse a vector for its values (non-finite, or beyond the lattice's integer
#: range |x|/eps >= 2**62): a numerical fault of the run.  tests/test_bad_input.py checks every quantizer's message.
QUANTIZER_RANGE_ERROR = "needs finite values"


def _numerical_fault(exc: ValueError, sim) -> bool:
    """Whether a ValueError raised inside a server step is the run diverging (never a configuration error:
    configs are validated before the run starts)."""
    return QUANTIZER_RANGE_ERROR in str(exc) or not _all_finite(sim)


def _all_finite(sim) -> bool:
    """Whether every float tensor the simulation holds (server, client models, work rows) is finite."""
    return all(bool(torch.isfinite(v).all()) for v in vars(sim).values()
               if isinstance(v, torch.Tensor) and v.is_floating_point())


def _progress(cfg: RunConfig):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.time_limit, desc=f"{cfg.algorithm} {cfg.dataset} seed={cfg.seed}", unit="t",
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} sim-time [{elapsed}<{remaining}]", leave=False)
