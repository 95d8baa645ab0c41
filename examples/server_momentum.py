"""Example algorithm: FedAvg with server momentum ("FedAvgM"; Hsu, Qi, Brown, "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification", 2019, arXiv:1909.06335).

One file plus one registration line (README "Extending the suite"):

    from examples.server_momentum import FedAvgMomentum
    register_algorithm("fedavg_momentum", FedAvgMomentum)

The round is FedAvg's (:class:`qafl_core.algorithms.FedAvg`); only the server update changes, from
``X <- X - server_lr * mean_delta`` to ``m <- beta * m + mean_delta; X <- X - server_lr * m``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qafl_core.algorithms.fedavg import FedAvg
from qafl_core.algorithms.state import ClientModelsState


@dataclass
class FedAvgMomentumState(ClientModelsState):
    """FedAvg's state and the server momentum: what a checkpoint of this algorithm holds."""

    momentum: torch.Tensor


class FedAvgMomentum(FedAvg):
    name = "fedavg_momentum"
    State = FedAvgMomentumState  # checkpointed: every field, read from the attribute of the same name
    beta = 0.9  # server momentum

    def __init__(self, cfg, task, quantizer, clocks):
        super().__init__(cfg, task, quantizer, clocks)
        self.momentum = torch.zeros_like(self.server)

    def apply_server_delta(self, mean_delta: torch.Tensor, server_lr: float) -> None:
        self.momentum.mul_(self.beta).add_(mean_delta)
        super().apply_server_delta(self.momentum, server_lr)
