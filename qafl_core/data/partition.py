"""Which client holds which sample: ``natural | iid | dirichlet`` partitions, and how heterogeneous one is.

* ``natural``: the dataset's own clients (LEAF users); nothing is moved.  The default of LEAF datasets.
* ``iid``: the pooled samples shuffled and dealt into ``n`` near-equal shards (sizes differ by at most
  one; ``np.array_split`` of a permutation), train and test each on their own.  MNIST / Fashion-MNIST /
  CIFAR-10 keep their loader's i.i.d. shards (:mod:`qafl_core.data.vision`, the paper code's), which is
  their default; this function serves LEAF datasets.
* ``dirichlet``: label skew.  For each class ``c`` (in class order) the proportions ``p_c`` over the
  ``n`` clients are drawn from ``Dir(α·1_n)`` and the class's train samples, shuffled, are cut at
  ``int(cumsum(p_c) · m_c)`` (the last cut at ``m_c``), so every sample goes to exactly one client.  This
  per-class form is the one of Yurochkin et al., "Bayesian Nonparametric Federated Learning of Neural
  Networks" (ICML 2019, arXiv:1905.12022) and of Li et al., "Federated Learning on Non-IID Data Silos: An
  Experimental Study" (ICDE 2022, arXiv:2102.02079); Hsu, Qi and Brown, "Measuring the Effects of
  Non-Identical Data Distribution for Federated Visual Classification" (2019, arXiv:1909.06335) draw each
  client's label mix from ``Dir(α·p)`` instead, which has the same role for α (α → ∞: every client sees the
  global label mix; α → 0: one label per client) but can repeat or leave out samples.
  **Test set:** the *same* ``p_c`` cut each class's test samples, so every test sample is dealt once (the
  pooled evaluation is the whole test set) and a client's test labels follow its train labels' mix up to
  rounding.  **Empty clients:** a client left without a train sample gets one, chosen at random, from the
  client that holds the most (lowest index on ties); then a client without a test sample gets a test
  sample of its most frequent train label from the client holding the most test samples of that label
  (when that client has at least two test samples; failing that, from the client with the most test
  samples).  The number of moved samples is recorded in ``info["partition_moved"]``; with ``m ≫ n`` and
  α ≳ 0.5 it is usually 0.

On LEAF datasets ``iid`` and ``dirichlet`` pool the (selected) clients' samples, keeping LEAF's
train/test split of each sample, and re-deal them to the same number of clients: a departure from LEAF,
whose point is its natural partition, but it lets one dataset vary data heterogeneity alone.  All draws
come from the named stream ``(partition_seed, "partition", dataset, scheme)``, independent of the run
seed, so that seeds compare algorithms on the same partition.

:func:`label_heterogeneity` measures any partition: each client's label entropy (bits) and the total
variation distance of its train label distribution to the pooled one.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qafl_core.data.federated import FederatedDataset
from qafl_core.rng import numpy_generator

PARTITIONS = ("natural", "iid", "dirichlet")


def iid_parts(num_samples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A permutation of ``range(num_samples)`` cut into ``num_clients`` near-equal, sorted parts."""
    return [np.sort(p) for p in np.array_split(rng.permutation(num_samples), num_clients)]


