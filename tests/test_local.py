"""Tests of :mod:`qafl_core.local`: per-client evaluation against a direct computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qafl_core.data.federated import FederatedDataset
from qafl_core.local import NeuralTask
from qafl_core.runner import run


def _dataset(num_clients: int = 7, seed: int = 0) -> FederatedDataset:
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for i in range(num_clients):
        m_tr, m_te = 5 + i, 1 + (3 * i) % 5            # uneven test sets, one client with a single test sample
        train.append((torch.randn(m_tr, 6, generator=g), torch.randint(0, 3, (m_tr,), generator=g)))
        test.append((torch.randn(m_te, 6, generator=g), torch.randint(0, 3, (m_te,), generator=g)))
    return FederatedDataset.from_clients("toy", [f"c{i}" for i in range(num_clients)], train, test, 3)


def test_per_client_percentiles_match_a_direct_computation():
    ds = _dataset()
    task = NeuralTask(ds, "logreg", seed=3, batch_size=4)
    vec = task.init_vector() + 0.3 * torch.randn(task.dim, generator=torch.Generator().manual_seed(1))
    pooled, clients = task.evaluate_with_clients(vec)
    accs, losses, correct_total, loss_total = [], [], 0.0, 0.0
    for i in range(ds.num_clients):
        x, y = ds.client_test(i)
        out = task.flat.forward(vec, x)
        c = (out.argmax(1) == y).double()
        loss = F.cross_entropy(out, y, reduction="none").double()
        accs.append(float(c.mean()))
        losses.append(float(loss.mean()))
        correct_total += float(c.sum())
        loss_total += float(loss.sum())
    n = len(ds.y_test)
    assert pooled["accuracy"] == pytest.approx(correct_total / n, abs=1e-12)
    assert pooled["loss"] == pytest.approx(loss_total / n, rel=1e-6)
    for q in (10, 50, 90):
        assert clients[f"accuracy_p{q}"] == pytest.approx(np.percentile(accs, q), abs=1e-12)
        assert clients[f"loss_p{q}"] == pytest.approx(np.percentile(losses, q), rel=1e-6)
    assert task.evaluate(vec) == pooled


def test_clients_without_test_samples_are_left_out_and_subsets_have_no_client_rows():
    g = torch.Generator().manual_seed(0)
    train = [(torch.randn(4, 2, generator=g), torch.tensor([0, 1, 0, 1])) for _ in range(3)]
    test = [(torch.randn(2, 2, generator=g), torch.tensor([0, 1])), (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)),
            (torch.randn(1, 2, generator=g), torch.tensor([1]))]
    ds = FederatedDataset.from_clients("toy", ["a", "b", "c"], train, test, 2)
    task = NeuralTask(ds, "logreg", seed=0, batch_size=2)
    _, clients = task.evaluate_with_clients(task.init_vector())
    assert set(clients) == {f"{m}_p{q}" for m in ("accuracy", "loss") for q in (10, 50, 90)}
    assert all(np.isfinite(v) for v in clients.values())      # the empty client did not produce 0/0
    sub = NeuralTask(ds, "logreg", seed=0, batch_size=2, eval_max_samples=2)
    assert sub.evaluate_with_clients(sub.init_vector())[1] == {}


def test_results_carry_model_and_client_rows():
    df = run({"dataset": "synthetic", "dataset_options": {"num_tasks": 30}, "num_clients": 10, "clients_per_round": 3,
              "time_limit": 40.0, "eval_every": 20.0, "progress": False})
    assert set(df.model) == {"logreg"}
    clients = df[df.split == "clients"]
    assert set(clients.metric) == {f"{m}_p{q}" for m in ("accuracy", "loss") for q in (10, 50, 90)}
    # one block of client rows per evaluation, at the same times as the pooled test rows
    assert sorted(set(clients.time)) == sorted(set(df[df.split == "test"].time))
