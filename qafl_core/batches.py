"""Per-client mini-batch streams (:class:`ClientBatcher`), shared by the sequential (:mod:`qafl_core.local`) and
the batched (:mod:`qafl_core.batched`) local SGD.

Mini-batches follow ``DataLoader(shuffle=True)`` semantics, as in the paper's code: each client walks through a
fresh random permutation of its samples per epoch (the last batch of an epoch may be smaller), drawn from the
client's own generator, so a client's batches do not depend on when or how often other clients train.
"""
from __future__ import annotations

from typing import Any

import torch

from qafl_core.rng import torch_generator


class ClientBatcher:
    """Per-client epoch-wise shuffled mini-batch indices (local indices into the client's samples)."""

    def __init__(self, counts: torch.Tensor, batch_size: int, seed: int):
        self.counts = [int(c) for c in counts]
        self.batch_size = batch_size
        self.seed = seed
        self.gens: dict[int, torch.Generator] = {}
        self.perm: dict[int, torch.Tensor] = {}
        self.pos: dict[int, int] = {}

    def next(self, i: int) -> torch.Tensor:
        perm, pos = self.perm.get(i), self.pos.get(i, 0)
        if perm is None or pos >= len(perm):
            if i not in self.gens:
                self.gens[i] = torch_generator(self.seed, "batches", i)
            if self.counts[i] == 0:
                raise ValueError(f"client {i} has no training samples")
            perm, pos = torch.randperm(self.counts[i], generator=self.gens[i]), 0
            self.perm[i] = perm
        self.pos[i] = pos + self.batch_size
        return perm[pos:pos + self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        return {"gens": {i: g.get_state() for i, g in self.gens.items()},
                "perm": dict(self.perm), "pos": dict(self.pos)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gens = {}
        for i, s in state["gens"].items():
            g = torch.Generator()
            g.set_state(s)
            self.gens[int(i)] = g
        self.perm = {int(i): p for i, p in state["perm"].items()}
        self.pos = {int(i): int(p) for i, p in state["pos"].items()}
