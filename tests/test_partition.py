"""Client partitions (natural | iid | dirichlet), their use by runs, and the heterogeneity measures."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from qafl_core.config import RunConfig
from qafl_core.data.federated import FederatedDataset
from qafl_core.data.partition import (_fill_empty_test, _fill_empty_train, deal_by_proportions,
                                      dirichlet_proportions, label_heterogeneity, partition_indices, repartition)
from qafl_core.rng import numpy_generator
from qafl_core.runner import build_dataset


class IdentityPerm:
    """An rng whose permutations keep the order: the deal can then be computed by hand."""

    def permutation(self, n: int) -> np.ndarray:
        return np.arange(n)


def toy(labels_per_client: list[list[int]], test_per_client: list[list[int]] | None = None,
        num_classes: int = 3) -> FederatedDataset:
    """A dataset whose x is the sample's global index (so moved samples can be traced)."""
    test_per_client = test_per_client or labels_per_client
    train, test, k = [], [], 0
    for ys, ts in zip(labels_per_client, test_per_client):
        train.append((torch.arange(k, k + len(ys), dtype=torch.float32)[:, None], torch.tensor(ys)))
        k += len(ys)
        test.append((torch.arange(k, k + len(ts), dtype=torch.float32)[:, None], torch.tensor(ts)))
        k += len(ts)
    return FederatedDataset.from_clients("toy", [f"u{i}" for i in range(len(train))], train, test, num_classes)


# ---------------------------------------------------------------------- hand-computed
def test_deal_by_proportions_by_hand():
    labels = np.array([0, 1, 0, 1, 1, 0, 1, 1, 0, 1])  # class 0 at 0,2,5,8; class 1 at 1,3,4,6,7,9
    props = np.array([[0.25, 0.75], [0.5, 0.5]])
    parts = deal_by_proportions(labels, props, IdentityPerm())
    # class 0: cut at int(0.25*4) = 1 -> [0] | [2,5,8]; class 1: cut at int(0.5*6) = 3 -> [1,3,4] | [6,7,9]
    assert [p.tolist() for p in parts] == [[0, 1, 3, 4], [2, 5, 6, 7, 8, 9]]
    three = deal_by_proportions(np.zeros(7, int), np.array([[0.3, 0.3, 0.4]]), IdentityPerm())
    # cumsum 0.3, 0.6 -> cuts int(2.1) = 2, int(4.2) = 4
    assert [p.tolist() for p in three] == [[0, 1], [2, 3], [4, 5, 6]]


def test_deal_uses_one_permutation_per_class_in_class_order():
    labels = np.array([1, 0, 1, 0, 1, 0])
    props = np.array([[0.5, 0.5], [1 / 3, 2 / 3]])
    parts = deal_by_proportions(labels, props, np.random.default_rng(5))
    ref = np.random.default_rng(5)
    c0 = np.array([1, 3, 5])[ref.permutation(3)]
    c1 = np.array([0, 2, 4])[ref.permutation(3)]
    assert parts[0].tolist() == sorted([c0[0], c1[0]])  # int(0.5*3) = 1, int(1/3*3) = 1
    assert parts[1].tolist() == sorted(list(c0[1:]) + list(c1[1:]))


def test_dirichlet_proportions_are_numpy_draws_in_class_order():
    got = dirichlet_proportions(2, 3, 0.5, np.random.default_rng(7))
    ref = np.random.default_rng(7)
    want = np.stack([ref.dirichlet([0.5, 0.5, 0.5]), ref.dirichlet([0.5, 0.5, 0.5])])
    assert np.array_equal(got, want) and np.allclose(got.sum(1), 1.0)


def test_empty_train_client_gets_a_random_sample_of_the_largest():
    parts = [np.array([4, 7, 9]), np.array([], dtype=np.int64), np.array([1, 2])]
    moved = _fill_empty_train(parts, np.random.default_rng(0))
    j = int(np.random.default_rng(0).integers(3))
    assert moved == 1 and parts[1].tolist() == [[4, 7, 9][j]]
    assert sorted(np.concatenate(parts).tolist()) == [1, 2, 4, 7, 9]


def test_empty_test_client_gets_a_test_sample_of_its_main_train_label():
    y_test = np.array([0, 1, 1, 2, 2, 2])
    test = [np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([], dtype=np.int64)]
    train_labels = [np.array([0]), np.array([2]), np.array([1, 1, 2])]  # client 2 mostly trains on label 1
    assert _fill_empty_test(test, y_test, train_labels, np.random.default_rng(0)) == 1
    assert y_test[test[2]].tolist() == [1] and len(test[0]) == 2  # taken from client 0, the holder of label 1


