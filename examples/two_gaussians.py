"""Example dataset: two Gaussian classes in ``dim`` dimensions, each client's inputs shifted by its own offset
(feature skew), generated from the run's named random stream -- no files needed.

One file plus one registration line (README "Extending the suite"):

    from examples.two_gaussians import load_two_gaussians
    register_dataset("two_gaussians", load_two_gaussians, default_model="logreg", label="Two Gaussians")

Its keyword arguments are the dataset's ``dataset_options`` (``--set dataset_options={num_clients: 20}``).
"""
from __future__ import annotations

import torch

from qafl_core.data import FederatedDataset
from qafl_core.rng import torch_generator


def load_two_gaussians(num_clients: int = 10, samples: int = 40, dim: int = 2, shift: float = 1.0,
                       seed: int = 0) -> FederatedDataset:
    """Class ``y`` has mean ``(2y - 1) * 1`` plus the client's offset ``~ N(0, shift^2 I)``; unit noise."""
    gen = torch_generator(seed, "two_gaussians")
    train, test = [], []
    for _ in range(num_clients):
        offset = torch.randn(dim, generator=gen) * shift
        for split, n in ((train, samples), (test, samples // 4 or 1)):
            y = torch.randint(0, 2, (n,), generator=gen)
            x = (2 * y - 1).unsqueeze(1).float() + offset + torch.randn(n, dim, generator=gen)
            split.append((x, y))
    return FederatedDataset.from_clients("two_gaussians", [f"c{i}" for i in range(num_clients)], train, test, 2,
                                         info={"generator": "two_gaussians", "seed": seed})
