"""MNIST, Fashion-MNIST and CIFAR-10 split into i.i.d. equal shards, as in the QuAFL code.

The paper's code (Zakerinia et al., AISTATS 2024; ``dataset_manager.py``; docs/data.md#fashion-mnist-mnist-and-cifar-10) gives each
of the ``n`` clients a ``DistributedSampler(num_replicas=n, rank=i, shuffle=True)`` shard: a seeded random
permutation of the training set cut into ``n`` equal, disjoint parts.  Here:

* train: a permutation from the named stream ``(seed, "vision", name, "train")`` is cut into ``n``
  contiguous shards of ``N // n`` samples; the ``N mod n`` (< n) left-over samples are dropped (the
  sampler instead pads by repeating samples, which would make shards overlap);
* test: the standard test set, shuffled by its own stream and dealt into ``n`` near-equal shards (sizes
  differ by at most one) so that **no test sample is dropped**: the union of the client test sets is the
  whole standard test set, i.e. pooled evaluation equals the paper's server-side evaluation;
* ``validation=V > 0`` (the paper's MNIST setting, 50k/10k): ``V`` random training samples are held out
  and used as the evaluation set instead of the standard test set (recorded in ``info``).

Inputs are float32 in [0, 1] (uint8 / 255), ``(N, 1, 28, 28)`` or ``(N, 3, 32, 32)``; per-channel
normalisation and augmentation (CIFAR-10) belong to the training side.  Files are read locally only
(idx for (Fashion-)MNIST, plain or gzip; CIFAR-10 python pickle batches); nothing is ever downloaded.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from qafl_core.data.federated import FederatedDataset
from qafl_core.rng import numpy_generator
from qafl_core.store import load_array_pickle

VISION = ("mnist", "fmnist", "cifar10")
NUM_CLASSES = 10
#: largest idx file read after decompression (MNIST's training images are 47 MB); a gzip bomb is refused
_MAX_IDX_BYTES = 2 ** 30
_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_WHERE = {"mnist": "MNIST idx files (yann.lecun.com/exdb/mnist or torchvision's MNIST/raw)",
          "fmnist": "Fashion-MNIST idx files (Debian package dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist)",
          "cifar10": "CIFAR-10 python batches (cifar-10-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html, extracted)"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (plain or ``.gz``) of unsigned bytes into an array of its stated shape."""
    from qafl_core.limits import read_bytes_bounded

    p = Path(path)
    # bounded: a gzip bomb is refused before it fills the memory
    raw = read_bytes_bounded(p, max(_MAX_IDX_BYTES, p.stat().st_size), "MNIST-sized idx files are far smaller")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{p}: not an unsigned-byte idx file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{p}: idx header truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)):
        raise ValueError(f"{p}: header says shape {shape} ({int(np.prod(shape))} bytes) but the file holds {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _find(root: Path, stem: str, name: str) -> Path:
    for d in (root, root / "raw", root / "MNIST" / "raw", root / "FashionMNIST" / "raw"):
        for f in (d / stem, d / (stem + ".gz")):
            if f.is_file():
                return f
    raise FileNotFoundError(f"{name}: missing {root / stem}(.gz); put the {_WHERE[name]} in {root} "
                            f"or pass --root DIR")


def _load_idx(root: Path, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, (img, lab) in _IDX.items():
        fi, fl = _find(root, img, name), _find(root, lab, name)
        x, y = read_idx(fi), read_idx(fl)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{name}: {fi} ({x.shape}) and {fl} ({y.shape}) are not N×28×28 images with N labels")
        _check_labels(y, fl)
        out[split] = (x[:, None, :, :], y)
    return out


def _load_cifar(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    d = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    out = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        xs, ys = [], []
        for n in names:
            f = d / n
            if not f.is_file():
                raise FileNotFoundError(f"cifar10: missing {f}; put the {_WHERE['cifar10']} in {root} or pass --root DIR")
            try:
                with open(f, "rb") as fh:
                    batch = load_array_pickle(fh)  # the official format is a pickle: numpy arrays only, no other imports
                x = np.asarray(batch[b"data"], dtype=np.uint8)
                y = np.asarray(batch[b"labels"])
                if y.dtype.kind not in "iu":  # a float label would be truncated by the cast
                    raise ValueError(f"labels must be integers, got dtype {y.dtype}")
                y = y.astype(np.int64)
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"cifar10: {f} is not a CIFAR-10 python batch (dict with b'data', b'labels'): {exc!r}") from None
            if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
                raise ValueError(f"cifar10: {f}: data has shape {x.shape} for {len(y)} labels, expected (N, 3072)")
            _check_labels(y, f)
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(y)
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


def _check_labels(y: np.ndarray, path: Path) -> None:
    """Labels outside 0..9 are a data error naming the file (and the first bad sample)."""
    bad = np.flatnonzero((y < 0) | (y >= NUM_CLASSES))
    if bad.size:
        raise ValueError(f"{path}: label {int(y[bad[0]])} of sample {int(bad[0])} is not in 0..{NUM_CLASSES - 1}")


def _default_root(name: str) -> Path:
    from qafl_core.data.registry import default_data_root  # lazy: registry imports this module
    r = default_data_root(name)
    if r is None:
        raise FileNotFoundError(f"{name}: no data root; pass --root DIR or set QAFL_DATA_DIR "
                                f"(expects $QAFL_DATA_DIR/{name}/ with the {_WHERE[name]})")
    return Path(r)


def load_vision(name: str, root: str | None = None, num_clients: int = 10, seed: int = 0,
                validation: int = 0) -> FederatedDataset:
    """i.i.d. equal shards of MNIST / Fashion-MNIST / CIFAR-10 (see module docstring).

    Args:
        name: ``"mnist"``, ``"fmnist"`` or ``"cifar10"``.
        root: directory with the files; None -> :func:`qafl_core.data.registry.default_data_root`.
        num_clients: number of shards (clients).
        seed: root seed of the shuffles (named streams of :mod:`qafl_core.rng`).
        validation: hold out this many random training samples as the evaluation set (0: standard test set).
    """
    if name not in VISION:
        raise ValueError(f"unknown vision dataset {name!r}; known: {', '.join(VISION)}")
    r = Path(root) if root is not None else _default_root(name)
    if not r.is_dir():
        raise FileNotFoundError(f"{name}: data directory {r} not found; put the {_WHERE[name]} there or pass --root DIR")
    data = _load_cifar(r) if name == "cifar10" else _load_idx(r, name)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    n_clients, validation = int(num_clients), int(validation)
    if n_clients < 1:
        raise ValueError(f"{name}: num_clients must be >= 1, got {num_clients}")
    if not 0 <= validation < len(ytr):
        raise ValueError(f"{name}: validation must be in [0, {len(ytr)}), got {validation}")

    perm = numpy_generator(seed, "vision", name, "train").permutation(len(ytr))
    info = {"source": str(r), "partition": "iid equal shards (seeded permutation)", "seed": int(seed),
            "pixel_scaling": "uint8/255 -> [0,1], no normalisation"}
    if validation:
        ev_idx, perm = np.sort(perm[:validation]), perm[validation:]
        xte, yte = xtr[ev_idx], ytr[ev_idx]
        info["evaluation_set"] = f"{validation} samples held out from train (standard test set unused)"
    else:
        info["evaluation_set"] = "standard test set, dealt into near-equal client shards"
    per = len(perm) // n_clients
    if per == 0:
        raise ValueError(f"{name}: {len(perm)} training samples cannot fill {n_clients} shards")
    info["train_remainder_dropped"] = len(perm) - per * n_clients
    te_perm = numpy_generator(seed, "vision", name, "test").permutation(len(yte))
    te_parts = np.array_split(te_perm, n_clients)

    def tensors(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x[idx].astype(np.float32) / 255.0), torch.from_numpy(y[idx].astype(np.int64))

    train = [tensors(xtr, ytr, perm[i * per:(i + 1) * per]) for i in range(n_clients)]
    test = [tensors(xte, yte, te_parts[i]) for i in range(n_clients)]
    return FederatedDataset.from_clients(name, [str(i) for i in range(n_clients)], train, test, NUM_CLASSES, None, info)
