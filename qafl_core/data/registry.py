"""The one dataset table: per dataset its loader, default model, label, availability check and default partition.

LEAF datasets (FEMNIST, Shakespeare, CelebA, Synthetic; Caldas et al., "LEAF: A Benchmark for Federated
Settings", 2018, arXiv:1812.01097) keep LEAF's natural per-user partition; MNIST / Fashion-MNIST / CIFAR-10 are
split i.i.d. as in the QuAFL code (``dataset_manager.py``; docs/data.md#fashion-mnist-mnist-and-cifar-10).  A
run's ``partition`` (:mod:`qafl_core.data.partition`) can re-deal either.  ``quadratic`` is the generated test
problem of the theory notebook (:mod:`qafl_core.theory`): it has no samples and no loader.

Built-in loaders are named ``"module:function"`` and imported on first use, so that a missing optional
dependency of one dataset never breaks the others.  Add a dataset with :func:`register_dataset`; the
``dataset`` config key, ``model: auto`` (:func:`qafl_core.models.default_model`), ``qafl data describe`` and
the figures' titles all read this table.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Callable, Mapping

from qafl_core import environment
from qafl_core.data.federated import FederatedDataset

#: An availability check: ``(name, options) -> (available, reason when not)``.
Availability = Callable[[Mapping[str, Any]], "tuple[bool, str]"]

#: name -> entry: ``loader`` ("module:function", a callable, or None for generated problems), ``model`` (default
#: model name), ``label`` (for titles), ``description`` (one line), ``subdir`` (under ``$QAFL_DATA_DIR``),
#: ``embedded`` (ships with the package: no data directory needed), ``available`` (an :data:`Availability`, or
#: None for the default check), ``partition`` (the dataset's own: ``natural``, ``iid``, or None: no samples).
DATASETS: dict[str, dict[str, Any]] = {}

_DEFAULTS: dict[str, Any] = {"loader": None, "model": None, "label": None, "description": "", "subdir": None,
                             "embedded": False, "available": None, "partition": "natural"}
_FMNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"


def register_dataset(name: str, loader: str | Callable[..., FederatedDataset] | None, default_model: str | None = None,
                     label: str | None = None, available: Availability | None = None, *, description: str = "",
                     subdir: str | None = None, embedded: bool = False, partition: str | None = "natural") -> None:
    """Make ``name`` available to the ``dataset`` config key, ``model: auto`` and ``qafl data describe``.

    Args:
        name: the config name.
        loader: ``loader(root=None, **options) -> FederatedDataset`` (or ``"module:function"``, imported on use);
            its keyword arguments are the dataset's ``dataset_options``.
        default_model: the model ``model: auto`` trains (a :data:`qafl_core.models.MODELS` name).
        label: human-readable name for titles (default: ``name``).
        available: ``(name, options) -> (ok, reason)``; default: loadable when ``embedded`` or generated (no
            ``subdir``), else when ``$QAFL_DATA_DIR/<subdir>`` holds files.
        description: one line for ``qafl data describe``.
        subdir: folder under ``$QAFL_DATA_DIR`` that is the loader's default ``root`` (None: generated data).
        embedded: the data ships with the package (figures use it as a fallback).
        partition: the dataset's own partition: ``natural`` (per-user, as loaded) or ``iid`` (one shard re-dealt).
    """
    DATASETS[name] = {"loader": loader, "model": default_model, "label": label or name, "description": description,
                      "subdir": subdir, "embedded": embedded, "available": available, "partition": partition}


def _entry(name: str) -> dict[str, Any]:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return {**_DEFAULTS, "label": name, **DATASETS[name]}


def label(name: str) -> str:
    """The human-readable name of a dataset (its own name when unknown), e.g. ``"Fashion-MNIST"``."""
    return _entry(name)["label"] if name in DATASETS else name


def default_data_root(name: str) -> str | None:
    """Where ``name`` is looked for when no root is given: ``$QAFL_DATA_DIR/<name>`` (for Fashion-MNIST
    the Debian package directory when that does not exist); None when nothing applies."""
    entry = _entry(name)
    base = environment.data_dir()
    cand = str(Path(base) / entry["subdir"]) if base and entry["subdir"] else None
    if name == "fmnist" and (cand is None or not Path(cand).is_dir()):
        return _FMNIST_DEBIAN
    return cand


def _loader(name: str) -> Callable[..., FederatedDataset]:
    ref = _entry(name)["loader"]
    if ref is None:
        raise ValueError(f"{name}: is a generated problem without samples (the runner builds it); nothing to load")
    if callable(ref):
        return ref
    module, func = ref.split(":")
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
    if "name" in params:  # one loader for several datasets (the vision ones)
        return fn(name, root, **options)
    if _entry(name)["subdir"] is None and "root" not in params:
        if root is not None:
            raise ValueError(f"{name}: is generated, it takes no root (use the cache_dir option to cache it)")
        return fn(**options)
    return fn(root=root, **options)


# ---------------------------------------------------------------------- availability
def data_available(name: str, options: Mapping[str, Any] | None = None) -> tuple[bool, str]:
    """Whether ``name`` can be loaded here without a download, and if not, why (one sentence)."""
    if name not in DATASETS:
        return False, f"unknown dataset {name!r}"
    entry = _entry(name)
    if entry["embedded"]:
        return True, ""
    if isinstance(entry["loader"], str):
        module = entry["loader"].split(":")[0]
        try:
            importlib.import_module(module)
        except ImportError:
            return False, f"this version has no {entry['label']} loader ({module})"
    check = entry["available"] or _files_under_data_dir
    return check(name, dict(options or {}))


def _files_under_data_dir(name: str, options: Mapping[str, Any]) -> tuple[bool, str]:
    if _entry(name)["subdir"] is None:  # generated: nothing to find
        return True, ""
    if not environment.data_dir():
        return False, f"QAFL_DATA_DIR is not set, so there is no {label(name)} data"
    root = Path(default_data_root(name))
    ok = root.is_dir() and any(root.iterdir())
    return ok, ("" if ok else f"no {label(name)} data under {root}")


def _femnist_available(name: str, options: Mapping[str, Any]) -> tuple[bool, str]:
    if not environment.data_dir():
        return False, f"QAFL_DATA_DIR is not set, so there is no {label(name)} data"
    root = Path(default_data_root(name))
    if options.get("merge"):
        ok = root.is_dir() and any((d / "train").is_dir() and (d / "test").is_dir() for d in root.iterdir())
    else:
        from qafl_core.data.femnist import DEFAULT_SAMPLE

        ok = (root / DEFAULT_SAMPLE / "train").is_dir() and (root / DEFAULT_SAMPLE / "test").is_dir()
    return ok, ("" if ok else f"no {label(name)} data under {root}")


def _fmnist_available(name: str, options: Mapping[str, Any]) -> tuple[bool, str]:
    root = default_data_root(name)
    return (root is not None and Path(root).is_dir()), f"no Fashion-MNIST files at {root}"


# ---------------------------------------------------------------------- the built-in datasets
register_dataset("femnist", "qafl_core.data.femnist:load_femnist", "femnist_cnn", "FEMNIST", _femnist_available,
                 subdir="femnist", description="LEAF FEMNIST: 62-class handwritten characters, one client per writer "
                                               "(28x28, 1.0 = background)")
register_dataset("shakespeare", "qafl_core.data.shakespeare:load_shakespeare", "shakespeare_lstm", "Shakespeare",
                 subdir="shakespeare", embedded=True,
                 description="LEAF Shakespeare: next-character prediction (80 symbols), one client per (play, role)")
register_dataset("celeba", "qafl_core.data.celeba:load_celeba", "celeba_cnn", "CelebA", subdir="celeba",
                 description="LEAF CelebA: smiling / not smiling, one client per celebrity (84x84 RGB)")
register_dataset("synthetic", "qafl_core.data.synthetic:load_synthetic", "logreg", "LEAF Synthetic", embedded=True,
                 description="LEAF Synthetic: generated 5-class, 60-dim logistic data, 1000 users (no files needed; "
                             "generator=fedprox: FedProx Synthetic(alpha, beta); preset=learnable)")
register_dataset("mnist", "qafl_core.data.vision:load_vision", "mlp", "MNIST", subdir="mnist", partition="iid",
                 description="MNIST digits, i.i.d. equal shards over num_clients (or partition: dirichlet; paper code; "
                             "MLP 784-32-10)")
register_dataset("fmnist", "qafl_core.data.vision:load_vision", "fmnist_cnn", "Fashion-MNIST", _fmnist_available,
                 subdir="fmnist", partition="iid",
                 description="Fashion-MNIST, i.i.d. equal shards over num_clients (or partition: dirichlet; paper code; "
                             "2-conv CNN)")
register_dataset("cifar10", "qafl_core.data.vision:load_vision", "resnet20", "CIFAR-10", subdir="cifar10",
                 partition="iid", description="CIFAR-10, i.i.d. equal shards over num_clients (or partition: "
                                              "dirichlet; paper code; ResNet-20)")
register_dataset("quadratic", None, None, "heterogeneous quadratics", embedded=True, partition=None,
                 description="generated heterogeneous quadratics f_i(x) = |x - c_i|^2 / 2 (theory notebook; "
                             "qafl_core.theory), no samples")

#: Derived views, for callers that want one fact about every dataset.
EMBEDDED = tuple(n for n, e in DATASETS.items() if e["embedded"])
PRETTY = {n: e["label"] for n, e in DATASETS.items()}
