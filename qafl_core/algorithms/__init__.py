"""QuAFL and the baselines it is compared with, on one simulated clock.

:data:`ALGORITHMS` maps the ``algorithm`` config key to a :class:`~qafl_core.algorithms.base.Simulation`
subclass; add one with :func:`register_algorithm` (README "Extending the suite").  The built-in classes are
listed as ``"module:Class"`` and imported on first lookup: :mod:`qafl_core.config` validates names against
this table, and the algorithms themselves import the config, so the table must not import them eagerly.
"""
from __future__ import annotations

import importlib
from typing import Any

_PKG = "qafl_core.algorithms"


class _Table(dict):
    """name -> class; a ``"module:Class"`` value is imported on first lookup and replaced by the class."""

    def __getitem__(self, name: str) -> Any:
        value = super().__getitem__(name)
        if isinstance(value, str):
            module, attr = value.split(":")
            value = getattr(importlib.import_module(module), attr)
            super().__setitem__(name, value)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def values(self) -> list:  # type: ignore[override]
        return [self[k] for k in self]

    def items(self) -> list:  # type: ignore[override]
        return [(k, self[k]) for k in self]


#: ``algorithm`` config name -> Simulation class (built with ``cls(cfg, task, quantizer, clocks)``).
ALGORITHMS: dict[str, type] = _Table()
#: ``algorithm`` config name -> the name figures and tables print (``"quafl"`` -> ``"QuAFL"``).
LABELS: dict[str, str] = {}


def register_algorithm(name: str, cls: type | str, label: str | None = None) -> None:
    """Make ``name`` available to the ``algorithm`` config key (``qafl run --set algorithm=NAME``) and to the
    figures' variant specs (``"NAME identity"``, :func:`qafl_core.experiments.common.parse_variant`).

    ``cls`` is a :class:`~qafl_core.algorithms.base.Simulation` subclass (or ``"module:Class"``) whose ``step()``
    performs one server step and advances ``self.time``; everything it must keep across a checkpoint is a
    field of its ``State`` dataclass (:mod:`qafl_core.algorithms.state`).  ``label`` is the name figures print
    (default ``name``).
    """
    ALGORITHMS[name] = cls
    LABELS[name] = label if label is not None else name


register_algorithm("quafl", f"{_PKG}.quafl:QuAFL", "QuAFL")
register_algorithm("fedavg", f"{_PKG}.fedavg:FedAvg", "FedAvg")
register_algorithm("fedbuff", f"{_PKG}.fedbuff:FedBuff", "FedBuff")
register_algorithm("fedasync", f"{_PKG}.fedasync:FedAsync", "FedAsync")
register_algorithm("qafel", f"{_PKG}.qafel:QAFeL", "QAFeL")

_EXPORTS = {"Simulation": f"{_PKG}.base:Simulation", "QuAFL": f"{_PKG}.quafl:QuAFL", "FedAvg": f"{_PKG}.fedavg:FedAvg",
            "FedBuff": f"{_PKG}.fedbuff:FedBuff", "FedAsync": f"{_PKG}.fedasync:FedAsync", "QAFeL": f"{_PKG}.qafel:QAFeL"}


def __getattr__(name: str) -> Any:
    """``from qafl_core.algorithms import QuAFL`` (and the other classes) without importing them eagerly."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name].split(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["ALGORITHMS", "LABELS", "register_algorithm", *_EXPORTS]
