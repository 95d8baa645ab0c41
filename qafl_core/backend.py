"""Run many independent simulations: sequentially here, or as Ray tasks on a local or remote cluster.

Paper reproductions are grids of independent runs (configs x seeds).  Every run goes through
:func:`qafl_core.cache.load_or_run`, so results are cached by run identity (config, data and code
fingerprints), verified on every read and locked while computed (two sweeps sharing a cache compute each
run once), and a rerun after a crash only computes what is missing.  A run's results depend only on its config (one root seed drives every
random stream, :mod:`qafl_core.rng`; no global RNG state), so the Ray backend returns exactly what the
local backend returns — ``tests/test_backend.py`` checks it.

Bit-identical results across backends assume the same torch intra-op thread count: the runner uses one
thread for small models (< 200k coordinates); for larger ones set ``num_threads`` in the config (a Ray task
reserves that many CPUs), since Ray workers otherwise default to one thread.

A run that diverges is a normal result (its table has a ``split == "status"``, ``metric == "diverged"``
row).  A run that *fails* (an exception, a crashed worker) does not stop the others: its slot holds a
one-row table with ``metric == "failed"`` and ``df.attrs["error"]`` set to the message, and the failures
are logged at the end (:func:`failures` lists them).

Ray is an optional extra (``pip install "qafl[ray]"``); it is imported only when ``backend="ray"``.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from qafl_core.cache import load_or_run
from qafl_core.config import RunConfig
from qafl_core.runner import COLUMNS

log = logging.getLogger("qafl")

BACKENDS = ("local", "ray")


def run_many(configs: Sequence[RunConfig | Mapping[str, Any]], backend: str = "local", address: str | None = None,
             cache_dir: str | os.PathLike | None = None, max_parallel: int | None = None,
             on_result: Callable[[int, pd.DataFrame], None] | None = None) -> list[pd.DataFrame]:
    """Run (or load from the cache) every config; results in the order of ``configs``.

    Args:
        configs: :class:`RunConfig` objects or flat mappings of their keys.  All are validated before
            anything runs, so a typo in the last config fails at once (ValueError naming its index).
        backend: ``"local"`` (one after the other in this process) or ``"ray"`` (one Ray task per run).
        address: Ray cluster address (``"auto"``: the cluster ``ray start`` runs on this machine,
            ``"host:6379"``, ``"ray://host:10001"``); None starts a new local Ray instance with
            ``os.cpu_count()`` CPUs.  An already initialised Ray (``ray.init`` called by the caller) is reused.
        cache_dir: results cache (one directory per run identity); None -> ``$QAFL_CACHE_DIR/runs`` or
            ``~/.cache/qafl/runs``.  On a multi-node cluster, point it at a shared filesystem to share the cache.
        max_parallel: at most this many Ray tasks in flight (None: let Ray schedule all of them).
        on_result: called as ``on_result(index, table)`` as each run finishes (progress reporting).

    Returns:
        One long-format results table per config (:data:`qafl_core.runner.COLUMNS`) carrying
        ``attrs["provenance"]`` (see :func:`qafl_core.cache.load_or_run`); failed runs get a one-row
        ``failed`` table carrying ``attrs["error"]``.

    Raises:
        ValueError: unknown backend, invalid config, or ``max_parallel < 1``.
        ImportError: ``backend="ray"`` without Ray installed (the message says how to install it).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown value {backend!r}; expected one of {', '.join(BACKENDS)}")
    if max_parallel is not None and (isinstance(max_parallel, bool) or not isinstance(max_parallel, int)
                                     or max_parallel < 1):
        raise ValueError(f"max_parallel: expected a positive integer, got {max_parallel!r}")
    cfgs = []
    for k, c in enumerate(configs):
        where = f"config #{k}"
        try:
            cfgs.append(c if isinstance(c, RunConfig) else RunConfig.from_dict(dict(c), source=where))
            cfgs[-1].check_intervals()  # a run that could never finish is refused before any starts
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    cache = str(cache_dir) if cache_dir is not None else None
    start = time.monotonic()
    notify = on_result or (lambda k, df: None)
    if backend == "local":
        frames = []
        for k, c in enumerate(cfgs):
            frames.append(_run_one(c.to_dict(), cache))
            notify(k, frames[-1])
    else:
        frames = _run_ray(cfgs, cache, address, max_parallel, notify)
    bad = failures(frames)
    log.info("%d run(s) in %.1f s on the %s backend (%d failed)", len(frames), time.monotonic() - start, backend,
             len(bad))
    for k, err in bad:
        log.error("run #%d (%s seed %s) failed: %s", k, cfgs[k].algorithm, cfgs[k].seed, err)
    return frames


def failures(frames: Sequence[pd.DataFrame]) -> list[tuple[int, str]]:
    """``(index, error message)`` of every failed run in a :func:`run_many` result."""
    return [(k, df.attrs["error"]) for k, df in enumerate(frames) if "error" in df.attrs]


def run_status(df: pd.DataFrame) -> str:
    """``"ok"``, ``"diverged"`` or ``"failed"`` for one run's results table."""
    if "error" in df.attrs:
        return "failed"
    status = df[df.split == "status"]
    return "diverged" if (status.metric == "diverged").any() else "ok"


