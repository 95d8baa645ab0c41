"""i.i.d. vision shards (MNIST / Fashion-MNIST / CIFAR-10) on small files written in the real formats."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from qafl_core.data.vision import load_vision, read_idx

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_mnist(root: Path, n_train: int = 23, n_test: int = 7, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, size=(n_train + n_test, 28, 28), dtype=np.uint8)
    xs[:, 0, 0] = np.arange(n_train + n_test)  # a per-image id in the first pixel
    ys = (np.arange(n_train + n_test) % 10).astype(np.uint8)
    sfx = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{sfx}", xs[:n_train], gz)
    write_idx(root / f"train-labels-idx1-ubyte{sfx}", ys[:n_train], gz)
    write_idx(root / f"t10k-images-idx3-ubyte{sfx}", xs[n_train:], gz)
    write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", ys[n_train:], gz)
    return xs, ys


def ids(x: torch.Tensor) -> list[int]:
    return torch.round(x[:, 0, 0, 0] * 255).long().tolist()


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_equal_disjoint_shards(tmp_path, gz):
    xs, ys = make_mnist(tmp_path, gz=gz)
    ds = load_vision("mnist", str(tmp_path), num_clients=4, seed=3)
    assert ds.train_counts().tolist() == [5, 5, 5, 5] and ds.info["train_remainder_dropped"] == 3
    assert sorted(ds.test_counts().tolist()) == [1, 2, 2, 2]  # the whole test set is kept
    train_ids = ids(ds.x_train)
    assert len(set(train_ids)) == 20 and set(train_ids) <= set(range(23))
    assert sorted(ids(ds.x_test)) == list(range(23, 30))
    assert ds.x_train.dtype == torch.float32 and ds.x_train.shape == (20, 1, 28, 28)
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
    i = train_ids[0]
    assert torch.allclose(ds.x_train[0, 0], torch.from_numpy(xs[i].astype(np.float32) / 255))
    assert ds.y_train.tolist() == [int(ys[j]) for j in train_ids]
    again = load_vision("mnist", str(tmp_path), num_clients=4, seed=3)
    assert torch.equal(again.x_train, ds.x_train)
    assert ids(load_vision("mnist", str(tmp_path), num_clients=4, seed=4).x_train) != train_ids


def test_validation_holds_out_train_samples(tmp_path):
    make_mnist(tmp_path)
    ds = load_vision("mnist", str(tmp_path), num_clients=3, seed=0, validation=5)
    assert len(ds.y_test) == 5 and set(ids(ds.x_test)) <= set(range(23))
    assert set(ids(ds.x_test)).isdisjoint(ids(ds.x_train)) and ds.train_counts().tolist() == [6, 6, 6]
    with pytest.raises(ValueError, match="validation"):
        load_vision("mnist", str(tmp_path), num_clients=3, seed=0, validation=23)


def test_cifar_pickle_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        batches[name] = data
        with open(d / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": list(rng.integers(0, 10, 4))}, fh)
    ds = load_vision("cifar10", str(tmp_path), num_clients=2, seed=0)
    assert ds.x_train.shape == (20, 3, 32, 32) and len(ds.y_test) == 4
    # row layout of a batch: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    first = batches["test_batch"]
    flat = (ds.x_test * 255).round().to(torch.uint8).reshape(4, 3072).numpy()
    assert sorted(map(bytes, flat)) == sorted(map(bytes, first))


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_vision("mnist", str(tmp_path), num_clients=2, seed=0)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_vision("cifar10", str(tmp_path), num_clients=2, seed=0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_vision("fmnist", str(tmp_path / "nowhere"), num_clients=2, seed=0)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="bad.idx.*magic"):
        read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01\x02")
    with pytest.raises(ValueError, match="short.idx.*holds 2"):
        read_idx(short)
    make_mnist(tmp_path / "m")
    with pytest.raises(ValueError, match="num_clients"):
        load_vision("mnist", str(tmp_path / "m"), num_clients=0, seed=0)
    with pytest.raises(ValueError, match="cannot fill"):
        load_vision("mnist", str(tmp_path / "m"), num_clients=50, seed=0)
    with pytest.raises(ValueError, match="known"):
        load_vision("svhn", str(tmp_path), num_clients=2, seed=0)


@pytest.mark.skipif(not FMNIST_DEBIAN.is_dir(), reason="needs Debian package dataset-fashion-mnist")
def test_real_fashion_mnist():
    ds = load_vision("fmnist", None, num_clients=20, seed=0)
    assert ds.train_counts().tolist() == [3000] * 20 and len(ds.y_test) == 10000
    assert ds.x_train.shape[1:] == (1, 28, 28) and int(torch.unique(ds.y_test).numel()) == 10