def test_label_heterogeneity_by_hand():
    ds = toy([[0, 0], [0, 1]], [[0, 0, 0], [1]], num_classes=2)
    h = label_heterogeneity(ds)
    # pooled train mix (3/4, 1/4); client 0 = (1, 0): entropy 0, TV 1/4; client 1 = (1/2, 1/2): 1 bit, TV 1/4
    assert h["label_entropy_bits_mean"] == pytest.approx(0.5)
    assert (h["label_entropy_bits_p10"], h["label_entropy_bits_p50"], h["label_entropy_bits_p90"]) == \
        pytest.approx((0.1, 0.5, 0.9))
    assert h["label_tv_mean"] == pytest.approx(0.25) and h["label_tv_p90"] == pytest.approx(0.25)
    assert h["label_entropy_bits_pooled"] == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))
    assert h["majority_class_test_rate"] == pytest.approx(0.75)
    assert label_heterogeneity(toy([[1], [1]], num_classes=2))["label_entropy_bits_p50"] == 0.0


# ---------------------------------------------------------------------- properties
@pytest.mark.parametrize("n", [1, 3, 17, 60])
@pytest.mark.parametrize("alpha", [0.01, 0.5, 100.0])
def test_every_sample_assigned_once_and_no_empty_client(n, alpha):
    rng = np.random.default_rng(n)
    y_train, y_test = rng.integers(0, 10, 1000), rng.integers(0, 10, 300)
    tr, te, moved = partition_indices(y_train, y_test, n, "dirichlet", alpha, 10, numpy_generator(1, "t"))
    assert len(tr) == len(te) == n
    assert np.array_equal(np.sort(np.concatenate(tr)), np.arange(1000))
    assert np.array_equal(np.sort(np.concatenate(te)), np.arange(300))
    assert min(len(p) for p in tr) >= 1 and min(len(p) for p in te) >= 1
    again = partition_indices(y_train, y_test, n, "dirichlet", alpha, 10, numpy_generator(1, "t"))
    assert all(np.array_equal(a, b) for a, b in zip(tr + te, again[0] + again[1])) and again[2] == moved


def test_iid_parts_are_near_equal_and_cover_everything():
    tr, te, moved = partition_indices(np.zeros(103, int), np.zeros(10, int), 4, "iid", None, 1,
                                      np.random.default_rng(0))
    assert [len(p) for p in tr] == [26, 26, 26, 25] and [len(p) for p in te] == [3, 3, 2, 2] and moved == 0
    assert np.array_equal(np.sort(np.concatenate(tr)), np.arange(103))


def test_large_alpha_gives_the_global_mix_and_small_alpha_single_labels():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, 20000)
    big = toy([y.tolist()], [y[:5000].tolist()], num_classes=10)
    near_iid = label_heterogeneity(repartition(big, "dirichlet", 10, 1e6, seed=0))
    assert near_iid["label_tv_p90"] < 0.01
    assert near_iid["label_entropy_bits_p10"] == pytest.approx(near_iid["label_entropy_bits_pooled"], abs=0.01)
    skewed = repartition(big, "dirichlet", 10, 1e-3, seed=0)
    owner = torch.repeat_interleave(torch.arange(10), skewed.train_counts())
    top = [float(torch.bincount(owner[skewed.y_train == c]).max()) / int((skewed.y_train == c).sum())
           for c in range(10)]
    assert np.mean([t > 0.99 for t in top]) >= 0.8  # (almost) every class lands wholly on one client
    h = label_heterogeneity(skewed)
    assert h["label_tv_mean"] > 0.6 and h["label_entropy_bits_p50"] < 1.0  # pooled mix: log2(10) = 3.3 bits


def test_test_labels_follow_each_clients_train_mix():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 40000)
    ds = repartition(toy([y[:20000].tolist()], [y[20000:].tolist()], num_classes=5), "dirichlet", 5, 0.5, seed=2)
    for i in range(5):
        ytr, yte = ds.client_train(i)[1], ds.client_test(i)[1]
        if len(ytr) >= 1000:
            p = torch.bincount(ytr, minlength=5).double() / len(ytr)
            q = torch.bincount(yte, minlength=5).double() / len(yte)
            assert 0.5 * float((p - q).abs().sum()) < 0.05


def test_repartition_moves_whole_samples_and_records_it():
    ds = toy([[0, 1, 2, 0], [1, 1], [2, 2, 0]], [[0], [1, 2], [2]])
    out = repartition(ds, "dirichlet", 2, 1.0, seed=9)
    assert out.client_ids == ["0", "1"] and out.num_clients == 2
    for split in ("train", "test"):
        x, y = getattr(out, f"x_{split}"), getattr(out, f"y_{split}")
        x0, y0 = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        order, order0 = torch.argsort(x[:, 0]), torch.argsort(x0[:, 0])
        assert torch.equal(x[order], x0[order0]) and torch.equal(y[order], y0[order0])  # same (x, y) pairs
    assert out.info["partition"] == "dirichlet" and out.info["dirichlet_alpha"] == 1.0
    assert repartition(ds, "natural") is ds
    with pytest.raises(ValueError, match="dirichlet_alpha"):
        repartition(ds, "dirichlet", 2, None)
    with pytest.raises(ValueError, match="partition: 9 training samples cannot fill 10 clients"):
        repartition(ds, "iid", 10)


