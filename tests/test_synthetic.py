"""LEAF Synthetic generator and its default LEAF pipeline (docs/data.md#synthetic)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from qafl_core.data.synthetic import generate_synthetic, load_synthetic


@pytest.fixture(scope="module")
def default_ds():
    t0 = time.perf_counter()
    ds = load_synthetic()
    return ds, time.perf_counter() - t0


def test_small_generator_matches_pinned_leaf_values():
    # Pinned from a run that was compared bit for bit with LEAF's data_generator.py (seed 931231).
    g = generate_synthetic(5, 5, 60, 931231)
    assert g["users"] == ["0", "1", "2", "3", "4"]
    assert g["num_samples"] == [86, 33, 52, 6, 11]
    assert g["user_data"]["0"]["y"][:12] == [1, 3, 4, 2, 2, 3, 2, 1, 3, 2, 0, 1]
    assert g["user_data"]["0"]["x"][0][:3] == pytest.approx([-1.6807978879224568, 2.346998585998564,
                                                             -1.3534158826589078], abs=0, rel=1e-15)
    assert all(len(row) == 60 for row in g["user_data"]["3"]["x"])


def test_sample_counts_follow_lognormal_rule():
    g = generate_synthetic(300, 3, 4, seed=7)
    expect = [min(int(s) + 5, 1000) for s in np.random.RandomState(7).lognormal(3, 2, 300).astype(int)]
    assert g["num_samples"] == expect and max(expect) == 1000  # the cap is reached for seed 7
    assert {y for u in g["users"] for y in g["user_data"][u]["y"]} <= {0, 1, 2}


def test_deterministic_and_seed_sensitive():
    a, b = generate_synthetic(20, 5, 10, seed=1), generate_synthetic(20, 5, 10, seed=1)
    assert a == b
    assert generate_synthetic(20, 5, 10, seed=2) != a
    multi = generate_synthetic(20, 5, 10, seed=1, prob_clusters=(0.5, 0.5))
    assert multi["num_samples"] == a["num_samples"] and multi != a  # same counts stream, other clusters


def test_bad_arguments():
    with pytest.raises(ValueError, match="prob_clusters"):
        generate_synthetic(5, prob_clusters=(0.5, 0.4))
    with pytest.raises(ValueError, match="num_tasks"):
        generate_synthetic(0)


def test_default_dataset_matches_leaf_table1(default_ds):
    ds, _ = default_ds   # (dataset, seconds): timings are never asserted
    s = ds.stats()
    # LEAF Table 1: 1,000 users, 107,553 samples, 107.55 ± 213.22 per user.
    assert (s["num_clients"], s["num_samples"]) == (1000, 107553)
    assert s["samples_per_client_mean"] == pytest.approx(107.553)
    assert s["samples_per_client_std"] == pytest.approx(213.22, abs=0.01)
    assert ds.x_train.shape == (64153, 60) and ds.x_train.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.num_classes == 5
    assert ds.client_ids == sorted(ds.client_ids) and ds.client_ids[:3] == ["0", "1", "10"]
    info = ds.info["leaf_flags"]
    assert (info["s"], info["sf"], info["k"], info["t"], info["tf"]) == ("niid", 1.0, 5, "sample", 0.6)
    assert (info["smplseed"], info["spltseed"]) == (931231, 931232)


def test_split_is_leaf_tf_06(default_ds):
    ds, _ = default_ds
    total = ds.train_counts() + ds.test_counts()
    expect = torch.tensor([max(1, int(0.6 * n)) for n in total.tolist()])
    assert torch.equal(ds.train_counts(), expect)
    assert int(ds.test_counts().min()) >= 1


def test_pipeline_seeds_change_split_not_data(tmp_path):
    a = load_synthetic(num_tasks=30, spltseed=1)
    b = load_synthetic(num_tasks=30, spltseed=2)
    assert torch.equal(a.train_counts(), b.train_counts())
    assert not torch.equal(a.x_train, b.x_train)
    c = load_synthetic(num_tasks=30, spltseed=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("synthetic_*.pt"))) == 1
    d = load_synthetic(num_tasks=30, spltseed=1, cache_dir=tmp_path)  # from the cache
    assert torch.equal(a.x_train, c.x_train) and torch.equal(c.x_train, d.x_train) and c.client_ids == d.client_ids
    assert d.info == c.info


def test_cached_factor_equals_numpy_multivariate_normal():
    from qafl_core.data.synthetic import _mvn, _mvn_factor
    cov = np.diag([(i + 1) ** -1.2 for i in range(60)])
    factor = _mvn_factor(cov)
    for n, seed in ((1, 0), (7, 1), (300, 2)):
        mean = np.random.RandomState(seed + 100).normal(size=60)
        ours = _mvn(np.random.RandomState(seed), mean, factor, n)
        ref = np.random.RandomState(seed).multivariate_normal(mean=mean, cov=cov, size=n)
        assert np.array_equal(ours, ref)


# ---------------------------------------------------------------------- FedProx Synthetic(alpha, beta)
def fedprox_reference(num_tasks, num_classes, num_dim, alpha, beta, seed):
    """The FedProx generator's draws, written out as its code does them (numpy's own multivariate_normal)."""
    from qafl_core.data.synthetic import generate_fedprox_synthetic  # noqa: F401  (same module under test)
    rs = np.random.RandomState(seed)
    counts = rs.lognormal(4, 2, num_tasks).astype(int) + 50
    mean_w = rs.normal(0, alpha, num_tasks)
    b_user = rs.normal(0, beta, num_tasks)
    mean_x = np.zeros((num_tasks, num_dim))
    cov = np.diag([np.power(j + 1, -1.2) for j in range(num_dim)])
    for i in range(num_tasks):
        mean_x[i] = rs.normal(b_user[i], 1, num_dim)
    xs, ys = [], []
    for i in range(num_tasks):
        w = rs.normal(mean_w[i], 1, (num_dim, num_classes))
        b = rs.normal(mean_w[i], 1, num_classes)
        x = rs.multivariate_normal(mean_x[i], cov, counts[i])
        logits = x @ w + b
        soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        xs.append(x)
        ys.append(np.argmax(soft, axis=1))
    return counts, xs, ys


def test_fedprox_generator_matches_the_fedprox_draw_order():
    from qafl_core.data.synthetic import generate_fedprox_synthetic
    g = generate_fedprox_synthetic(4, 6, 7, alpha=0.5, beta=2.0, seed=11)
    counts, xs, ys = fedprox_reference(4, 6, 7, 0.5, 2.0, 11)
    assert g["users"] == ["f_00000", "f_00001", "f_00002", "f_00003"] and g["num_samples"] == counts.tolist()
    for i, u in enumerate(g["users"]):
        assert np.array_equal(np.asarray(g["user_data"][u]["x"]), xs[i])
        assert g["user_data"][u]["y"] == ys[i].tolist()
    assert min(counts) >= 50


def test_fedprox_loader_defaults_split_and_presets():
    from qafl_core.data.synthetic import PRESETS, resolve_options
    ds = load_synthetic(generator="fedprox", num_tasks=6)
    assert ds.num_classes == 10 and ds.num_clients == 6 and ds.client_ids[0] == "f_00000"
    total = ds.train_counts() + ds.test_counts()
    assert torch.equal(ds.train_counts(), torch.tensor([int(0.9 * n) for n in total.tolist()]))  # FedProx's 90/10
    assert ds.info["generator"]["alpha"] == 1.0 and ds.info["leaf_flags"]["tf"] == 0.9
    assert resolve_options(preset="learnable") == {"num_tasks": 30, "num_classes": 10, "tf": 0.9,
                                                   "generator": "fedprox", "alpha": 0.5, "beta": 0.5}
    assert PRESETS["learnable"]["generator"] == "fedprox"
    assert resolve_options(preset="learnable", alpha=2.0, num_tasks=8)["alpha"] == 2.0  # explicit options win
    assert resolve_options() == {"num_tasks": 1000, "num_classes": 5, "tf": 0.6, "generator": "leaf"}
    a = load_synthetic(preset="learnable", num_tasks=5)
    b = load_synthetic(generator="fedprox", alpha=0.5, beta=0.5, num_tasks=5)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_fedprox_alpha_and_beta_change_models_and_inputs():
    from qafl_core.data.synthetic import generate_fedprox_synthetic
    base = generate_fedprox_synthetic(3, alpha=0.0, beta=0.0, seed=1)
    wide = generate_fedprox_synthetic(3, alpha=0.0, beta=5.0, seed=1)
    assert base["num_samples"] == wide["num_samples"]
    # beta = 0: every client's feature means are N(0, 1); beta = 5 spreads them around N(0, 5)
    spread = [abs(np.mean(wide["user_data"][u]["x"])) for u in wide["users"]]
    assert max(spread) > 1.0 and all(abs(np.mean(base["user_data"][u]["x"])) < 1.0 for u in base["users"])


@pytest.mark.parametrize("kw, needle", [
    (dict(alpha=1.0), "alpha and beta are options of generator=fedprox"),
    (dict(generator="fedprox", alpha=-1.0), "alpha must be a finite number >= 0"),
    (dict(generator="gan"), "unknown generator 'gan'"),
    (dict(preset="easy"), "unknown preset 'easy'; known presets: learnable"),
    (dict(generator="fedprox", prob_clusters=(0.5, 0.5)), "prob_clusters is an option of LEAF's generator"),
])
def test_generator_option_errors(kw, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        load_synthetic(num_tasks=3, **kw)
