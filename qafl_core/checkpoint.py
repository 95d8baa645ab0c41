"""``checkpoint.pt``: a run's state between two server steps, written atomically and read back verified.

A :class:`Checkpoint` is the identity of the run it belongs to (:mod:`qafl_core.fingerprint`), the simulation
state (the algorithm's ``State`` dataclass, :mod:`qafl_core.algorithms.state`), the results rows recorded so far
and the times of the next evaluation and of the next checkpoint: everything :func:`qafl_core.runner.run` needs
to continue bit for bit.  On disk it is :meth:`Checkpoint.to_plain`, tensors and plain containers only, written
by :func:`qafl_core.store.atomic_save_tensors` (which refuses anything else) and read with pickle disabled
(:func:`qafl_core.store.load_tensors`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qafl_core import store
from qafl_core.algorithms.state import SimulationState

#: the file name in a run's output directory (or run-cache entry)
FILE = "checkpoint.pt"
#: the on-disk layout; 3: the simulation state is the fields of its ``State`` dataclass (QuAFL's ``speed_state``
#: is always there, None without a realised-progress speed correction)
VERSION = 3


@dataclass
class Checkpoint:
    """A run, resumable.

    Attributes:
        identity / config_hash / data_fingerprint / code_fingerprint: the run it belongs to
            (:class:`qafl_core.fingerprint.Identity`).
        algorithm: the ``algorithm`` config key.
        sim: the simulation state.
        rows: the results table's rows so far (dicts of :data:`qafl_core.runner.COLUMNS`).
        next_eval / next_ckpt: simulated times of the next evaluation and of the next checkpoint.
    """

    identity: str
    config_hash: str
    data_fingerprint: str
    code_fingerprint: str
    algorithm: str
    sim: SimulationState
    rows: list[dict[str, Any]]
    next_eval: float
    next_ckpt: float

    def to_plain(self) -> dict[str, Any]:
        """What ``checkpoint.pt`` holds: ``version`` and every field, ``sim`` as its plain dict."""
        return {"version": VERSION, "identity": self.identity, "config_hash": self.config_hash,
                "data_fingerprint": self.data_fingerprint, "code_fingerprint": self.code_fingerprint,
                "algorithm": self.algorithm, "sim": self.sim.to_plain(), "rows": self.rows,
                "next_eval": self.next_eval, "next_ckpt": self.next_ckpt}


def save(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (the previous file stays whole until the new one is)."""
    store.atomic_save_tensors(Path(path), checkpoint.to_plain())


def load(path: str | Path, ident, state_class: type[SimulationState]) -> Checkpoint:
    """The checkpoint at ``path``, checked to belong to the run ``ident`` and to hold a ``state_class``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming the file: corrupt, not a checkpoint of this version, one that would run code on
            loading (``refused``), written for another config, other data or other code, or holding another
            algorithm's state.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from (run with --checkpoint-every first)")
    state = store.load_tensors(path, "checkpoint")
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ValueError(f"{path}: not a checkpoint of this version of the suite")
    other = []
    if state.get("config_hash") != ident.config_hash:
        other.append(f"config {state.get('config_hash')}, not for this config {ident.config_hash}")
    if state.get("data_fingerprint") != ident.data_fingerprint:
        other.append(f"other data (data fingerprint {str(state.get('data_fingerprint'))[:16]}, this run's "
                     f"{ident.data_fingerprint[:16]}: another data_root or changed data files)")
    if state.get("code_fingerprint") != ident.code_fingerprint:
        other.append(f"other code (code fingerprint {str(state.get('code_fingerprint'))[:16]}, this code's "
                     f"{ident.code_fingerprint[:16]})")
    if other:
        raise ValueError(f"{path}: checkpoint was written for {'; and for '.join(other)}; use the same config, "
                         f"data and code, or another output directory")
    try:
        sim = state_class.from_plain(state.get("sim"))
        return Checkpoint(state["identity"], state["config_hash"], state["data_fingerprint"], state["code_fingerprint"],
                          state["algorithm"], sim, list(state["rows"]), state["next_eval"], state["next_ckpt"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a checkpoint of this version of the suite ({exc})") from None
