"""FEMNIST (LEAF): handwritten characters of NIST SD19, one client per writer.

Reads LEAF's finished ``train/`` + ``test/`` JSON (docs/data.md#femnist): ``x`` a 784-float list
(28×28 row-major, divided by 255, **1.0 = white background**, ink near 0 — LEAF applies no inversion and
no normalisation, and neither do we), ``y`` an int 0..61 (digits, upper case, lower case).

Several LEAF samples (independent ``-s niid --sf 0.05`` runs) can be merged.  A writer drawn by more than
one run is kept once, from the first sample in sorted directory order: each run split the writer's images
differently, so mixing two copies would leak test images into train.  ``test_unpaired/`` folders are
ignored: they hold test parts whose train shard is missing, i.e. writers without any training data, which
LEAF's reader (train users == test users) cannot use either.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from qafl_core import environment
from qafl_core.data.federated import FederatedDataset
from qafl_core.data.leaf import leaf_to_federated, read_leaf_split

NUM_CLASSES = 62
DEFAULT_SAMPLE = "slz-ai__leaf-torch"
_NAME = re.compile(r"^all_data_(?P<shard>\d+)(?:_niid_(?P<sf>\d+)|_iid_(?P<iu>\d+)_(?P<sf2>\d+))?"
                   r"(?:_keep_(?P<k>\d+))?(?:_(?:train|test)_(?P<tf>\d+))?\.json(?:\.gz)?$")


def _frac(digits: str | None) -> float | None:
    # Inverse of LEAF's label (str(float)[2:]): "05" -> 0.05, "9" -> 0.9, and "0" can only come from 1.0.
    if digits is None:
        return None
    return 1.0 if digits == "0" else float("0." + digits)


def flags_from_file_names(files: list[str]) -> dict:
    """LEAF flags and shard indices read back from LEAF's file-name grammar (seeds are not in names)."""
    shards, flags = [], set()
    for f in files:
        m = _NAME.match(Path(f).name)
        if not m:
            continue
        shards.append(int(m["shard"]))
        s = "niid" if m["sf"] else ("iid" if m["sf2"] else None)
        flags.add((s, _frac(m["sf"] or m["sf2"]), _frac(m["iu"]), None if m["k"] is None else int(m["k"]),
                   "sample" if m["tf"] else None, _frac(m["tf"])))
    out: dict = {"shards": sorted(set(shards))}
    if len(flags) == 1:
        s, sf, iu, k, t, tf = flags.pop()
        out["leaf_flags"] = {"s": s, "sf": sf, "iu": iu, "k": k, "t": t, "tf": tf}
    return out


def _x(xs: list) -> torch.Tensor:
    a = np.asarray(xs, dtype=np.float32)
    if a.size and (a.ndim != 2 or a.shape[1] != 784):
        raise ValueError(f"expected 784 pixels per image, got shape {a.shape}")
    return torch.from_numpy(a.reshape(-1, 1, 28, 28))


def _y(ys: list) -> torch.Tensor:
    a = np.asarray(ys, dtype=np.int64)
    if a.size and (a.min() < 0 or a.max() >= NUM_CLASSES):
        raise ValueError(f"labels must lie in 0..{NUM_CLASSES - 1}, got range {a.min()}..{a.max()}")
    return torch.from_numpy(a)


def _is_sample(d: Path) -> bool:
    return (d / "train").is_dir() and (d / "test").is_dir()