def dirichlet_proportions(num_classes: int, num_clients: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """``(num_classes, num_clients)``: row ``c`` ~ ``Dir(α·1)``, drawn in class order."""
    return np.stack([rng.dirichlet(np.full(num_clients, float(alpha))) for _ in range(num_classes)])


def deal_by_proportions(labels: np.ndarray, props: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Give each class's samples (shuffled) to the clients in proportions ``props[c]``; sorted indices.

    The samples of class ``c`` (positions in ``labels``, permuted by ``rng``) are cut at
    ``int(cumsum(props[c])[:-1] · m_c)``; classes are visited in order, one permutation each.
    """
    num_classes, num_clients = props.shape
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        cuts = (np.cumsum(props[c])[:-1] * len(idx)).astype(np.int64)
        for i, piece in enumerate(np.split(idx, cuts)):
            parts[i].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts]


def _fill_empty_train(parts: list[np.ndarray], rng: np.random.Generator) -> int:
    moved = 0
    for i in range(len(parts)):
        if len(parts[i]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            if len(parts[donor]) < 2:
                raise ValueError(f"partition: {sum(len(p) for p in parts)} training samples cannot give "
                                 f"{len(parts)} clients one each")
            j = int(rng.integers(len(parts[donor])))
            parts[i] = parts[donor][j:j + 1]
            parts[donor] = np.delete(parts[donor], j)
            moved += 1
    return moved


def _fill_empty_test(test: list[np.ndarray], y_test: np.ndarray, train_labels: list[np.ndarray],
                     rng: np.random.Generator) -> int:
    moved = 0
    for i in range(len(test)):
        if len(test[i]) or sum(len(p) for p in test) < len(test):
            continue  # fewer test samples than clients: some clients stay without (evaluation skips them)
        want = int(np.bincount(train_labels[i]).argmax())
        have = [int((y_test[p] == want).sum()) if len(p) > 1 else 0 for p in test]
        donor = int(np.argmax(have)) if max(have) > 0 else int(np.argmax([len(p) for p in test]))
        pool = np.flatnonzero(y_test[test[donor]] == want) if max(have) > 0 else np.arange(len(test[donor]))
        j = int(pool[rng.integers(len(pool))])
        test[i] = test[donor][j:j + 1]
        test[donor] = np.delete(test[donor], j)
        moved += 1
    return moved


def partition_indices(y_train: np.ndarray, y_test: np.ndarray, num_clients: int, scheme: str,
                      alpha: float | None, num_classes: int,
                      rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Train and test index lists (one sorted array per client) and the number of samples moved to fill
    empty clients.  ``scheme`` is ``iid`` or ``dirichlet`` (see the module docstring)."""
    n = int(num_clients)
    if n < 1:
        raise ValueError(f"partition: num_clients must be >= 1, got {num_clients}")
    if len(y_train) < n:
        raise ValueError(f"partition: {len(y_train)} training samples cannot fill {n} clients")
    if scheme == "iid":
        return iid_parts(len(y_train), n, rng), iid_parts(len(y_test), n, rng), 0
    if scheme != "dirichlet":
        raise ValueError(f"partition: unknown scheme {scheme!r}; expected iid or dirichlet")
    if alpha is None or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"dirichlet_alpha: must be a finite number > 0, got {alpha!r}")
    props = dirichlet_proportions(num_classes, n, alpha, rng)
    train = deal_by_proportions(y_train, props, rng)
    test = deal_by_proportions(y_test, props, rng)
    moved = _fill_empty_train(train, rng)
    moved += _fill_empty_test(test, y_test, [y_train[p] for p in train], rng)
    return [np.sort(p) for p in train], [np.sort(p) for p in test], moved


def repartition(ds: FederatedDataset, scheme: str, num_clients: int | None = None, alpha: float | None = None,
                seed: int = 0) -> FederatedDataset:
    """``ds``'s pooled samples re-dealt to ``num_clients`` (default: as many as ``ds`` has) clients.

    ``natural`` returns ``ds`` unchanged.  Client ids become ``"0"``, ``"1"``, ...; hierarchies are dropped.
    """
    if scheme not in PARTITIONS:
        raise ValueError(f"partition: unknown value {scheme!r}; expected one of {', '.join(PARTITIONS)}")
    if scheme == "natural":
        return ds
    n = ds.num_clients if num_clients is None else int(num_clients)
    rng = numpy_generator(seed, "partition", ds.name, scheme)
    y_tr, y_te = ds.y_train.numpy(), ds.y_test.numpy()
    train, test, moved = partition_indices(y_tr, y_te, n, scheme, alpha, ds.num_classes, rng)

    def take(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(idx.astype(np.int64))
        return x.index_select(0, t), y.index_select(0, t)

    info = {**ds.info, "partition": scheme, "partition_seed": int(seed), "partition_moved": moved,
            "partition_of": f"{ds.num_clients} clients, {len(y_tr)} train / {len(y_te)} test samples pooled"}
    if scheme == "dirichlet":
        info["dirichlet_alpha"] = float(alpha)
    return FederatedDataset.from_clients(ds.name, [str(i) for i in range(n)],
                                         [take(ds.x_train, ds.y_train, p) for p in train],
                                         [take(ds.x_test, ds.y_test, p) for p in test], ds.num_classes, None, info)


def _label_matrix(y: torch.Tensor, counts: torch.Tensor, num_classes: int) -> torch.Tensor:
    owner = torch.repeat_interleave(torch.arange(len(counts)), counts)
    flat = torch.bincount(owner * num_classes + y, minlength=len(counts) * num_classes)
    return flat.reshape(len(counts), num_classes).double()


def label_heterogeneity(ds: FederatedDataset) -> dict[str, Any]:
    """How far the clients' train label distributions are from each other and from the pooled one.

    Returns:
        ``label_entropy_bits_{mean,p10,p50,p90}`` (each client's label entropy in bits; ``log2(C)`` is a
        uniform mix, 0 a single label), ``label_tv_{mean,p10,p50,p90}`` (total variation distance
        ``½ Σ_c |p_i(c) − p(c)|`` of client ``i``'s label distribution to the pooled train one ``p``: 0 = the
        global mix, → 1 = disjoint labels), ``label_entropy_bits_pooled`` and ``majority_class_test_rate``
        (the accuracy of always predicting the most frequent test label).  Percentiles are numpy's linear
        interpolation over clients with at least one train sample.
    """
    c = ds.num_classes
    m = _label_matrix(ds.y_train, ds.train_counts(), c)
    m = m[m.sum(1) > 0]
    p = m / m.sum(1, keepdim=True)
    glob = m.sum(0) / m.sum()

    def entropy(q: torch.Tensor) -> torch.Tensor:
        return -(torch.where(q > 0, q * torch.log2(q), torch.zeros_like(q))).sum(-1) + 0.0  # + 0.0: no "-0.000"

    out: dict[str, Any] = {}
    for name, values in (("label_entropy_bits", entropy(p)), ("label_tv", 0.5 * (p - glob).abs().sum(1))):
        v = values.numpy()
        out[f"{name}_mean"] = float(v.mean()) if len(v) else float("nan")
        for q in (10, 50, 90):
            out[f"{name}_p{q}"] = float(np.percentile(v, q)) if len(v) else float("nan")
    out["label_entropy_bits_pooled"] = float(entropy(glob))
    te = torch.bincount(ds.y_test, minlength=c)
    out["majority_class_test_rate"] = float(te.max()) / len(ds.y_test) if len(ds.y_test) else float("nan")
    return out


__all__ = ["PARTITIONS", "deal_by_proportions", "dirichlet_proportions", "iid_parts", "label_heterogeneity",
           "partition_indices", "repartition"]
