"""Hand-checkable stand-ins for a Task and for the client clocks, shared by the engine tests."""
from __future__ import annotations

import torch

from qafl_core.timing import ClientClocks


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
