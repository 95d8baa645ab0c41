"""LEAF JSON reader/writer and LEAF's preprocessing pipeline (sample, remove users, split).

Behaviour follows LEAF (Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018;
github.com/TalwalkarLab/leaf, ``data/utils/{sample,remove_users,split_data}.py``) as restated in
docs/data.md#leaf-pipeline and #leaf-quirks; the code is our own.  A *LEAF object* is a plain dict exactly as in a
LEAF JSON file: ``{"users": [...], "num_samples": [...], "user_data": {u: {"x": [...], "y": [...]}}}``
plus an optional ``"hierarchies"`` list.  Pipeline functions take and return one object per input file
(LEAF processes every file on its own) and never touch global random state: each call builds a local
``random.Random(seed)``, so the same seed always gives the same sample/split.

Deliberate differences from LEAF (documented in docs/data.md#leaf-pipeline):
* counts are always ``len(y)``; ``num_samples`` is recomputed (Shakespeare test files list n - n_train,
  79 more than they hold);
* the niid sampler's cut user keeps its first ``m`` samples in their original order (LEAF keeps the same
  first ``m`` samples but in a shuffled order);
* users with < 2 samples are dropped by the sample split instead of being left as empty entries.

Reading is defensive: files are size-bounded (:mod:`qafl_core.limits`), and NaN/inf inputs, non-integer or
out-of-range labels are errors naming the file and the user.  The module is longer than most (~400 lines)
because it holds LEAF's whole JSON pipeline (read, validate, merge, sample, split, write, convert) in one place.
"""
from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from qafl_core.data.federated import FederatedDataset
from qafl_core.limits import read_bytes_bounded

LeafObj = dict[str, Any]
_SUFFIXES = (".json", ".json.gz")
# ---------------------------------------------------------------------------------------------- reading
def _validate(obj: Any, where: str) -> LeafObj:
    """Check the LEAF structure; raise ValueError naming ``where`` and the offending key/user."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object with keys users/num_samples/user_data, got {type(obj).__name__}")
    for key, typ in (("users", list), ("num_samples", list), ("user_data", dict)):
        if key not in obj:
            raise ValueError(f"{where}: missing key '{key}' (a LEAF file needs users, num_samples, user_data)")
        if not isinstance(obj[key], typ):
            raise ValueError(f"{where}: key '{key}' must be a {typ.__name__}, got {type(obj[key]).__name__}")
    users, ns, ud = obj["users"], obj["num_samples"], obj["user_data"]
    if len(ns) != len(users):
        raise ValueError(f"{where}: 'num_samples' has {len(ns)} entries for {len(users)} users")
    if "hierarchies" in obj and (not isinstance(obj["hierarchies"], list) or len(obj["hierarchies"]) != len(users)):
        raise ValueError(f"{where}: 'hierarchies' must be a list with one entry per user ({len(users)})")
    seen: set[str] = set()
    for u, n in zip(users, ns):
        if not isinstance(u, str):
            raise ValueError(f"{where}: user ids must be strings, got {u!r} ({type(u).__name__}) in 'users'")
        if u in seen:
            raise ValueError(f"{where}: user '{u}' listed twice in 'users'")
        seen.add(u)
        if not isinstance(n, int) or isinstance(n, bool):
            raise ValueError(f"{where}: 'num_samples' entry of user '{u}' must be an int, got {n!r}")
        d = ud.get(u)
        if d is None:
            raise ValueError(f"{where}: user '{u}' has no entry in 'user_data'")
        if not isinstance(d, dict) or not isinstance(d.get("x"), list) or not isinstance(d.get("y"), list):
            raise ValueError(f"{where}: user_data['{u}'] must be an object with list fields 'x' and 'y'")
        if len(d["x"]) != len(d["y"]):
            raise ValueError(f"{where}: user_data['{u}'] has {len(d['x'])} x but {len(d['y'])} y")
    return obj


def read_leaf_file(path: str | os.PathLike) -> LeafObj:
    """Read and validate one LEAF ``.json`` or ``.json.gz`` file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: corrupt gzip, truncated/invalid JSON, or a structural problem (names file and key/user).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"LEAF file not found: {p}")
    try:
        text = read_bytes_bounded(p).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: cannot read (not UTF-8 text at byte {exc.start}; corrupt file?)") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: invalid JSON (truncated or corrupt?): {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None
    except RecursionError:
        raise ValueError(f"{p}: not a LEAF file (JSON nested too deeply)") from None
    return _validate(obj, str(p))


