"""The results archive: small, verified, committed results of long runs, so figures re-plot without retraining.

A paper-profile run of the FEMNIST CNN takes hours on a CPU; its tidy results table is a few kilobytes.  The
archive keeps such tables in the repository, under ``results/<profile>/<experiment>/``, one pair of files per
run:

* ``<config_hash>.csv.gz`` -- the run's results table (:data:`qafl_core.runner.COLUMNS`), gzip with a zero
  timestamp so that the same table always gives the same bytes;
* ``<config_hash>.json`` -- its record: the full configuration, the config hash, the **data fingerprint** and the
  **code fingerprint** of the run (:mod:`qafl_core.fingerprint`), the git commit of the code that produced it,
  status, row count, columns and the sha256 of the uncompressed table, plus free-form provenance (label,
  experiment, wall time, machine).

:func:`lookup` serves an archived run for a configuration when the config hash *and* the data fingerprint
match (the data a user has must be the data the run saw) and the table verifies against its record; a
damaged entry is an error naming the file, never served.  The code fingerprint is **not** required to match:
that is the point of an archive (a refactor must not force hours of retraining).  Instead every table served
from the archive carries its own code fingerprint and commit in ``df.attrs["provenance"]`` with
``source = "archive"`` and ``same_code`` (whether the current code has the same fingerprint), and the figure
manifests list them, so results of different code are never mixed silently.  That the current code still
produces the archived numbers is checked separately (bit-identical replays of short prefixes in the tests).

Nothing here runs code from data files: JSON and gzip-compressed CSV only.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from qafl_core import fingerprint, store
from qafl_core.config import RunConfig

ARCHIVE_VERSION = 1
#: refuse to decompress an archived table beyond this size (a damaged or hostile file must not fill memory)
MAX_TABLE_BYTES = 256 * 1024 * 1024
_HASH = re.compile(r"[0-9a-f]{16}")


class ArchiveError(ValueError):
    """An archive entry that cannot be served (the message names the file)."""


def default_root() -> Path:
    """``results/`` of the checkout this package lives in."""
    return Path(__file__).resolve().parents[1] / "results"


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as fh:
        fh.write(data)
    return buf.getvalue()


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read(MAX_TABLE_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise ArchiveError(f"{path}: not a readable gzip file ({type(exc).__name__}: {exc})") from None
    if len(data) > MAX_TABLE_BYTES:
        raise ArchiveError(f"{path}: decompresses to more than {MAX_TABLE_BYTES} bytes; refused")
    return data


def add(df: pd.DataFrame, config: RunConfig, directory: str | os.PathLike, *, data_fingerprint: str,
        code_fingerprint: str, git_commit: str | None, status: str = "ok",
        extra: Mapping[str, Any] | None = None) -> Path:
    """Write a run's table and record into ``directory`` (atomically; the record last). Returns the record path.

    Args:
        df: the run's results table.
        config: its configuration (``config_hash`` column of ``df`` must be ``config.config_hash()``).
        directory: e.g. ``results/paper/femnist300``.
        data_fingerprint, code_fingerprint, git_commit: the identity of the data and code that produced ``df``.
        status: ``ok`` or ``diverged`` (the run finished) -- interrupted runs are not archived.
        extra: free-form provenance (label, experiment, wall time, machine, source files).
    """
    if status not in store.FINISHED:
        raise ValueError(f"status: only finished runs ({', '.join(store.FINISHED)}) are archived, got {status!r}")
    ch = config.config_hash()
    if "config_hash" in df and set(df["config_hash"].astype(str)) - {ch}:
        raise ValueError(f"config_hash: the table's rows belong to {sorted(set(df['config_hash'].astype(str)))}, "
                         f"not to this config ({ch})")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data = df.to_csv(index=False).encode()
    record = {"version": ARCHIVE_VERSION, "config_hash": ch, "config": config.to_dict(),
              "data_fingerprint": data_fingerprint, "code_fingerprint": code_fingerprint, "git_commit": git_commit,
              "status": status, "rows": int(len(df)), "columns": [str(c) for c in df.columns],
              "sha256": hashlib.sha256(data).hexdigest(), **dict(extra or {})}
    store.atomic_write(d / f"{ch}.csv.gz", _gzip(data))
    store.atomic_write_json(d / f"{ch}.json", record, sort_keys=True)
    return d / f"{ch}.json"


def read(record_path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``(table, record)`` of one archive entry, verified (ArchiveError naming the file otherwise)."""
    path = Path(record_path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ArchiveError(f"{path}: unreadable archive record ({type(exc).__name__})") from None
    if not isinstance(rec, dict) or rec.get("version") != ARCHIVE_VERSION:
        raise ArchiveError(f"{path}: not an archive record of this version")
    table = path.with_name(f"{rec.get('config_hash')}.csv.gz")
    if table.name != path.name.replace(".json", ".csv.gz"):
        raise ArchiveError(f"{path}: its config_hash {rec.get('config_hash')!r} does not match its file name")
    if not table.exists():
        raise ArchiveError(f"{table}: missing (the record {path.name} has no table)")
    data = _gunzip(table)
    if hashlib.sha256(data).hexdigest() != rec.get("sha256"):
        raise ArchiveError(f"{table}: does not match its record (changed or damaged)")
    df = store.read_results_csv(data)
    if len(df) != rec.get("rows") or [str(c) for c in df.columns] != rec.get("columns"):
        raise ArchiveError(f"{table}: rows or columns differ from its record")
    return df, rec


def entries(roots: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """Every archive record (``<16 hex digits>.json``) under ``roots`` (default: the checkout's ``results/``)."""
    out: set[Path] = set()
    for root in ([default_root()] if roots is None else roots):
        root = Path(root)
        if root.is_dir():
            out.update(p for p in root.rglob("*.json") if _HASH.fullmatch(p.stem))
    return sorted(out)


def lookup(config: RunConfig, roots: Iterable[str | os.PathLike] | None = None,
           verify_data: bool = True) -> pd.DataFrame | None:
    """The archived table of ``config``, or None when no archived run has its config hash and data.

    The data fingerprint of ``config``'s dataset is computed (or read from its cache) only when an entry with
    the config hash exists. Raises ArchiveError when a matching entry is damaged.  ``verify_data=False``
    (re-plotting without the dataset) matches on the config hash alone; the provenance then says
    ``data_verified: False``.
    """
    ch = config.config_hash()
    candidates = [p for p in entries(roots) if p.name == f"{ch}.json"]
    if not candidates:
        return None
    data_fp = fingerprint.dataset_fingerprint(config) if verify_data else None
    for path in candidates:
        df, rec = read(path)
        if verify_data and rec.get("data_fingerprint") != data_fp:
            store.notice(f"{path}: archived for other data (fingerprint {str(rec.get('data_fingerprint'))[:12]}, "
                         f"yours {data_fp[:12]}); not used")
            continue
        df.attrs["provenance"] = {"source": "archive", "path": str(path), "config_hash": ch,
                                  "data_fingerprint": rec.get("data_fingerprint"), "data_verified": verify_data,
                                  "code_fingerprint": rec.get("code_fingerprint"),
                                  "git_commit": rec.get("git_commit"), "cached": True,
                                  "same_code": rec.get("code_fingerprint") == fingerprint.code_fingerprint()}
        return df
    return None


def import_run_dir(run_dir: str | os.PathLike, directory: str | os.PathLike,
                   extra: Mapping[str, Any] | None = None) -> Path:
    """Archive a finished run directory (``qafl run --out DIR``, a run-cache entry, or a campaign directory).

    The directory must hold ``config.json``, ``results.csv`` and a completion record ``done.json`` whose sha256
    matches the table; the data and code fingerprints come from the completion record or, for campaign
    directories, from ``provenance.json``.  The table's ``config_hash`` column is rewritten to the current
    config hash of the run's configuration (hashing rules may change; the configuration does not), and the
    record keeps the sha256 of the original table (``source_sha256``).
    """
    d = Path(run_dir)
    try:
        cfg_dict = json.loads((d / "config.json").read_text())
        done = json.loads((d / store.RECORD).read_text())
        data = (d / store.RESULTS).read_bytes()
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{d}: not a finished run directory ({type(exc).__name__}: {exc})") from None
    if hashlib.sha256(data).hexdigest() != done.get("sha256"):
        raise ArchiveError(f"{d / store.RESULTS}: does not match its completion record")
    prov = {}
    if (d / "provenance.json").exists():
        prov = json.loads((d / "provenance.json").read_text())
    fps = {k: done.get(k) or prov.get(k) for k in ("data_fingerprint", "code_fingerprint", "git_commit")}
    if not (fps["data_fingerprint"] and fps["code_fingerprint"]):
        raise ArchiveError(f"{d}: no data/code fingerprint in done.json or provenance.json")
    known = set(RunConfig.__dataclass_fields__)
    cfg = RunConfig.from_dict({k: v for k, v in cfg_dict.items() if k in known}, source=str(d / "config.json"))
    df = store.read_results_csv(data)
    if "config_hash" in df:
        df["config_hash"] = cfg.config_hash()
    status = done.get("status", "diverged" if ((df["split"] == "status") & (df["metric"] == "diverged")).any()
                      else "ok")
    meta = {k: v for k, v in prov.items() if k not in fps and k != "config_hash"}
    return add(df, cfg, directory, status=status, git_commit=fps["git_commit"],
               data_fingerprint=fps["data_fingerprint"], code_fingerprint=fps["code_fingerprint"],
               extra={**meta, "source_sha256": done.get("sha256"), **dict(extra or {})})


def verify(roots: Iterable[str | os.PathLike] | None = None) -> list[str]:
    """One line per damaged entry under ``roots`` (empty when every entry verifies)."""
    problems = []
    for path in entries(roots):
        try:
            read(path)
        except ArchiveError as exc:
            problems.append(str(exc))
    return problems


__all__ = ["ARCHIVE_VERSION", "ArchiveError", "add", "default_root", "entries", "import_run_dir", "lookup", "read",
           "verify"]
