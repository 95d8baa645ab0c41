"""The simulation state, declared: what a simulation carries from one server step to the next, and so what a
checkpoint holds.

:class:`SimulationState` is what every simulation has (the server model, the clock, the counters, and the states
of the client-sampling stream, of the client clocks and of the task); an algorithm declares its own fields in a
subclass and names it as its ``State`` (``QuAFL.State = QuAFLState``: client models, decoding bases, client
clocks).  A checkpoint *is* that state: :meth:`SimulationState.to_plain` gives it as tensors and plain
containers only (``torch.load(..., weights_only=True)`` reads it back, :func:`qafl_core.store.check_plain` accepts
it), and :meth:`SimulationState.from_plain` rebuilds it, refusing a missing or unknown field.

Each field names the simulation attribute it comes from.  A plain field is the attribute's value itself (tensors
are not copied: the checkpoint write serialises them at once).  A field made with :func:`held` is the state of
the object held in that attribute: a ``torch.Generator``'s ``get_state()``, or the object's ``state_dict()``;
restoring calls ``set_state`` / ``load_state_dict``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch

_HELD = "held"


def held(doc: str) -> Any:
    """A field holding the state of the simulation's object of the same name (``doc`` says which object)."""
    return dataclasses.field(metadata={_HELD: True, "doc": doc})


@dataclass
class SimulationState:
    """What every simulation carries (:class:`qafl_core.algorithms.base.Simulation`).

    Attributes:
        server: the server model (flat vector, parameters then buffers).
        time: the simulated clock.
        server_steps / local_steps: the step counters of the results table.
        bits_up / bits_down / decode_failures / failed_messages: the channel's counters
            (:class:`qafl_core.channel.Channel`).
        contacts / zero_step_contacts / steps_by_class: per speed class (``slow``, ``fast``): server contacts,
            contacts with no completed local step, local steps.
        sampler: state of the client-sampling stream.
        clocks: state of the client step-time streams (:class:`qafl_core.timing.ClientClocks`).
        task: state of the task (mini-batch streams, dropout stream, per-client optimizer state).
    """

    server: torch.Tensor
    time: float
    server_steps: int
    local_steps: int
    bits_up: int
    bits_down: int
    decode_failures: int
    failed_messages: int
    contacts: dict[str, int]
    zero_step_contacts: dict[str, int]
    steps_by_class: dict[str, int]
    sampler: torch.Tensor = held("the client-sampling generator")
    clocks: dict[str, Any] = held("the client clocks")
    task: dict[str, Any] = held("the task")

    @classmethod
    def of(cls, sim) -> "SimulationState":
        """The state of ``sim`` now (its tensors are the live ones, not copies)."""
        values = {}
        for f in dataclasses.fields(cls):
            value = getattr(sim, f.name)
            if f.metadata.get(_HELD):
                value = value.get_state() if isinstance(value, torch.Generator) else value.state_dict()
            values[f.name] = value
        return cls(**values)

    def restore(self, sim) -> None:
        """Set ``sim`` to this state; float tensors go to ``sim.device`` (checkpoints are read onto the CPU)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get(_HELD):
                target = getattr(sim, f.name)
                if isinstance(target, torch.Generator):
                    target.set_state(value)
                else:
                    target.load_state_dict(value)
            else:
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    value = value.to(sim.device)
                setattr(sim, f.name, value)

    def to_plain(self) -> dict[str, Any]:
        """``{field: value}``: tensors and plain containers only (what a checkpoint stores)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_plain(cls, state: Mapping[str, Any]) -> "SimulationState":
        """The state stored by :meth:`to_plain`.

        Raises:
            ValueError: ``state`` is not a mapping, or lacks a field of ``cls`` or has one ``cls`` does not
                declare (the state of another algorithm), naming them.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"simulation state: expected a mapping of {cls.__name__} fields, got {type(state).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in names if k not in state]
        unknown = sorted(str(k) for k in state if k not in names)
        if missing or unknown:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])
            raise ValueError(f"simulation state: does not match {cls.__name__} ({'; '.join(parts)})")
        return cls(**{k: state[k] for k in names})


@dataclass
class ClientModelsState(SimulationState):
    """A simulation that keeps every client's model (FedAvg's, or the asynchronous algorithms').

    Attributes:
        clients: (n, d) client models; FedAvg keeps none (None) when its quantizer needs no decoding key.
    """

    clients: torch.Tensor | None


@dataclass
class AsyncState(ClientModelsState):
    """FedBuff, FedAsync (:class:`qafl_core.algorithms.asynchronous.AsyncSimulation`).

    Attributes:
        jobs: the running client jobs, each client's start version, the idle clients, the client-start stream.
    """

    jobs: dict[str, Any] = held("the client jobs")


@dataclass
class QAFeLState(AsyncState):
    """QAFeL (:class:`qafl_core.algorithms.qafel.QAFeL`).

    Attributes:
        hidden: the hidden state x_hat shared by the server and every client.
        broadcast_bits: bits of the quantized broadcasts (each sent once to every client).
    """

    hidden: torch.Tensor
    broadcast_bits: int


@dataclass
class QuAFLState(ClientModelsState):
    """QuAFL (:class:`qafl_core.algorithms.quafl.QuAFL`).

    Attributes:
        base: each client's decoding base (``client_decode_key: base``), else None.
        client_time: the time up to which each client's local progress has been accounted.
        next_duration: each client's in-flight step duration.
        speed_state: the running speed estimates of ``speed_correction: lr | normalized``
            (:mod:`qafl_core.speed`), else None.
    """

    base: torch.Tensor | None
    client_time: list[float]
    next_duration: list[float]
    speed_state: dict[str, Any] | None