def _leaf_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"LEAF data directory not found: {directory}")
    files = sorted(f for f in directory.iterdir() if f.is_file() and f.name.endswith(_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no LEAF .json/.json.gz files in {directory}")
    return files


def read_leaf_dir(directory: str | os.PathLike) -> LeafObj:
    """Merge every ``.json``/``.json.gz`` file of ``directory`` (sorted by file name) into one object.

    ``hierarchies`` is kept when every file has it; a mix is an error, as is a user in two files.
    """
    d = Path(directory)
    files = _leaf_files(d)
    objs = [read_leaf_file(f) for f in files]
    with_h = [f.name for f, o in zip(files, objs) if "hierarchies" in o]
    if with_h and len(with_h) != len(files):
        without = [f.name for f, o in zip(files, objs) if "hierarchies" not in o]
        raise ValueError(f"{d}: 'hierarchies' present in {with_h[:5]} but missing in {without[:5]}")
    out: LeafObj = {"users": [], "num_samples": [], "user_data": {}}
    if with_h:
        out["hierarchies"] = []
    owner: dict[str, str] = {}
    for f, o in zip(files, objs):
        for u in o["users"]:
            if u in owner:
                raise ValueError(f"user '{u}' appears in both {d / owner[u]} and {f}")
            owner[u] = f.name
        out["users"] += o["users"]
        out["num_samples"] += o["num_samples"]
        out["user_data"].update({u: o["user_data"][u] for u in o["users"]})
        if with_h:
            out["hierarchies"] += o["hierarchies"]
    out["source_files"] = [str(f) for f in files]
    out["user_files"] = {u: str(d / name) for u, name in owner.items()}
    return out


def _sorted_recounted(obj: LeafObj) -> tuple[LeafObj, int]:
    """Users in sorted order (as LEAF's model-side reader), num_samples = len(y); returns #mismatches."""
    listed = dict(zip(obj["users"], obj["num_samples"]))
    hier = dict(zip(obj["users"], obj["hierarchies"])) if "hierarchies" in obj else None
    users = sorted(obj["users"])
    counts = [len(obj["user_data"][u]["y"]) for u in users]
    out: LeafObj = {"users": users, "num_samples": counts, "user_data": {u: obj["user_data"][u] for u in users}}
    if hier is not None:
        out["hierarchies"] = [hier[u] for u in users]
    out["num_samples_mismatch"] = sum(listed[u] != c for u, c in zip(users, counts))
    for key in ("source_files", "user_files"):
        if key in obj:
            out[key] = obj[key]
    return out, out["num_samples_mismatch"]


def read_leaf_split(root: str | os.PathLike) -> tuple[LeafObj, LeafObj]:
    """Read ``root/train`` and ``root/test``; both must hold exactly the same users.

    Returns (train, test) with users sorted, ``num_samples`` recomputed from ``len(y)`` and the number of
    users whose listed count differed stored under ``"num_samples_mismatch"``.
    """
    r = Path(root)
    tr_dir, te_dir = r / "train", r / "test"
    train, test = read_leaf_dir(tr_dir), read_leaf_dir(te_dir)
    only_tr = sorted(set(train["users"]) - set(test["users"]))
    only_te = sorted(set(test["users"]) - set(train["users"]))
    if only_tr or only_te:
        raise ValueError(f"train/test users differ between {tr_dir} and {te_dir}: "
                         f"{len(only_tr)} only in train {only_tr[:10]}, {len(only_te)} only in test {only_te[:10]}")
    return _sorted_recounted(train)[0], _sorted_recounted(test)[0]


def write_leaf_file(obj: LeafObj, path: str | os.PathLike) -> None:
    """Write a LEAF object (only the LEAF keys) as ``.json`` or ``.json.gz`` (by the file name)."""
    p = Path(path)
    out = {"users": list(obj["users"])}
    if "hierarchies" in obj:
        out["hierarchies"] = list(obj["hierarchies"])
    out["num_samples"] = [len(obj["user_data"][u]["y"]) for u in obj["users"]]
    out["user_data"] = {u: obj["user_data"][u] for u in obj["users"]}
    _validate(out, str(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.name.endswith(".gz"):
        with gzip.open(p, "wt", encoding="utf-8") as fh:
            json.dump(out, fh)
    else:
        with open(p, "w", encoding="utf-8") as fh:
            json.dump(out, fh)


# ---------------------------------------------------------------------------------------------- pipeline
def _check_frac(name: str, v: float, allow_zero: bool = False) -> float:
    v = float(v)
    if not ((0.0 <= v if allow_zero else 0.0 < v) and v <= 1.0):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1], got {v}")
    return v


def _new(users: list[str], data: dict, hier: list | None = None) -> LeafObj:
    out: LeafObj = {"users": users, "num_samples": [len(data[u]["y"]) for u in users], "user_data": data}
    if hier is not None:
        out["hierarchies"] = hier
    return out


def sample_niid(objs: Sequence[LeafObj], sf: float, seed: int) -> list[LeafObj]:
    """LEAF ``-s niid``: per file, shuffle users and take them whole until ``int(sf × samples)`` are
    reached; the last user taken is cut to its first samples so the total is exact. Keeps hierarchies."""
    sf = _check_frac("sf", sf)
    rng = random.Random(seed)
    out = []
    for o in objs:
        ud = o["user_data"]
        target = int(sf * sum(len(ud[u]["y"]) for u in o["users"]))
        order = list(range(len(o["users"])))
        rng.shuffle(order)
        users, data, hier, total = [], {}, [], 0
        for i in order:
            if total >= target:
                break
            u = o["users"][i]
            m = min(len(ud[u]["y"]), target - total)
            if m == 0:  # an empty user adds nothing to the sample
                continue
            data[u] = {"x": ud[u]["x"][:m], "y": ud[u]["y"][:m]}
            users.append(u)
            hier.append(o["hierarchies"][i] if "hierarchies" in o else None)
            total += m
        out.append(_new(users, data, hier if "hierarchies" in o else None))
    return out


def sample_iid(objs: Sequence[LeafObj], sf: float, iu: float, seed: int) -> list[LeafObj]:
    """LEAF ``-s iid``: per file, draw ``int(sf × samples)`` pooled samples uniformly and deal them into
    ``max(1, round(iu × users))`` equal new users; ids continue across files ("0", "1", ...) as in LEAF.
    The remainder of an uneven deal is dropped (equal-size users). Drops hierarchies."""
    sf, iu = _check_frac("sf", sf), _check_frac("iu", iu)
    rng = random.Random(seed)
    out, next_id = [], 0
    for o in objs:
        ud = o["user_data"]
        xs = [x for u in o["users"] for x in ud[u]["x"]]
        ys = [y for u in o["users"] for y in ud[u]["y"]]
        picked = rng.sample(range(len(ys)), int(sf * len(ys)))
        k = max(1, int(round(iu * len(o["users"]))))
        per = len(picked) // k
        users = [str(next_id + j) for j in range(k)]
        data = {u: {"x": [xs[i] for i in picked[j * per:(j + 1) * per]],
                    "y": [ys[i] for i in picked[j * per:(j + 1) * per]]} for j, u in enumerate(users)}
        next_id += k
        out.append(_new(users, data))
    return out


def remove_users(objs: Sequence[LeafObj], k: int) -> list[LeafObj]:
    """LEAF ``-k K``: drop users with fewer than ``k`` samples (hierarchies kept aligned)."""
    if int(k) < 0:
        raise ValueError(f"k (minimum samples per user) must be >= 0, got {k}")
    out = []
    for o in objs:
        keep = [i for i, u in enumerate(o["users"]) if len(o["user_data"][u]["y"]) >= int(k)]
        users = [o["users"][i] for i in keep]
        out.append(_new(users, {u: o["user_data"][u] for u in users},
                        [o["hierarchies"][i] for i in keep] if "hierarchies" in o else None))
    return out


def split_sample(objs: Sequence[LeafObj], tf: float, seed: int,
                 ordered_gap: int | None = None) -> tuple[list[LeafObj], list[LeafObj]]:
    """LEAF ``-t sample``: per user with n >= 2 samples, ``max(1, int(tf × n))`` go to train.

    Train is a seeded random subset (kept in original order) and test the rest; with ``ordered_gap``
    (Shakespeare, gap 79) train is the first ``n_train`` samples and test starts at ``n_train + gap``.
    Users left without train or test samples are dropped; outputs carry no hierarchies (LEAF drops them).
    """
    tf = _check_frac("tf", tf)
    if ordered_gap is not None and int(ordered_gap) < 0:
        raise ValueError(f"ordered_gap must be >= 0, got {ordered_gap}")
    rng = random.Random(seed)
    trains, tests = [], []
    for o in objs:
        users, tr, te = [], {}, {}
        for u in o["users"]:
            x, y = o["user_data"][u]["x"], o["user_data"][u]["y"]
            n = len(y)
            if n < 2:
                continue
            n_tr = max(1, int(tf * n))
            if ordered_gap is None:
                chosen = set(rng.sample(range(n), n_tr))
                tr_idx = [i for i in range(n) if i in chosen]
                te_idx = [i for i in range(n) if i not in chosen]
            else:
                tr_idx, te_idx = list(range(n_tr)), list(range(n_tr + int(ordered_gap), n))
            if not tr_idx or not te_idx:
                continue
            users.append(u)
            tr[u] = {"x": [x[i] for i in tr_idx], "y": [y[i] for i in tr_idx]}
            te[u] = {"x": [x[i] for i in te_idx], "y": [y[i] for i in te_idx]}
        trains.append(_new(users, tr))
        tests.append(_new(list(users), te))
    return trains, tests


def split_user(objs: Sequence[LeafObj], tf: float, seed: int) -> tuple[list[LeafObj], list[LeafObj]]:
    """LEAF ``-t user``: a seeded random ``int(tf × users)`` of all users (pooled over files) go wholly to
    train, the rest to test; one train and one test object (LEAF writes one file per side)."""
    tf = _check_frac("tf", tf)
    pairs = [(u, o["user_data"][u]) for o in objs for u in o["users"]]
    chosen = set(random.Random(seed).sample(range(len(pairs)), int(tf * len(pairs))))
    tr = [pairs[i] for i in range(len(pairs)) if i in chosen]
    te = [pairs[i] for i in range(len(pairs)) if i not in chosen]
    return [_new([u for u, _ in tr], dict(tr))], [_new([u for u, _ in te], dict(te))]


def run_pipeline(objs: Sequence[LeafObj], sampling: str | None = "niid", sf: float = 0.1, iu: float = 0.01,
                 k: int | None = None, split: str | None = "sample", tf: float = 0.9, smplseed: int = 0,
                 spltseed: int = 0, ordered_gap: int | None = None) -> tuple[list[LeafObj], list[LeafObj], dict]:
    """LEAF ``preprocess.sh -s SAMPLING --sf SF --iu IU -k K -t SPLIT --tf TF --smplseed --spltseed``.

    Stages whose flag is None are skipped.  Without a split, train is the processed data and test is [].
    Returns (train objects, test objects, meta) where meta records every flag and seed (LEAF names).
    """
    if sampling not in (None, "niid", "iid"):
        raise ValueError(f"sampling must be 'niid', 'iid' or None, got {sampling!r}")
    if split not in (None, "sample", "user"):
        raise ValueError(f"split must be 'sample', 'user' or None, got {split!r}")
    data = list(objs)
    if sampling == "niid":
        data = sample_niid(data, sf, smplseed)
    elif sampling == "iid":
        data = sample_iid(data, sf, iu, smplseed)
    if k is not None:
        data = remove_users(data, k)
    if split == "sample":
        train, test = split_sample(data, tf, spltseed, ordered_gap)
    elif split == "user":
        train, test = split_user(data, tf, spltseed)
    else:
        train, test = data, []
    meta = {"s": sampling, "sf": sf, "iu": iu if sampling == "iid" else None, "k": k, "t": split, "tf": tf,
            "smplseed": smplseed if sampling else None, "spltseed": spltseed if split else None,
            "ordered_gap": ordered_gap}
    return train, test, meta


def _digits(v: float) -> str:
    # LEAF labels a fraction by the text of str(float) after its first two characters: 0.05 -> "05", 1.0 -> "0".
    return str(float(v))[2:]


def leaf_file_name(base: str, sampling: str | None = None, sf: float = 0.1, iu: float = 0.01, k: int | None = None,
                   split_side: str | None = None, tf: float = 0.9) -> str:
    """LEAF's stage file name, e.g. ``leaf_file_name("all_data_3", "niid", 0.05, k=0, split_side="train")``
    -> ``all_data_3_niid_05_keep_0_train_9.json``."""
    name = base[:-5] if base.endswith(".json") else base
    if sampling == "niid":
        name += f"_niid_{_digits(sf)}"
    elif sampling == "iid":
        name += f"_iid_{_digits(iu)}_{_digits(sf)}"
    elif sampling is not None:
        raise ValueError(f"sampling must be 'niid', 'iid' or None, got {sampling!r}")
    if k is not None:
        name += f"_keep_{int(k)}"
    if split_side is not None:
        if split_side not in ("train", "test"):
            raise ValueError(f"split_side must be 'train' or 'test', got {split_side!r}")
        name += f"_{split_side}_{_digits(tf)}"
    return name + ".json"


# ---------------------------------------------------------------------------------------------- tensors
def leaf_to_federated(train: LeafObj, test: LeafObj, name: str, x_fn: Callable[[list], torch.Tensor],
                      y_fn: Callable[[list], torch.Tensor], num_classes: int, info: dict | None = None) -> FederatedDataset:
    """Convert merged LEAF train/test objects (same users) into a FederatedDataset, client order = train
    order.  ``x_fn``/``y_fn`` turn one user's ``x``/``y`` list into tensors (dataset specific)."""
    users = list(train["users"])
    if set(users) != set(test["users"]):
        diff = sorted(set(users) ^ set(test["users"]))
        raise ValueError(f"{name}: train and test hold different users (e.g. {diff[:10]})")
    tr, te = [], []
    for u in users:
        for obj, acc, side in ((train, tr, "train"), (test, te, "test")):
            d = obj["user_data"][u]
            where = f"{obj['user_files'][u]}: {name}" if u in obj.get("user_files", {}) else name
            try:
                _check_labels(d["y"])
                x, y = x_fn(d["x"]), y_fn(d["y"])
                _check_values(x, y, num_classes)
            except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
                raise ValueError(f"{where}: cannot convert {side} data of user '{u}': {exc}") from None
            acc.append((x, y))
    meta = dict(info or {})
    meta.setdefault("num_samples_mismatch", {"train": train.get("num_samples_mismatch", 0),
                                             "test": test.get("num_samples_mismatch", 0)})
    return FederatedDataset.from_clients(name, users, tr, te, num_classes, train.get("hierarchies"), meta)


def _check_labels(ys: list) -> None:
    """Numeric labels must be integers (a float label would be truncated silently); strings are mapped later."""
    for v in ys:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError(f"labels must be integers, got {v!r}")


def _check_values(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
    """Inputs finite, labels in ``0..num_classes-1`` (NaN/inf in data is a data error, never a diverged run)."""
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"inputs hold {bad} NaN or infinite value(s)")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got range {int(y.min())}..{int(y.max())}")
