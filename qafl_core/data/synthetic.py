"""LEAF's Synthetic dataset: a re-implementation of ``data/synthetic/{main,data_generator}.py``.

Generative process of LEAF (Caldas et al., 2018; docs/data.md#synthetic), reproduced draw for draw with local
``np.random.RandomState`` instances (LEAF seeds numpy's global state; we never touch it):

1. stream A = RandomState(seed): samples per user ``min(int(lognormal(3, 2)) + 5, 1000)``;
2. stream B = RandomState(seed) again (LEAF re-seeds inside its dataset object): ``Q ~ N(0,1)`` of shape
   (dim+1, classes, clusters), ``Σ = diag((i+1)^-1.2)``, per cluster ``loc ~ N(0,1)`` then mean ~ N(loc, 1);
3. per user, still from B: cluster ``choice(p=prob_clusters)``; ``B_u ~ N(0,1)``; feature means ~ N(B_u, 1);
   ``x ~ N(mean, Σ)`` (numpy's SVD-based multivariate normal) with a constant 1 prepended; ``u ~ N(cluster
   mean, 0.1²)``; ``W = Q·u``; logits ``x·W + ε``, ``ε ~ N(0, 0.1²)``; the bias column is then dropped.

LEAF quirk kept on purpose: its "softmax" divides ``exp(logits)`` by the sum over *samples* (Python
``sum`` over the rows), not over classes, and the label is the row-wise argmax of that.  This is what
produced LEAF's published Synthetic data, so it is reproduced exactly (a row-wise "argmax softmax" would
label samples differently).

Then LEAF's ``preprocess.sh -s niid --sf 1.0 -k 5 -t sample --tf 0.6`` is applied (:mod:`qafl_core.data.leaf`).
LEAF takes those seeds from the clock; our fixed defaults are ``smplseed = seed`` and ``spltseed = seed + 1``.

``generator="fedprox"`` (an extension, off by default) is instead the Synthetic(α, β) process of Li et al.,
"Federated Optimization in Heterogeneous Networks" (FedProx, MLSys 2020, arXiv:1812.06127), §5.1, whose two
knobs set how much the clients' models (α) and inputs (β) differ; see :func:`generate_fedprox_synthetic`.
It is cut into train/test by the same LEAF ``-t sample`` split, with FedProx's 90/10 (``tf = 0.9``).
How it differs from LEAF's generator above: one model per client (``W_k``, ``b_k``) drawn around a client
mean ``u_k`` instead of LEAF's shared ``Q`` times a low-dimensional cluster vector; 10 classes and 30
clients instead of 5 and 1000; sample counts ``int(lognormal(4, 2)) + 50`` with no cap instead of
``min(int(lognormal(3, 2)) + 5, 1000)``; no logit noise; a true (row-wise) softmax; feature means
``v_k ~ N(B_k, 1)`` with ``B_k ~ N(0, β)`` where LEAF fixes β = 1.

The module is longer than most (~290 lines): both generators and the loader that caches them are kept side
by side so that their differences (listed above) can be read against the code.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from qafl_core.data.federated import FederatedDataset
from qafl_core.data.leaf import leaf_to_federated, run_pipeline


def generate_synthetic(num_tasks: int = 1000, num_classes: int = 5, num_dim: int = 60, seed: int = 931231,
                       prob_clusters: Sequence[float] = (1.0,)) -> dict:
    """LEAF's ``all_data/data.json`` for Synthetic, as a LEAF object (x lists of float, y int; users "0".."N-1").

    Raises:
        ValueError: non-positive sizes or cluster probabilities that are not a distribution.
    """
    if num_tasks < 1 or num_classes < 2 or num_dim < 1:
        raise ValueError(f"synthetic: need num_tasks >= 1, num_classes >= 2, num_dim >= 1 "
                         f"(got {num_tasks}, {num_classes}, {num_dim})")
    p = np.asarray(prob_clusters, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0 or (p < 0).any() or abs(p.sum() - 1.0) > 1e-8:
        raise ValueError(f"synthetic: prob_clusters must be non-negative and sum to 1, got {list(prob_clusters)}")
    counts = _sample_counts(num_tasks, seed)

    rs = np.random.RandomState(seed)  # LEAF re-seeds here, so Q starts from the same state as the counts
    k = len(p)
    q = rs.normal(0.0, 1.0, size=(num_dim + 1, num_classes, k))
    # Python float pow, as LEAF: numpy's vectorised pow can differ in the last bit and shift every x.
    sigma = np.diag([(i + 1) ** -1.2 for i in range(num_dim)])
    factor = _mvn_factor(sigma)
    means = []
    for _ in range(k):
        loc = rs.normal(0, 1.0, size=None)
        means.append(rs.normal(loc, 1.0, size=k))

    users, user_data = [], {}
    for i, n in enumerate(counts):
        c = rs.choice(range(k), size=None, replace=True, p=p)
        b = rs.normal(0.0, 1.0, size=None)
        mu = rs.normal(b, 1.0, size=num_dim)
        x = np.ones((n, num_dim + 1))
        x[:, 1:] = _mvn(rs, mu, factor, n)
        u = rs.normal(means[c], 0.1, size=means[c].shape)
        w = np.matmul(q, u)
        logits = np.matmul(x, w) + rs.normal(0.0, 0.1, size=(n, num_classes))
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(logits)
            prob = e / sum(e)  # LEAF's column-wise normalisation (see module docstring)
        y = np.argmax(prob, axis=1)
        uid = str(i)
        users.append(uid)
        user_data[uid] = {"x": x[:, 1:].tolist(), "y": y.tolist()}
    return {"users": users, "num_samples": [len(user_data[u]["y"]) for u in users], "user_data": user_data}


def generate_fedprox_synthetic(num_tasks: int = 30, num_classes: int = 10, num_dim: int = 60, alpha: float = 1.0,
                               beta: float = 1.0, seed: int = 931231) -> dict:
    """FedProx's Synthetic(α, β) (Li et al., 2020, arXiv:1812.06127, §5.1) as a LEAF object.

    Per client k, in the draw order of the FedProx code (``data/synthetic_*/generate_synthetic.py``), all from
    one ``RandomState(seed)``: counts ``int(lognormal(4, 2)) + 50`` for every client; ``u_k ~ N(0, α)``;
    ``B_k ~ N(0, β)``; ``v_k ~ N(B_k, 1)`` (``num_dim`` values); then per client ``W_k ~ N(u_k, 1)`` of shape
    (num_dim, num_classes), ``b_k ~ N(u_k, 1)``, ``x ~ N(v_k, Σ)`` with ``Σ = diag(j^-1.2)``, ``j = 1..num_dim``,
    and ``y = argmax softmax(x·W_k + b_k)`` (taken as the argmax of the logits: the same label wherever
    ``exp`` does not overflow).  Users are ``f_00000``, ``f_00001``, ... as in the FedProx data.

    Where the FedProx code and paper differ, the code is followed: the paper writes ``N(0, α)`` and
    ``N(0, β)``, the code draws ``normal(0, α)`` and ``normal(0, β)``, i.e. α and β are standard deviations;
    the paper says the sample counts follow a power law, the code draws ``int(lognormal(4, 2)) + 50``.  The
    FedProx code never seeds numpy, so its published files cannot be regenerated; ours are seeded.

    Raises:
        ValueError: non-positive sizes, or a negative/non-finite α or β.
    """
    if num_tasks < 1 or num_classes < 2 or num_dim < 1:
        raise ValueError(f"synthetic: need num_tasks >= 1, num_classes >= 2, num_dim >= 1 "
                         f"(got {num_tasks}, {num_classes}, {num_dim})")
    for name, v in (("alpha", alpha), ("beta", beta)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            raise ValueError(f"synthetic: {name} must be a finite number >= 0, got {v!r}")
    rs = np.random.RandomState(seed)
    counts = rs.lognormal(4, 2, num_tasks).astype(int) + 50
    mean_w = rs.normal(0, alpha, num_tasks)
    big_b = rs.normal(0, beta, num_tasks)
    mean_x = [rs.normal(big_b[i], 1, num_dim) for i in range(num_tasks)]
    factor = _mvn_factor(np.diag([(j + 1) ** -1.2 for j in range(num_dim)]))
    users, user_data = [], {}
    for i in range(num_tasks):
        w = rs.normal(mean_w[i], 1, (num_dim, num_classes))
        b = rs.normal(mean_w[i], 1, num_classes)
        x = _mvn(rs, mean_x[i], factor, int(counts[i]))
        y = np.argmax(x @ w + b, axis=1)
        uid = f"f_{i:05d}"
        users.append(uid)
        user_data[uid] = {"x": x.tolist(), "y": y.tolist()}
    return {"users": users, "num_samples": [int(c) for c in counts], "user_data": user_data}


def _mvn_factor(cov: np.ndarray) -> np.ndarray:
    """The matrix RandomState.multivariate_normal multiplies standard normals by (its SVD method)."""
    _, s, v = np.linalg.svd(cov)
    return np.sqrt(s)[:, None] * v


def _mvn(rs: np.random.RandomState, mean: np.ndarray, factor: np.ndarray, n: int) -> np.ndarray:
    """Same draws and arithmetic as ``rs.multivariate_normal(mean, cov, n)`` (legacy RandomState, whose
    streams numpy keeps stable), with the SVD of the fixed Σ done once instead of once per user: 1000
    SVDs dominated the run time on a busy machine.  tests/test_synthetic.py checks the equality."""
    x = rs.standard_normal((n, len(mean)))
    x = np.dot(x, factor)
    x += mean
    return x


def _sample_counts(num_tasks: int, seed: int) -> list[int]:
    """Samples per user: ``min(int(lognormal(3, 2)) + 5, 1000)`` from a fresh RandomState(seed)."""
    raw = np.random.RandomState(seed).lognormal(3, 2, num_tasks).astype(int)
    return [int(min(s + 5, 1000)) for s in raw]


def _cache_file(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / f"synthetic_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


#: Named option sets (``dataset_options: {preset: NAME}``); options given explicitly win over the preset's.
#: ``learnable``: FedProx's Synthetic(0.5, 0.5), 30 clients, 10 classes; LEAF's default data sit near their
#: majority class in short federated runs, these reach well above it (measured numbers: data/README.md).
PRESETS: dict[str, dict] = {"learnable": {"generator": "fedprox", "alpha": 0.5, "beta": 0.5}}
GENERATORS = ("leaf", "fedprox")
_DEFAULTS = {"leaf": {"num_tasks": 1000, "num_classes": 5, "tf": 0.6},      # LEAF's suggested flags
             "fedprox": {"num_tasks": 30, "num_classes": 10, "tf": 0.9}}    # FedProx: 30 devices, 90/10 split


def resolve_options(num_tasks: int | None = None, num_classes: int | None = None, tf: float | None = None,
                    generator: str | None = None, alpha: float | None = None, beta: float | None = None,
                    preset: str | None = None) -> dict:
    """The generator-dependent options after applying ``preset`` and the generator's defaults.

    Raises:
        ValueError: unknown preset or generator, or α/β given to LEAF's generator (which has no such knobs).
    """
    given = dict(num_tasks=num_tasks, num_classes=num_classes, tf=tf, generator=generator, alpha=alpha, beta=beta)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"synthetic: unknown preset {preset!r}; known presets: {', '.join(PRESETS) or '(none)'}")
        given = {k: (PRESETS[preset].get(k) if v is None else v) for k, v in given.items()}
    gen = given["generator"] or "leaf"
    if gen not in GENERATORS:
        raise ValueError(f"synthetic: unknown generator {gen!r}; expected one of {', '.join(GENERATORS)}")
    if gen == "leaf" and (given["alpha"] is not None or given["beta"] is not None):
        raise ValueError("synthetic: alpha and beta are options of generator=fedprox (LEAF's generator has neither)")
    out = {k: (_DEFAULTS[gen][k] if given[k] is None else given[k]) for k in ("num_tasks", "num_classes", "tf")}
    out["generator"] = gen
    if gen == "fedprox":
        out["alpha"] = 1.0 if given["alpha"] is None else given["alpha"]   # FedProx's Synthetic(1, 1)
        out["beta"] = 1.0 if given["beta"] is None else given["beta"]
    return out


def load_synthetic(num_tasks: int | None = None, num_classes: int | None = None, num_dim: int = 60,
                   seed: int = 931231, sf: float = 1.0, k: int = 5, tf: float | None = None,
                   smplseed: int | None = None, spltseed: int | None = None,
                   prob_clusters: Sequence[float] = (1.0,), cache_dir: str | os.PathLike | None = None,
                   generator: str | None = None, alpha: float | None = None, beta: float | None = None,
                   preset: str | None = None) -> FederatedDataset:
    """Generate LEAF Synthetic and run LEAF's ``-s niid --sf SF -k K -t sample --tf TF`` on it.

    Args:
        num_tasks, num_classes, num_dim, seed, prob_clusters: generator parameters (None: the generator's
            defaults, LEAF's 1000 users and 5 classes or FedProx's 30 and 10).
        sf, k, tf: LEAF pipeline flags (defaults = LEAF's suggested ``--sf 1.0 -k 5 --tf 0.6``; FedProx's
            ``tf = 0.9`` with ``generator="fedprox"``).
        smplseed, spltseed: pipeline seeds; None -> ``seed`` and ``seed + 1``.
        cache_dir: optional directory for a cache keyed by every argument and the code fingerprint
            (tensors and plain containers, loaded with pickle disabled).
        generator: ``"leaf"`` (default, LEAF's data bit for bit) or ``"fedprox"`` (Synthetic(α, β)).
        alpha, beta: FedProx's α (how far apart the clients' models are) and β (their inputs); default 1.
        preset: a name from :data:`PRESETS`, filling the options above that are left unset.

    Returns:
        FederatedDataset: x float32 ``(N, num_dim)``, y int64, clients in LEAF's sorted (string) id order.
    """
    opts = resolve_options(num_tasks, num_classes, tf, generator, alpha, beta, preset)
    num_tasks, num_classes, tf = opts["num_tasks"], opts["num_classes"], opts["tf"]
    if opts["generator"] == "fedprox" and [float(v) for v in prob_clusters] != [1.0]:
        raise ValueError("synthetic: prob_clusters is an option of LEAF's generator, not of generator=fedprox")
    smplseed = seed if smplseed is None else int(smplseed)
    spltseed = seed + 1 if spltseed is None else int(spltseed)
    args = dict(num_tasks=num_tasks, num_classes=num_classes, num_dim=num_dim, seed=seed,
                prob_clusters=[float(v) for v in prob_clusters])
    if opts["generator"] == "fedprox":  # LEAF's keys (and cache files) stay as they were
        args = dict(num_tasks=num_tasks, num_classes=num_classes, num_dim=num_dim, seed=seed,
                    generator="fedprox", alpha=float(opts["alpha"]), beta=float(opts["beta"]))
    flags = dict(sf=sf, k=k, tf=tf, smplseed=smplseed, spltseed=spltseed)
    key = repr(sorted({**args, **flags}.items()))
    if cache_dir is not None:
        cached = _read_cache(_cache_file(cache_dir, key), key)
        if cached is not None:
            return cached

    if opts["generator"] == "fedprox":
        raw = generate_fedprox_synthetic(**{k: v for k, v in args.items() if k != "generator"})
    else:
        raw = generate_synthetic(**args)
    trains, tests, meta = run_pipeline([raw], "niid", sf=sf, k=k, split="sample", tf=tf,
                                       smplseed=smplseed, spltseed=spltseed)
    train, test = trains[0], tests[0]
    order = sorted(train["users"])  # LEAF's model-side reader sorts user ids
    train = {"users": order, "user_data": train["user_data"]}
    test = {"users": order, "user_data": test["user_data"]}
    source = ("FedProx Synthetic(alpha, beta) generator (Li et al. 2020, re-implemented, seeded RandomState)"
              if opts["generator"] == "fedprox" else "LEAF synthetic generator (re-implemented, seeded RandomState)")
    info = {"source": source, "generator": args,
            "leaf_flags": meta, "all_data_users": num_tasks, "all_data_samples": sum(raw["num_samples"])}

    def x_fn(xs: list) -> torch.Tensor:
        return torch.from_numpy(np.asarray(xs, dtype=np.float32).reshape(-1, num_dim))

    def y_fn(ys: list) -> torch.Tensor:
        return torch.from_numpy(np.asarray(ys, dtype=np.int64))

    ds = leaf_to_federated(train, test, "synthetic", x_fn, y_fn, num_classes, info)
    if cache_dir is not None:
        from qafl_core import store
        from qafl_core.fingerprint import code_fingerprint

        store.atomic_save_tensors(_cache_file(cache_dir, key),
                                  {"key": key, "code": code_fingerprint(), "dataset": dict(ds.__dict__)})
    return ds


def _read_cache(path: Path, key: str) -> FederatedDataset | None:
    """The cached dataset at ``path`` if it was written for ``key`` by this code, else None (regenerated).

    The file holds tensors and plain containers only and is read with pickle disabled; a file that would
    import anything when loaded is refused (ValueError naming it), and nothing in it runs."""
    from qafl_core import store
    from qafl_core.fingerprint import code_fingerprint

    if not path.is_file():
        return None
    try:
        obj = store.load_tensors(path, "Synthetic cache file")
    except ValueError as exc:
        if ": refused:" in str(exc):
            raise
        return None  # unreadable (e.g. a copy cut short): generated again and replaced
    if not (isinstance(obj, dict) and obj.get("key") == key and obj.get("code") == code_fingerprint()
            and isinstance(obj.get("dataset"), dict)):
        return None  # another version's or another key's file: generated again and replaced
    try:
        return FederatedDataset(**obj["dataset"])
    except (TypeError, ValueError):
        return None
