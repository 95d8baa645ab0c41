"""The run cache: :func:`load_or_run` serves a run's verified results, or computes and stores them.

An entry is the directory ``<cache>/<first 20 hex digits of the run identity>`` (:mod:`qafl_core.fingerprint`:
config hash, data fingerprint, code fingerprint), written by the runner through :mod:`qafl_core.store`:
``config.json``, ``results.csv``, the completion record ``done.json`` (last) and, while a checkpointed run is
unfinished, ``checkpoint.pt``.  The cache root is ``$QAFL_CACHE_DIR/runs`` (default ``~/.cache/qafl/runs``)
unless a caller passes one (``qafl sweep`` uses ``OUT/runs``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from qafl_core import checkpoint, environment, fingerprint, runner, store
from qafl_core.config import RunConfig


def cache_root() -> Path:
    """``$QAFL_CACHE_DIR`` (default ``~/.cache/qafl``): the run cache, the estimate's costs, private kernels."""
    return environment.cache_dir()


def default_cache_dir() -> Path:
    return environment.cache_dir() / "runs"


def cache_entry(ident, cache_dir: str | os.PathLike | None = None) -> Path:
    """The run-cache directory of a run identity (:class:`qafl_core.fingerprint.Identity`)."""
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / ident.identity[:20]


def _cache_wait() -> float | None:
    """How long to wait for a cache entry another process is computing: ``$QAFL_CACHE_WAIT`` s, default no limit."""
    raw = (environment.get("QAFL_CACHE_WAIT") or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"QAFL_CACHE_WAIT: expected a number of seconds >= 0, got {raw!r}")
    return value


def load_or_run(config: RunConfig | Mapping[str, Any], cache_dir: str | os.PathLike | None = None,
                archive: Iterable[str | os.PathLike] | None = None, **overrides: Any) -> pd.DataFrame:
    """Results of ``config`` from the run cache, running it only when no verified entry is there.

    The entry is keyed by the run identity (config hash, data fingerprint, code fingerprint) and checked
    on every read (:func:`qafl_core.store.read_entry`): a truncated, partial, interrupted or swapped entry
    is recomputed with a one-line notice, never served.  Entries are locked while computed: a second
    process asking for the same run waits for it (saying so on stderr) and then reads its result, or
    refuses after ``$QAFL_CACHE_WAIT`` seconds.  With ``checkpoint_every`` set, an interrupted run left in
    the cache continues from its checkpoint (a checkpoint that is corrupt or of another run is replaced,
    one that would run code is refused); the checkpoint of a finished run is deleted.

    With ``archive`` (folders of the results archive, e.g. ``results/paper``), a run missing from the cache is
    served from the archive when an archived run has the same config hash and data fingerprint
    (:func:`qafl_core.archive.lookup`; its code may differ, which its provenance says) before anything is computed.

    Returns:
        The results table, with ``df.attrs["provenance"]``: identity, config_hash, data_fingerprint,
        code_fingerprint, git_commit (of the code that computed it) and ``cached`` (served from the cache).
    """
    cfg = runner.as_config({**(config.to_dict() if isinstance(config, RunConfig) else dict(config)), **overrides})
    ident = fingerprint.run_identity(cfg)
    entry = cache_entry(ident, cache_dir)
    with contextlib.suppress(store.EntryProblem):
        found = store.read_entry(entry, ident.identity)
        if found is not None:
            return _with_provenance(*found, ident, cached=True)
    if archive is not None:
        from qafl_core import archive as _archive

        found = _archive.lookup(cfg, roots=archive)
        if found is not None:
            return found
    waited: list[str] = []

    def waiting(holder: str) -> None:
        waited.append(holder)
        store.notice(f"{entry}: being computed by another process ({holder}); waiting for it")

    with store.DirLock(entry).acquire(wait=_cache_wait(), on_wait=waiting):
        try:
            found, problem = store.read_entry(entry, ident.identity), None
        except store.EntryProblem as exc:
            found, problem = None, str(exc)
        if found is not None:
            if waited:
                store.notice(f"{entry}: finished by the other process; using its results")
            return _with_provenance(*found, ident, cached=True)
        ckpt = entry / checkpoint.FILE
        state, sim = None, runner.build_simulation(cfg)
        if cfg.checkpoint_every and ckpt.exists():
            try:
                state = checkpoint.load(ckpt, ident, sim.State)
            except ValueError as exc:
                if ": refused:" in str(exc):
                    raise
                store.notice(f"{exc}; starting the run over")
        if problem is not None:
            store.notice(f"{problem}; {'resuming it from its checkpoint' if state else 'computing it again'}")
        df = runner._execute(cfg, sim, entry, ident, state, cfg.checkpoint_every)
        # a finished cached run is served from results.csv; its checkpoint is dead weight (2.7 GB for 105 CNN clients)
        ckpt.unlink(missing_ok=True)
        record = json.loads((entry / store.RECORD).read_text())
    return _with_provenance(df, record, ident, cached=False)


def _with_provenance(df: pd.DataFrame, record: Mapping[str, Any], ident, cached: bool) -> pd.DataFrame:
    df.attrs["provenance"] = {**ident.to_dict(), "git_commit": record.get("git_commit"), "cached": cached}
    return df
