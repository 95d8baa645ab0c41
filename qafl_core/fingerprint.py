"""What a run's result depends on, as hashes: the code, the data as loaded, and the run identity.

* :func:`code_fingerprint` — sha256 over every ``qafl_core/**/*.py`` file (name and bytes), once per process.
* :func:`data_fingerprint` — sha256 of a :class:`~qafl_core.data.federated.FederatedDataset`'s content:
  name, classes, client ids and every train/test tensor (dtype, shape, bytes).
* :func:`dataset_fingerprint` — the data fingerprint of the dataset a config trains on *as the run uses it*
  (after ``num_clients`` subsetting and pooling in :func:`qafl_core.data.build.build_dataset`), cached in this
  process and on disk under ``$QAFL_CACHE_DIR/fingerprints/``.  The key covers the config keys the dataset
  is built from (:data:`qafl_core.data.build.DATA_KEYS`, the only ones ``build_dataset`` can see), the resolved data root and the
  (path, size, mtime_ns, ctime_ns) of every file under it, and the code fingerprint, so a changed, added or
  removed data file, or changed loader code, is a new key: a stale entry is never served.
* :func:`run_identity` — sha256 of (config hash, data fingerprint, code fingerprint): the key of the run
  cache and of checkpoints.  Two data roots holding the same bytes share results; different bytes never do.

The two fingerprint definitions are fixed (results stored elsewhere record them): change neither.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qafl_core import environment
from qafl_core.data import build

_PKG_DIR = Path(__file__).resolve().parent
_CODE_FP: str | None = None
_MEMO: dict[str, str] = {}


def code_fingerprint() -> str:
    """sha256 (hex) of the ``qafl_core`` sources: for each ``*.py`` file in sorted order, its path relative to
    the package's parent (``qafl_core/config.py``), a NUL byte, its bytes and a NUL byte.  Computed once per process."""
    global _CODE_FP
    if _CODE_FP is None:
        h = hashlib.sha256()
        for p in sorted(_PKG_DIR.rglob("*.py")):
            rel = p.relative_to(_PKG_DIR.parent).as_posix()
            h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
        _CODE_FP = h.hexdigest()
    return _CODE_FP


def data_fingerprint(ds) -> str:
    """sha256 (hex) of a federated dataset's content (name, classes, client ids, the six data tensors)."""
    h = hashlib.sha256()
    h.update(json.dumps({"name": ds.name, "num_classes": int(ds.num_classes), "clients": list(ds.client_ids)}).encode())
    for t in (ds.x_train, ds.y_train, ds.train_offsets, ds.x_test, ds.y_test, ds.test_offsets):
        t = t.contiguous()
        h.update(str((str(t.dtype), tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Identity:
    """A run's identity and its three parts (all hex strings)."""

    identity: str
    config_hash: str
    data_fingerprint: str
    code_fingerprint: str

    def to_dict(self) -> dict[str, str]:
        return {"identity": self.identity, "config_hash": self.config_hash,
                "data_fingerprint": self.data_fingerprint, "code_fingerprint": self.code_fingerprint}


def run_identity(cfg) -> Identity:
    """The identity of the run ``cfg`` (a :class:`~qafl_core.config.RunConfig`): loads the data only when
    its fingerprint is in neither the process nor the disk cache."""
    ch, data, code = cfg.config_hash(), dataset_fingerprint(cfg), code_fingerprint()
    parts = [ch, data, code]
    inputs = input_files_fingerprint(cfg)
    if inputs:          # runs that read no other file keep the identity of three parts
        parts.append(inputs)
    ident = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    return Identity(ident, ch, data, code)


def input_files_fingerprint(cfg) -> dict[str, str]:
    """sha256 of every other file a run reads (today: the ``timing_trace`` CSV), by config key.

    The config hash covers only the file's *path*; editing the file must give another identity."""
    out = {}
    path = getattr(cfg, "timing_trace", None)
    if path and getattr(cfg, "timing", None) == "trace":
        try:
            out["timing_trace"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as exc:
            raise FileNotFoundError(f"timing_trace: cannot read {path} ({exc.strerror or exc})") from None
    return out


def dataset_fingerprint(cfg) -> str:
    """The data fingerprint of ``cfg``'s dataset as its run uses it (see the module docstring for the cache).

    The quadratic problem has no dataset (it is generated from the config, which the config hash covers):
    its fingerprint is a constant."""
    if cfg.dataset == "quadratic":
        return hashlib.sha256(b"quadratic: generated from the run config").hexdigest()
    material = json.dumps(source_key(cfg), sort_keys=True, default=str)
    key = hashlib.sha256(material.encode()).hexdigest()
    if key in _MEMO:
        return _MEMO[key]
    fp = _read_disk(key, material)
    if fp is None:
        fp = data_fingerprint(build.build_dataset(cfg))
        _write_disk(key, material, fp)
    _MEMO[key] = fp
    return fp


def source_key(cfg) -> dict[str, Any]:
    """What the dataset of ``cfg`` is built from: its :data:`~qafl_core.data.build.DATA_KEYS`,
    :func:`~qafl_core.data.build.data_sources` and the code."""
    keys = {k: getattr(cfg, k) for k in build.DATA_KEYS if k != "data_root"}
    keys["dataset_options"] = dict(keys["dataset_options"])
    return {"keys": keys, **build.data_sources(cfg.dataset, cfg.data_root, cfg.dataset_options),
            "code": code_fingerprint()}


def _cache_root() -> Path:
    return environment.cache_dir() / "fingerprints"


def _read_disk(key: str, material: str) -> str | None:
    """A cached fingerprint whose stored key material is exactly ``material``; None otherwise."""
    path = _cache_root() / f"{key}.json"
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    fp = entry.get("fingerprint") if isinstance(entry, dict) else None
    if entry.get("source") != json.loads(material) or not isinstance(fp, str) or len(fp) != 64:
        return None
    return fp


def _write_disk(key: str, material: str, fp: str) -> None:
    """Best effort: a cache directory that cannot be written only costs a recomputation next time."""
    from qafl_core import store

    try:
        store.atomic_write_json(_cache_root() / f"{key}.json", {"fingerprint": fp, "source": json.loads(material)})
    except OSError:
        pass


__all__ = ["Identity", "code_fingerprint", "data_fingerprint", "dataset_fingerprint", "run_identity", "source_key"]
