"""What the engine tests share: hand-checkable stand-ins for a Task and for the client clocks, a simulation built
on them, the one-thread fixture and the checkpoint round trip of a simulation."""
from __future__ import annotations

import io

import pytest
import torch

from qafl_core.config import RunConfig
from qafl_core.quantize import make_quantizer
from qafl_core.timing import ClientClocks


@pytest.fixture
def one_thread():
    """Small models on one intra-op thread, as the runner runs them (on a loaded machine, 10x faster).

    A test module uses it for every test with ``pytestmark = pytest.mark.usefixtures("one_thread")`` after
    ``from engine_fakes import one_thread``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeTask:
    """dim-2 task whose 'gradient' for client i is the constant (i+1): one step moves row by -lr*(i+1)."""

    def __init__(self, num_clients: int, dim: int = 2):
        self.num_clients, self.dim, self.segments, self.num_params = num_clients, dim, [dim], dim
        self.calls: list[tuple[int, int, float]] = []

    def init_vector(self):
        return torch.zeros(self.dim)

    def local_sgd(self, row, client, num_steps, lr):
        self.calls.append((client, num_steps, lr))
        row.sub_(lr * num_steps * (client + 1))

    def evaluate(self, vec):
        return {"loss": float(vec.double().pow(2).sum())}

    def state_dict(self):
        return {"calls": list(self.calls)}

    def load_state_dict(self, state):
        self.calls = list(state["calls"])


class ScriptedClocks(ClientClocks):
    """Clocks whose step durations are given per client (cycled)."""

    def __init__(self, durations: dict[int, list[float]], slow: set[int] = frozenset()):
        n = len(durations)
        super().__init__(n, "exponential", 0.0, 2.0, 8.0, seed=0)
        self.is_slow = [i in slow for i in range(n)]
        self.script = {i: list(d) for i, d in durations.items()}
        self.pos = {i: 0 for i in durations}

    def draw(self, i):
        d = self.script[i][self.pos[i] % len(self.script[i])]
        self.pos[i] += 1
        return d


def scripted_simulation(cls, task, durations: dict[int, list[float]], cfg: RunConfig, slow: set[int] = frozenset()):
    """``cls(cfg, task, quantizer, clocks)`` with the run's quantizer and :class:`ScriptedClocks` ``durations``."""
    quantizer = make_quantizer(cfg.quantizer, bits=cfg.bits, eps=cfg.lattice_eps, segments=task.segments)
    return cls(cfg, task, quantizer, ScriptedClocks(durations, slow))


def resumed_pair(cfg: RunConfig, before: int, after: int):
    """Two simulations of ``cfg``: ``a`` runs ``before`` server steps, its checkpoint state goes through
    ``torch.save`` and ``torch.load(weights_only=True)`` into a freshly built ``b``, then both run ``after``
    more.  Returns ``(a, b)``: equal states mean the checkpoint is plain and the resume exact."""
    from qafl_core.runner import build_simulation

    a = build_simulation(cfg)
    for _ in range(before):
        a.step()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build_simulation(cfg)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(after):
        a.step()
        b.step()
    return a, b
