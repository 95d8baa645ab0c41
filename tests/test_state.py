"""The simulation state (qafl_core/algorithms/state.py): every algorithm declares what it carries as a dataclass,
and its checkpoint is exactly that dataclass's fields."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from qafl_core.algorithms import ALGORITHMS
from qafl_core.algorithms.state import AsyncState, QAFeLState, QuAFLState, SimulationState
from qafl_core.config import RunConfig
from qafl_core.runner import build_simulation

QUAD = dict(dataset="quadratic", num_clients=6, clients_per_round=2, sit=0.5, lr=0.05, progress=False, time_limit=1e9)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_the_checkpoint_is_the_declared_state(algorithm):
    sim = build_simulation(RunConfig(**QUAD, algorithm=algorithm))
    for _ in range(3):
        sim.step()
    state = sim.state()
    assert isinstance(state, sim.State) and issubclass(sim.State, SimulationState)
    names = [f.name for f in dataclasses.fields(sim.State)]
    assert list(sim.state_dict()) == names                     # nothing besides the declared fields
    assert state.server is sim.server and state.time == sim.time    # the live values, not copies
    assert torch.equal(state.sampler, sim.sampler.get_state())       # held objects: their own state


def test_each_algorithm_declares_its_own_fields():
    assert {"clients", "base", "client_time", "next_duration", "speed_state"} <= {f.name for f in dataclasses.fields(QuAFLState)}
    assert ALGORITHMS["quafl"].State is QuAFLState and ALGORITHMS["qafel"].State is QAFeLState
    assert ALGORITHMS["fedbuff"].State is AsyncState and ALGORITHMS["fedasync"].State is AsyncState
    assert {"hidden", "broadcast_bits", "jobs"} <= {f.name for f in dataclasses.fields(QAFeLState)}


def test_restore_sets_every_field_and_the_held_objects():
    cfg = RunConfig(**QUAD, algorithm="qafel", quantizer="qsgd", bits=8)
    a, b = build_simulation(cfg), build_simulation(cfg)
    for _ in range(5):
        a.step()
    type(a).State.from_plain(a.state_dict()).restore(b)
    assert b.server_steps == a.server_steps == 5 and b.bits_up == a.bits_up and b.broadcast_bits == a.broadcast_bits
    assert b.jobs.queue == a.jobs.queue and torch.equal(b.jobs.rng.get_state(), a.jobs.rng.get_state())
    assert torch.equal(b.sampler.get_state(), a.sampler.get_state())
    a.step()
    b.step()
    assert torch.equal(a.server, b.server) and torch.equal(a.hidden, b.hidden) and a.counters() == b.counters()


def test_another_algorithms_state_is_refused_naming_the_fields():
    fedavg = build_simulation(RunConfig(**QUAD, algorithm="fedavg")).state_dict()
    quafl = build_simulation(RunConfig(**QUAD, algorithm="quafl"))
    with pytest.raises(ValueError, match=r"does not match QuAFLState \(missing base, client_time, next_duration, speed_state\)"):
        quafl.load_state_dict(fedavg)
    with pytest.raises(ValueError, match=r"does not match SimulationState \(unknown clients\)"):
        SimulationState.from_plain(fedavg)
    with pytest.raises(ValueError, match="expected a mapping"):
        SimulationState.from_plain([1, 2])
