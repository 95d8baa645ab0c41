"""``run(config)``: one simulation -> a tidy results table, with caching, checkpoints and resume.

Results are a long-format ``pandas.DataFrame``: one row per (evaluation point, metric) with the
columns of :data:`COLUMNS`.  ``split`` is ``test`` for server-model metrics on the pooled test set,
``clients`` for LEAF's per-client summary of the same evaluation (10th/50th/90th percentiles over clients of
each client's accuracy and loss: ``accuracy_p10`` ... ``loss_p90``),
``sim`` for simulator statistics (decode failures, zero-step contacts, steps per contact) and
``status`` for the end state (``diverged`` with the time it happened).

A run writes ``results.csv`` and ``config.json`` into its output directory; with ``checkpoint_every``
it also keeps ``checkpoint.pt``, written atomically (temporary file, then rename), holding the whole
simulation state — models, clocks, every generator state and the results so far — so that
``resume=True`` continues bit for bit where an interrupted run stopped.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from qafl_core.config import RunConfig

log = logging.getLogger("qafl")

COLUMNS = ["algorithm", "dataset", "model", "seed", "quantizer", "bits", "clients_per_round", "num_clients",
           "time", "server_steps", "local_steps", "bits_up", "bits_down", "split", "metric", "value", "config_hash"]
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------- building blocks
@functools.lru_cache(maxsize=8)
def _load_dataset_cached(name: str, root: str | None, options_json: str):
    from qafl_core.data.registry import load_dataset

    return load_dataset(name, root=root, **json.loads(options_json))


def build_dataset(cfg: RunConfig):
    """The federated dataset of ``cfg``, restricted to ``num_clients`` clients where asked.

    Three options are handled here rather than by the loaders: ``subset_seed`` (which clients a smaller
    ``num_clients`` keeps; default 0, independent of the run seed), ``partition_seed`` (the stream of an
    ``iid``/``dirichlet`` partition; default ``subset_seed``) and ``pool: true``, which merges the
    (selected) clients into one node holding all their data — the paper's single-node "Baseline".
    ``cfg.partition`` (:mod:`qafl_core.data.partition`) re-deals the samples: on LEAF datasets the selected
    clients' samples go to as many new clients; on the vision datasets (loaded as one shard) the whole
    training and test sets go to ``num_clients`` clients (default 100).
    """
    from qafl_core.data.partition import repartition

    opts = dict(cfg.dataset_options)
    subset_seed = _int_option(opts.pop("subset_seed", 0), "subset_seed")
    partition_seed = _int_option(opts.pop("partition_seed", subset_seed), "partition_seed")
    pool = opts.pop("pool", False)
    if not isinstance(pool, bool):
        raise ValueError(f"dataset_options.pool: expected true/false, got {pool!r}")
    vision = cfg.dataset in ("fmnist", "mnist", "cifar10")
    scheme = cfg.partition or ("iid" if vision else "natural")
    if vision and scheme == "natural":
        raise ValueError(f"partition: {cfg.dataset} has no natural client partition; use iid or dirichlet")
    if vision:
        n_vision = cfg.num_clients or opts.get("num_clients") or 100
        opts.setdefault("num_clients", n_vision)
        opts.setdefault("seed", subset_seed)
        if scheme != "iid":  # one shard holding every sample (nothing dropped), re-dealt below
            opts["num_clients"] = 1
    ds = _load_dataset_cached(cfg.dataset, cfg.data_root, json.dumps(opts, sort_keys=True))
    if vision and scheme != "iid":
        ds = repartition(ds, scheme, n_vision, cfg.dirichlet_alpha, partition_seed)
    if cfg.num_clients is not None and cfg.num_clients != ds.num_clients:
        if cfg.num_clients > ds.num_clients:
            raise ValueError(f"num_clients: {cfg.num_clients} requested but dataset {cfg.dataset!r} has only "
                             f"{ds.num_clients} clients")
        from qafl_core.rng import torch_generator

        idx = torch.randperm(ds.num_clients, generator=torch_generator(subset_seed, "client_subset"))[: cfg.num_clients]
        ds = ds.subset(sorted(idx.tolist()))
    if not vision:
        ds = repartition(ds, scheme, ds.num_clients, cfg.dirichlet_alpha, partition_seed)
    return ds.pooled() if pool else ds


def _int_option(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"dataset_options.{name}: expected an integer >= 0, got {value!r}")
    return value


def model_name(cfg: RunConfig) -> str:
    """The model a config trains: ``cfg.model``, with ``auto`` resolved to the dataset's default."""
    if cfg.dataset == "quadratic":
        return "quadratic"
    if cfg.model != "auto":
        return cfg.model
    from qafl_core.models import default_model

    return default_model(cfg.dataset)


def build_task(cfg: RunConfig):
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
        return QuadraticTask(num_clients=cfg.num_clients, seed=cfg.seed, **opts)
    from qafl_core.local import NeuralTask

    ds = build_dataset(cfg)
    return NeuralTask(ds, model_name(cfg), cfg.seed, cfg.batch_size, cfg.eval_max_samples, cfg.eval_batch_size)


