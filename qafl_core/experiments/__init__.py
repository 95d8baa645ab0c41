"""The paper's figures, one module each: its runs, its plot, its headline numbers (docs/experiments.md).

Each figure module (``fig1_peers`` ... ``theory_quadratic``, named like its notebook in ``notebooks/``) defines

* ``PARAMETERS`` — the notebook's parameters, the keys of ``notebooks/params/<name>.<profile>.yaml``;
* ``choices(params)`` — the data it uses (:class:`~qafl_core.experiments.common.DatasetChoice`);
* ``runs(params)`` — every run it needs (:class:`~qafl_core.experiments.common.Run`: label + config);
* ``plot(...)`` and ``headline(...)`` — its figure and the numbers ``<name>.metrics.json`` records.

Beside them: :mod:`~qafl_core.experiments.common` (data choice, run grids, running them),
:mod:`~qafl_core.experiments.analysis` (reductions of results tables, headline building blocks),
:mod:`~qafl_core.experiments.plotting` and :mod:`~qafl_core.experiments.manifest` (metrics files, MANIFEST.json).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Mapping

#: the figure modules, in the paper's order
FIGURES = ("fig1_peers", "fig2_bits", "fig3_averaging", "fig4_vs_fedavg", "fig5_vs_fedbuff",
           "tab1_time_to_accuracy", "theory_quadratic", "heterogeneity")


#: the modules beside the figure modules
HELPERS = ("common", "analysis", "plotting", "manifest", "estimate")


def figure(name: str) -> ModuleType | None:
    """The figure module of notebook ``name`` (``qafl_core.experiments.<name>``, with ``runs``), or None when the
    notebook has none (a user's own notebook)."""
    if name in HELPERS or not name.isidentifier():
        return None
    try:
        module = importlib.import_module(f"qafl_core.experiments.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"qafl_core.experiments.{name}":
            return None
        raise
    return module if hasattr(module, "runs") else None


def planned_choices(name: str, params: Mapping[str, Any]) -> list:
    """The data choices notebook ``name`` will make with ``params`` (its profile), known before it runs: its
    figure module's ``choices``; ``[]`` for a notebook without a figure module."""
    module = figure(name)
    return [] if module is None else module.choices(params)
