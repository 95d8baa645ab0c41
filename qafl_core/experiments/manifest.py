"""``figures/<figure>.metrics.json`` and ``figures/MANIFEST.json``: what produced each figure.

docs/design.md#figures-and-the-manifest: ``figures/`` holds the regenerated figures and ``MANIFEST.json`` (figure ->
notebook, profile, config hashes, commit).  A notebook writes its own metrics file and manifest entry (so running it by hand in Jupyter
records it too); ``qafl reproduce`` then adds the execution status, wall time and executed-notebook
path.  Several notebooks may finish at once (``--jobs``), so the manifest is updated under a file lock
and replaced atomically (:func:`qafl_core.store.atomic_write`).  Values are written as strict JSON: NaN and
infinities become ``null``.  Each figure's entry lists its runs (``runs``): config hash, run identity,
the commit and code fingerprint that computed each, and whether it came from the run cache.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from qafl_core.store import atomic_write

MANIFEST = "MANIFEST.json"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars made plain and NaN/inf turned into None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """``HEAD`` of the repository holding ``path`` (``+dirty`` when tracked files changed), or None.

    Changes under ``figures/`` do not count: they are this suite's own outputs, and a reproduce that writes
    them would otherwise mark every later notebook of the same run as dirty."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)figures"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def read_manifest(output_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(output_dir) / MANIFEST
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def update_manifest(output_dir: str | os.PathLike, name: str, entry: Mapping[str, Any],
                    top: Mapping[str, Any] | None = None) -> Path:
    """Merge ``entry`` into ``MANIFEST.json["figures"][name]`` (and ``top`` into the top level) under a lock."""
    import fcntl

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    # the lock lives in the temp dir, keyed by the folder, so the figures folder holds only results
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"qafl-manifest-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_manifest(out)
        data.update(jsonable(dict(top or {})))
        figures = data.setdefault("figures", {})
        figures[name] = {**figures.get(name, {}), **jsonable(dict(entry))}
        data["updated"] = now()
        atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    return path


def write_metrics(output_dir: str | os.PathLike, figure: str, headline: Mapping[str, Any], datasets: Sequence,
                  config_hashes: Sequence[str], parameters: Mapping[str, Any], profile: str = "interactive",
                  files: Sequence[str | os.PathLike] = (), runs: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write ``<output_dir>/<figure>.metrics.json`` and the figure's ``MANIFEST.json`` entry.

    Args:
        output_dir: the figures directory.
        figure: the notebook / figure name (``fig1_peers``).
        headline: the figure's headline numbers (NaN becomes null).
        datasets: :class:`qafl_core.experiments.common.DatasetChoice` objects (or their ``to_dict()``) behind the figure.
        config_hashes: the config hashes of every run used.
        parameters: the notebook's parameter values.
        profile: the parameter profile (``smoke``, ``paper``; ``interactive`` when run by hand).
        files: the figure files written.
        runs: per run, its provenance (``config_hash``, ``identity``, ``git_commit``, ``code_fingerprint``,
            ``data_fingerprint``, ``cached``; see :func:`qafl_core.cache.load_or_run`), in run order.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    choices = [d.to_dict() if hasattr(d, "to_dict") else dict(d) for d in datasets]
    record = {
        "figure": figure, "notebook": f"notebooks/{figure}.ipynb", "profile": profile,
        "dataset": ", ".join(dict.fromkeys(c["dataset"] for c in choices)),
        "embedded_fallback": any(c.get("embedded_fallback") for c in choices),
        "datasets": choices, "headline": headline, "num_runs": len(config_hashes),
        "config_hashes": sorted(set(config_hashes)), "files": [Path(f).name for f in files],
        "git_commit": git_commit(), "created": now(), "runs": [dict(r) for r in runs],
    }
    path = out / f"{figure}.metrics.json"
    atomic_write(path, (json.dumps(jsonable(record), indent=2) + "\n").encode())
    entry = {k: v for k, v in record.items() if k != "headline"}
    update_manifest(out, figure, {**entry, "parameters": parameters, "metrics": path.name})
    return path