def failed_frame(cfg: RunConfig, error: str) -> pd.DataFrame:
    """The one-row table standing in for a run that raised instead of finishing."""
    row = {"algorithm": cfg.algorithm, "dataset": cfg.dataset, "seed": cfg.seed, "quantizer": cfg.quantizer,
           "bits": cfg.bits, "clients_per_round": cfg.clients_per_round, "num_clients": cfg.num_clients,
           "time": float("nan"), "server_steps": 0, "local_steps": 0, "bits_up": 0, "bits_down": 0,
           "split": "status", "metric": "failed", "value": 1.0, "config_hash": cfg.config_hash()}
    df = pd.DataFrame([row], columns=COLUMNS)
    df.attrs["error"] = error
    return df


def _run_one(cfg_dict: dict[str, Any], cache_dir: str | None) -> pd.DataFrame:
    """One run, never raising: the body of both backends (and of each Ray task)."""
    cfg = RunConfig.from_dict(cfg_dict)
    try:
        return load_or_run(cfg, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - one failing run must not stop the batch; the error is kept
        return failed_frame(cfg, f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------- Ray
def import_ray():
    """``import ray`` with an actionable message when the optional extra is missing."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError('the Ray backend needs Ray: pip install "qafl[ray]" (or pip install "ray>=2.9")') from exc
    return ray


class RayStartError(ConnectionError):
    """Ray could not be started or reached (after retries); the message says what happened last."""


#: attempts and pause (seconds, doubled after each failure) of :func:`init_ray`.  On a loaded machine a local Ray can
#: miss its fixed start-up deadlines (the raylet aborts when its dashboard agent, a Python process, is not up within
#: 15 s; the driver waits 30 s for the raylet); a later attempt gets through once the load eases.
RAY_START_ATTEMPTS, RAY_START_PAUSE = 3, 5.0


def init_ray(address: str | None = None, num_cpus: int | None = None, attempts: int | None = None) -> bool:
    """Connect to ``address`` or start a local Ray instance; reuse an initialised one.  True if this call
    initialised Ray (the caller may then ``ray.shutdown()`` when done).

    A local instance is started with an explicit CPU count (``num_cpus``, default ``os.cpu_count()``), no
    dashboard, and longer worker start-up timeouts; start-up is retried ``attempts`` times
    (:data:`RAY_START_ATTEMPTS`) with a growing pause, because under load Ray's fixed start-up deadline can
    pass before its processes are up.

    Raises:
        RayStartError: Ray did not start (or the cluster did not answer) after every attempt.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    # CPU-only tasks: opt in to Ray's future behaviour of leaving CUDA_VISIBLE_DEVICES alone (and its FutureWarning off)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # workers of a loaded machine can take more than Ray's default 60 s to register with their raylet
    os.environ.setdefault("RAY_worker_register_timeout_seconds", "180")
    common = dict(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    if address:
        kwargs = dict(address=address, **common)
    else:
        # "local": always a fresh instance of this machine, even where `ray start` left a cluster behind
        # (plain ray.init() would connect to it, and refuse num_cpus); use --address auto for that one
        kwargs = dict(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **common)
    attempts = RAY_START_ATTEMPTS if attempts is None else max(1, int(attempts))
    pause, last = RAY_START_PAUSE, ""
    for k in range(attempts):
        try:
            ray.init(**kwargs)
            return True
        except Exception as exc:  # noqa: BLE001 - Ray raises plain Exception/TimeoutError/ConnectionError on start-up
            last = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.warning("Ray start-up attempt %d of %d failed: %s", k + 1, attempts, last)
            try:  # clean up what the failed attempt started before trying again
                ray.shutdown()
            except Exception:  # noqa: BLE001
                pass
            if k + 1 < attempts:
                time.sleep(pause)
                pause *= 2
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    raise RayStartError(f"--backend ray: could not start {where} in {attempts} attempts (last: {last}); the machine "
                        f"may be overloaded: try again, or use --backend local (same results)")


def _run_ray(cfgs: list[RunConfig], cache: str | None, address: str | None,
             max_parallel: int | None, notify: Callable[[int, pd.DataFrame], None]) -> list[pd.DataFrame]:
    ray = import_ray()
    init_ray(address)
    if cache is not None:  # workers may run elsewhere: give them an absolute path
        cache = str(Path(cache).resolve())
    task = ray.remote(num_cpus=1, max_retries=0)(_run_one)
    frames: list[pd.DataFrame | None] = [None] * len(cfgs)
    pending: dict[Any, int] = {}
    todo = list(enumerate(cfgs))
    todo.reverse()
    while todo or pending:
        while todo and (max_parallel is None or len(pending) < max_parallel):
            k, c = todo.pop()
            # reserve as many CPUs as the run's torch threads (runner default for small models: 1)
            pending[task.options(num_cpus=c.num_threads or 1).remote(c.to_dict(), cache)] = k
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            k = pending.pop(ref)
            try:
                frames[k] = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a crashed worker or lost node fails this run only
                frames[k] = failed_frame(cfgs[k], f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}")
            notify(k, frames[k])
    return frames  # type: ignore[return-value]