def _resolve(root: str | os.PathLike | list | None, merge: bool) -> list[Path]:
    if root is None:
        base = environment.data_dir()
        if not base:
            raise FileNotFoundError("FEMNIST: no data root; pass --root DIR (a LEAF sample with train/ and test/) or "
                                    "set QAFL_DATA_DIR (expects $QAFL_DATA_DIR/femnist/<sample>/); to build the data "
                                    "see `qafl data prepare femnist`")
        parent = Path(base) / "femnist"
        root = parent if merge else parent / DEFAULT_SAMPLE
    if isinstance(root, (list, tuple)):
        dirs = [Path(r) for r in root]
    else:
        r = Path(root)
        if _is_sample(r):
            dirs = [r]
        elif merge and r.is_dir():
            dirs = [d for d in r.iterdir() if _is_sample(d)]
            if not dirs:
                raise FileNotFoundError(f"FEMNIST: no sample directories (with train/ and test/) under {r}")
        elif r.is_dir() and any(_is_sample(d) for d in r.iterdir()):
            raise FileNotFoundError(f"FEMNIST: {r} has no train/ and test/; pass one of its sample directories "
                                    f"or merge=True (--merge) to merge all samples under it")
        else:
            raise FileNotFoundError(f"FEMNIST: {r} must be a LEAF sample directory with train/ and test/ "
                                    f"(see `qafl data prepare femnist`)")
    for d in dirs:
        if not _is_sample(d):
            raise FileNotFoundError(f"FEMNIST: {d} must contain train/ and test/ directories")
    return sorted(dirs, key=lambda d: (d.name, str(d)))


def load_femnist(root: str | os.PathLike | list | None = None, merge: bool = False) -> FederatedDataset:
    """Load FEMNIST from one LEAF sample directory, or merge several.

    Args:
        root: a sample directory (holding ``train/`` and ``test/``); with ``merge=True`` a directory whose
            sub-directories are samples; or a list of sample directories (merged). None: the default
            ``$QAFL_DATA_DIR/femnist/slz-ai__leaf-torch`` (merge: every sample under ``$QAFL_DATA_DIR/femnist``).
        merge: merge all samples found under ``root``.

    Returns:
        FederatedDataset with x float32 ``(N, 1, 28, 28)`` (values as stored), y int64 in 0..61, one client
        per writer in sorted id order; ``info`` records sources, LEAF flags parsed from file names, and for a
        merge which sample each writer came from and how many duplicate writers were dropped.
    """
    dirs = _resolve(root, merge)
    trains, tests, infos = [], [], []
    for d in dirs:
        tr, te = read_leaf_split(d)
        trains.append(tr)
        tests.append(te)
        infos.append({"dir": str(d), "writers": len(tr["users"]), **flags_from_file_names(tr.get("source_files", []))})
    info = {"source": "LEAF FEMNIST JSON (NIST SD19 by writer)", "pixel_convention": "1.0 = background, no normalisation",
            "ignored": "test_unpaired/ (writers without train data)"}
    if len(dirs) == 1:
        train, test = trains[0], tests[0]
        info.update({"root": str(dirs[0]), **{k: v for k, v in infos[0].items() if k not in ("dir", "writers")}})
        info["num_samples_mismatch"] = {"train": train["num_samples_mismatch"], "test": test["num_samples_mismatch"]}
    else:
        owner: dict[str, str] = {}
        train = {"users": [], "user_data": {}}
        test = {"users": [], "user_data": {}}
        dropped = 0
        for d, tr, te in zip(dirs, trains, tests):
            for u in tr["users"]:
                if u in owner:
                    dropped += 1  # first sample (sorted order) wins; see module docstring
                    continue
                owner[u] = d.name
                train["user_data"][u], test["user_data"][u] = tr["user_data"][u], te["user_data"][u]
        train["users"] = test["users"] = sorted(owner)
        for d, inf in zip(dirs, infos):
            inf["writers_kept"] = sum(1 for src in owner.values() if src == d.name)
        info.update({"merged_samples": infos, "duplicate_writers_dropped": dropped, "writer_source": owner,
                     "num_samples_mismatch": {"train": sum(t["num_samples_mismatch"] for t in trains),
                                              "test": sum(t["num_samples_mismatch"] for t in tests)}})
    return leaf_to_federated(train, test, "femnist", _x, _y, NUM_CLASSES, info)