def build_simulation(cfg: RunConfig, task=None):
    from qafl_core.algorithms import ALGORITHMS
    from qafl_core.quantize import make_quantizer
    from qafl_core.timing import ClientClocks

    task = task if task is not None else build_task(cfg)
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
        self.cfg, self.rows = cfg, []
        self.fixed = {"algorithm": cfg.algorithm, "dataset": cfg.dataset, "model": model_name(cfg), "seed": cfg.seed, "quantizer": cfg.quantizer,
                      "bits": cfg.bits, "clients_per_round": cfg.clients_per_round, "num_clients": num_clients,
                      "config_hash": cfg.config_hash()}

    def add(self, sim, split: str, metrics: Mapping[str, float]) -> None:
        base = {**self.fixed, **sim.counters()}
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
        out_dir: where to write ``results.csv``, ``config.json`` (and ``checkpoint.pt``); None keeps
            everything in memory.
        resume: continue from ``out_dir/checkpoint.pt`` (an error if it is missing, corrupt or was
            written for a different configuration).
        checkpoint_every: simulated-time interval between checkpoints (overrides the config's).

    Returns:
        The long-format results table (:data:`COLUMNS`).
    """
    cfg = as_config(config)
    every = checkpoint_every if checkpoint_every is not None else cfg.checkpoint_every
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**cfg.to_dict(), "config_hash": cfg.config_hash()}, indent=2))
    if (every or resume) and out is None:
        raise ValueError("checkpoint_every/resume: an output directory is needed to keep the checkpoint")
    sim = build_simulation(cfg)
    with _threads(cfg.num_threads if cfg.num_threads is not None else (1 if sim.task.dim < 200_000 else None)):
        return _loop(cfg, sim, out, resume, every)


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


def _loop(cfg: RunConfig, sim, out: Path | None, resume: bool, every: float | None) -> pd.DataFrame:
    from qafl_core.local import Diverged

    rec = _Recorder(cfg, sim.n)
    next_eval, next_ckpt = 0.0, every
    if resume:
        next_eval, next_ckpt = _load_checkpoint(out / "checkpoint.pt", cfg, sim, rec)

    bar = _progress(cfg)
    shown = 0.0
    try:
        while True:
            if sim.time >= next_eval or sim.done():
                if not _evaluate(sim, rec):
                    rec.add(sim, "status", {"diverged": 1.0})
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
                _save_checkpoint(out / "checkpoint.pt", cfg, sim, rec, next_eval, next_ckpt)
            try:
                sim.step()
                if not bool(torch.isfinite(sim.server).all()):
                    raise Diverged("the server model became non-finite")
            except (Diverged, ValueError) as exc:
                # a quantizer refuses non-finite input with a ValueError: that is divergence, not a user error
                if not isinstance(exc, Diverged) and _all_finite(sim):
                    raise
                rec.add(sim, "status", {"diverged": 1.0})
                log.warning("run %s diverged at t=%.1f: %s", cfg.config_hash(), sim.time, exc)
                break
            if bar is not None:
                now = min(sim.time, cfg.time_limit)
                bar.update(now - shown)
                shown = now
    finally:
        if bar is not None:
            bar.close()
    df = rec.frame()
    if out is not None:
        df.to_csv(out / "results.csv", index=False)
    return df


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


# ---------------------------------------------------------------------- checkpoints
def _save_checkpoint(path: Path, cfg: RunConfig, sim, rec: _Recorder, next_eval: float, next_ckpt: float) -> None:
    state = {"version": CHECKPOINT_VERSION, "config_hash": cfg.config_hash(), "algorithm": cfg.algorithm,
             "sim": sim.state_dict(), "rows": rec.rows, "next_eval": next_eval, "next_ckpt": next_ckpt}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load_checkpoint(path: Path, cfg: RunConfig, sim, rec: _Recorder) -> tuple[float, float | None]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from (run with --checkpoint-every first)")
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ValueError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not a checkpoint of this version of the suite")
    if state.get("config_hash") != cfg.config_hash():
        raise ValueError(f"{path}: checkpoint was written for config {state.get('config_hash')}, not for this config "
                         f"{cfg.config_hash()}; use the same config or another output directory")
    sim.load_state_dict(state["sim"])
    rec.rows = list(state["rows"])
    return state["next_eval"], state["next_ckpt"]


# ---------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    return Path(os.environ.get("QAFL_CACHE_DIR", Path.home() / ".cache" / "qafl")) / "runs"


def load_or_run(config: RunConfig | Mapping[str, Any], cache_dir: str | os.PathLike | None = None,
                **overrides: Any) -> pd.DataFrame:
    """Results of ``config`` from the cache (keyed by the config hash), running it only when missing.

    With ``checkpoint_every`` set, an interrupted run left in the cache continues from its checkpoint
    (a corrupt one is an error naming the file, never silently ignored); the checkpoint of a run that
    finished is deleted, ``results.csv`` being its record."""
    cfg = as_config({**(config.to_dict() if isinstance(config, RunConfig) else dict(config)), **overrides})
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / cfg.config_hash()
    done = out / "results.csv"
    if done.exists():
        return pd.read_csv(done)
    resume = bool(cfg.checkpoint_every) and (out / "checkpoint.pt").exists()
    df = run(cfg, out_dir=out, resume=resume)
    # a finished cached run is served from results.csv; its checkpoint is dead weight (2.7 GB for 105 CNN clients)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return df
