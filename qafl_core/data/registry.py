"""Dataset registry: one entry point ``load_dataset(name, root, **options)`` for every dataset.

LEAF datasets (FEMNIST, Shakespeare, CelebA, Synthetic; Caldas et al., 2018) keep LEAF's natural
per-user partition; MNIST / Fashion-MNIST / CIFAR-10 are split i.i.d. as in the QuAFL code
(``dataset_manager.py``; docs/data.md#fashion-mnist-mnist-and-cifar-10).  A run's ``partition`` (:mod:`qafl_core.data.partition`) can re-deal either.
Loaders are imported lazily so that a missing optional dependency of one dataset never breaks the others.
"""
from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any, Callable

from qafl_core.data.federated import FederatedDataset

#: name -> default model, one-line description, loader ("module:function"), data sub-directory.
DATASETS: dict[str, dict[str, Any]] = {
    "femnist": {"model": "femnist_cnn", "loader": "qafl_core.data.femnist:load_femnist", "subdir": "femnist",
                "description": "LEAF FEMNIST: 62-class handwritten characters, one client per writer (28x28, 1.0 = background)"},
    "shakespeare": {"model": "shakespeare_lstm", "loader": "qafl_core.data.shakespeare:load_shakespeare",
                    "subdir": "shakespeare",
                    "description": "LEAF Shakespeare: next-character prediction (80 symbols), one client per (play, role)"},
    "celeba": {"model": "celeba_cnn", "loader": "qafl_core.data.celeba:load_celeba", "subdir": "celeba",
               "description": "LEAF CelebA: smiling / not smiling, one client per celebrity (84x84 RGB)"},
    "synthetic": {"model": "logreg", "loader": "qafl_core.data.synthetic:load_synthetic", "subdir": None,
                  "description": "LEAF Synthetic: generated 5-class, 60-dim logistic data, 1000 users (no files needed; "
                                 "generator=fedprox: FedProx Synthetic(alpha, beta); preset=learnable)"},
    "mnist": {"model": "mlp", "loader": "qafl_core.data.vision:load_vision", "subdir": "mnist",
              "description": "MNIST digits, i.i.d. equal shards over num_clients (or partition: dirichlet; paper code; MLP 784-32-10)"},
    "fmnist": {"model": "fmnist_cnn", "loader": "qafl_core.data.vision:load_vision", "subdir": "fmnist",
               "description": "Fashion-MNIST, i.i.d. equal shards over num_clients (or partition: dirichlet; paper code; 2-conv CNN)"},
    "cifar10": {"model": "resnet20", "loader": "qafl_core.data.vision:load_vision", "subdir": "cifar10",
                "description": "CIFAR-10, i.i.d. equal shards over num_clients (or partition: dirichlet; paper code; ResNet-20)"},
}

_FMNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"


def default_data_root(name: str) -> str | None:
    """Where ``name`` is looked for when no root is given: ``$QAFL_DATA_DIR/<name>`` (for Fashion-MNIST
    the Debian package directory when that does not exist); None when nothing applies."""
    entry = _entry(name)
    base = os.environ.get("QAFL_DATA_DIR")
    cand = str(Path(base) / entry["subdir"]) if base and entry["subdir"] else None
    if name == "fmnist" and (cand is None or not Path(cand).is_dir()):
        return _FMNIST_DEBIAN
    return cand


def _entry(name: str) -> dict[str, Any]:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def _loader(name: str) -> Callable[..., FederatedDataset]:
    module, func = _entry(name)["loader"].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:  # a missing dependency inside the loader is a real error
            raise
        raise ValueError(f"{name}: its loader {module} is not available in this installation") from None
    if not hasattr(mod, func):
        raise ValueError(f"{name}: {module} has no loader function {func!r}")
    return getattr(mod, func)


def dataset_options(name: str) -> list[str]:
    """Keyword options ``load_dataset(name, ...)`` accepts (besides ``root``)."""
    params = inspect.signature(_loader(name)).parameters
    return [p for p in params if p not in ("root", "name") and params[p].kind is not inspect.Parameter.VAR_KEYWORD]


def load_dataset(name: str, root: str | None = None, **options: Any) -> FederatedDataset:
    """Load dataset ``name`` (see :data:`DATASETS`) from ``root`` with loader-specific ``options``.

    Raises:
        ValueError: unknown dataset name or unknown option (the message lists the valid ones).
        FileNotFoundError: data missing (the message says where to put it).
    """
    fn = _loader(name)
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        valid = dataset_options(name)
        for key in options:
            if key not in valid:
                raise ValueError(f"{name}: unknown option {key!r}; valid options: {', '.join(valid) or '(none)'}")
    if name in ("mnist", "fmnist", "cifar10"):
        return fn(name, root, **options)
    if name == "synthetic":
        if root is not None:
            raise ValueError("synthetic: is generated, it takes no root (use the cache_dir option to cache it)")
        return fn(**options)
    return fn(root=root, **options)