# ---------------------------------------------------------------------- runs
SYN = dict(dataset="synthetic", dataset_options={"num_tasks": 30}, num_clients=8)


def test_runs_default_to_the_natural_partition():
    a = build_dataset(RunConfig(**SYN))
    b = build_dataset(RunConfig(**SYN, partition="natural"))
    assert a.client_ids == b.client_ids and torch.equal(a.x_train, b.x_train) and "partition_seed" not in a.info


def test_dirichlet_run_redeals_the_selected_clients_independently_of_the_run_seed():
    natural = build_dataset(RunConfig(**SYN))
    d0 = build_dataset(RunConfig(**SYN, partition="dirichlet", dirichlet_alpha=0.3, seed=0))
    d5 = build_dataset(RunConfig(**SYN, partition="dirichlet", dirichlet_alpha=0.3, seed=5))
    assert d0.num_clients == 8 and torch.equal(d0.x_train, d5.x_train) and torch.equal(d0.x_test, d5.x_test)
    assert torch.equal(torch.sort(d0.y_train).values, torch.sort(natural.y_train).values)
    assert len(d0.y_test) == len(natural.y_test)
    other = build_dataset(RunConfig(**{**SYN, "dataset_options": {"num_tasks": 30, "partition_seed": 1}},
                                    partition="dirichlet", dirichlet_alpha=0.3))
    assert not torch.equal(other.train_counts(), d0.train_counts())
    iid = build_dataset(RunConfig(**SYN, partition="iid"))
    assert int(iid.train_counts().max() - iid.train_counts().min()) <= 1


def _write_idx(path, arr):
    raw = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw))


def test_vision_dirichlet_uses_every_sample_and_iid_stays_the_loaders(tmp_path):
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    xs[:, 0, 0] = np.arange(30)
    ys = (np.arange(30) % 10).astype(np.uint8)
    for stem, arr in (("train-images-idx3-ubyte", xs[:23]), ("train-labels-idx1-ubyte", ys[:23]),
                      ("t10k-images-idx3-ubyte", xs[23:]), ("t10k-labels-idx1-ubyte", ys[23:])):
        _write_idx(tmp_path / f"{stem}.gz", arr)
    base = dict(dataset="mnist", data_root=str(tmp_path), num_clients=4, clients_per_round=2)
    iid = build_dataset(RunConfig(**base))
    assert iid.train_counts().tolist() == [5, 5, 5, 5]  # the loader's equal shards (3 dropped), as before
    from qafl_core.data.vision import load_vision
    assert torch.equal(iid.x_train, load_vision("mnist", str(tmp_path), num_clients=4, seed=0).x_train)
    d = build_dataset(RunConfig(**base, partition="dirichlet", dirichlet_alpha=1.0))
    ids = sorted(torch.round(d.x_train[:, 0, 0, 0] * 255).long().tolist())
    assert d.num_clients == 4 and ids == list(range(23)) and len(d.y_test) == 7
    assert min(d.train_counts().tolist()) >= 1


@pytest.mark.parametrize("kw, needle", [
    (dict(partition="shards"), "partition: unknown value 'shards'"),
    (dict(partition="dirichlet"), "dirichlet_alpha: partition: dirichlet needs dirichlet_alpha"),
    (dict(partition="dirichlet", dirichlet_alpha=0.0), "dirichlet_alpha: must be > 0"),
    (dict(partition="iid", dirichlet_alpha=1.0), "dirichlet_alpha: only used with partition: dirichlet"),
    (dict(dataset="fmnist", partition="natural"), "partition: fmnist has no natural client partition"),
    (dict(dataset="quadratic", num_clients=4, partition="iid"), "partition: the quadratic problem"),
])
def test_partition_keys_are_validated(kw, needle):
    with pytest.raises(ValueError) as exc:
        RunConfig(**kw)
    assert str(exc.value).startswith(needle)


def test_partition_keys_from_strings():
    cfg = RunConfig.from_dict({"partition": "dirichlet", "dirichlet_alpha": "0.1"})
    assert cfg.dirichlet_alpha == 0.1
    with pytest.raises(ValueError, match="dataset_options.partition_seed"):
        build_dataset(RunConfig(**{**SYN, "dataset_options": {"num_tasks": 30, "partition_seed": -1}},
                                partition="iid"))
