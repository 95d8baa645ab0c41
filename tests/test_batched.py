"""Tests of :mod:`qafl_core.batched` and :mod:`qafl_core.batched_func`: batched local SGD of every model equals the
sequential one (exactly in float64, where only the summation order of the kernels differs, and to float32
rounding), with the sequential run's mini-batches, dropout masks and per-client BatchNorm statistics; and
:meth:`qafl_core.local.NeuralTask.train_many` hides the choice from the algorithms."""
from __future__ import annotations

import pytest
import torch

from qafl_core.config import RunConfig
from qafl_core.data.federated import FederatedDataset
from qafl_core.divergence import Diverged
from qafl_core.local import NeuralTask
from qafl_core.runner import build_simulation

# model -> (per-sample input shape, classes, integer inputs); small inputs keep the CPU time low
MODELS = {
    "fmnist_cnn": ((1, 28, 28), 10, False),        # BatchNorm with running statistics, dropout
    "femnist_cnn": ((1, 28, 28), 62, False),
    "celeba_cnn": ((3, 12, 12), 2, False),          # BatchNorm on batch statistics only (LEAF)
    "resnet20": ((3, 32, 32), 10, False),           # BatchNorm in every block
    "shakespeare_lstm": ((6,), 20, True),           # the LSTM written out for vmap
    "mlp": ((1, 28, 28), 10, False),                # the hand-written batched matmul
}
# client sizes 7, 9, 11, 13 with batch 4: epochs end with short batches of 3 or 1, so a step's batches differ in
# size and the batched path has to split the step into groups
SIZES = (7, 9, 11, 13)


def _dataset(model: str) -> FederatedDataset:
    shape, classes, integer = MODELS[model]
    g = torch.Generator().manual_seed(5)
    parts = []
    for m in SIZES:
        x = torch.randint(0, classes, (m, *shape), generator=g) if integer else torch.rand(m, *shape, generator=g)
        parts.append((x, torch.randint(0, classes, (m,), generator=g)))
    return FederatedDataset.from_clients(model, [str(i) for i in range(len(SIZES))], parts,
                                         [(x[:2], y[:2]) for x, y in parts], classes)


def _task(model: str, dtype=torch.float32) -> NeuralTask:
    task = NeuralTask(_dataset(model), model, 0, 4)
    if dtype != torch.float32:                      # the same task in float64: rounding out of the way
        task.module.to(dtype)
        if task.x_train.is_floating_point():
            task.x_train = task.x_train.to(dtype)
    return task


def _train_both(model: str, dtype, steps=(3, 5, 0, 4), lrs=(0.05, 0.1, 0.1, 0.02)):
    seq, bat = _task(model, dtype), _task(model, dtype)
    start = seq.init_vector().to(dtype)
    rows_seq = start.unsqueeze(0).repeat(len(steps), 1)
    rows_bat = rows_seq.clone()
    clients = list(range(len(steps)))
    for j, c in enumerate(clients):
        seq.local_sgd(rows_seq[j], c, steps[j], lrs[j])
    bat.local_sgd_many(list(rows_bat), clients, list(steps), list(lrs))
    return seq, bat, start, rows_seq, rows_bat


@pytest.mark.parametrize("model", list(MODELS))
def test_batched_equals_sequential_in_float64(model):
    """Every client's row (parameters and BatchNorm statistics) is the sequential one up to float64 rounding."""
    seq, bat, start, a, b = _train_both(model, torch.float64)
    assert torch.allclose(a, b, atol=1e-10, rtol=1e-10), float((a - b).abs().max())
    assert torch.equal(a[2], start) and torch.equal(b[2], start)                 # 0 steps: untouched
    assert all(not torch.equal(a[j], start) for j in (0, 1, 3))                   # the others trained
    # same mini-batch and dropout streams consumed, so later contacts stay the same too
    assert seq.batcher.pos == bat.batcher.pos
    assert all(torch.equal(seq.batcher.perm[c], bat.batcher.perm[c]) for c in seq.batcher.perm)
    assert torch.equal(seq._dropout_gen.get_state(), bat._dropout_gen.get_state())


def test_batched_equals_sequential_in_float32_with_batchnorm_and_dropout():
    seq, _, start, a, b = _train_both("fmnist_cnn", torch.float32)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())
    # each client's BatchNorm running statistics are its own: they moved, and differ between clients
    bn = next(e for e in seq.flat.entries if e.name.endswith("running_mean"))
    stats = b[:, bn.start:bn.start + bn.numel]
    assert not torch.equal(stats[0], start[bn.start:bn.start + bn.numel])
    assert not torch.equal(stats[0], stats[1])


def test_one_client_batched_step_equals_the_sequential_step():
    _, _, _, a, b = _train_both("fmnist_cnn", torch.float32, steps=(1,), lrs=(0.1,))
    assert torch.allclose(a, b, atol=1e-6, rtol=0), float((a - b).abs().max())


def test_dropout_masks_are_the_sequential_runs():
    """With other masks (here: the dropout stream moved on by one draw) the rows differ far beyond rounding, so
    the float64 equality above does check that the masks are the sequential run's."""
    seq, bat = _task("fmnist_cnn", torch.float64), _task("fmnist_cnn", torch.float64)
    torch.rand(1, generator=bat._dropout_gen, dtype=torch.float64)
    a = seq.init_vector().double().unsqueeze(0).repeat(2, 1)
    b = a.clone()
    for j in range(2):
        seq.local_sgd(a[j], j, 2, 0.1)
    bat.local_sgd_many(list(b), [0, 1], [2, 2], [0.1, 0.1])
    assert (a - b).abs().max() > 1e-4


def test_batched_divergence_names_the_client():
    task = _task("femnist_cnn")
    rows = task.init_vector().unsqueeze(0).repeat(2, 1)
    rows[1, :10] = float("nan")
    with pytest.raises(Diverged, match="client 1: training loss became nan"):
        task.local_sgd_many(list(rows), [0, 1], [2, 2], [0.1, 0.1])


@pytest.mark.parametrize("batched", [False, True])
def test_train_many_runs_the_callbacks_around_each_clients_steps(batched):
    """One by one: prepare, steps, finish client after client; batched: every prepare, one batched call, every
    finish. The rows are trained either way."""
    task = _task("mlp")
    task.batched = batched
    rows = task.init_vector().unsqueeze(0).repeat(3, 1)
    events = []
    real_one, real_many = task.local_sgd, task.local_sgd_many
    task.local_sgd = lambda row, c, k, lr: (events.append(("sgd", c)), real_one(row, c, k, lr))
    task.local_sgd_many = lambda r, c, k, lr: (events.append(("many", tuple(c))), real_many(r, c, k, lr))

    def prepare(j):
        events.append(("prepare", j))
        return rows[j], 2, 0.1

    task.train_many([0, 1, 2], prepare, lambda j: events.append(("finish", j)))
    if batched:
        assert events == [("prepare", 0), ("prepare", 1), ("prepare", 2), ("many", (0, 1, 2)),
                          ("finish", 0), ("finish", 1), ("finish", 2)]
    else:
        assert events == [e for j in range(3) for e in (("prepare", j), ("sgd", j), ("finish", j))]
    assert all(not torch.equal(r, task.init_vector()) for r in rows)


@pytest.mark.parametrize("alg", ["quafl", "fedavg", "fedbuff"])
def test_batched_runs_of_a_cnn_with_batchnorm_and_dropout_match_sequential(alg):
    def sim(batched):
        cfg = RunConfig(dataset="mnist", algorithm=alg, clients_per_round=2, local_steps=2, batch_size=4, lr=0.05,
                        sit=5.0, progress=False, time_limit=1e9, batched_clients=batched)
        s = build_simulation(cfg, NeuralTask(_dataset("fmnist_cnn"), "fmnist_cnn", 0, 4))
        for _ in range(3):
            s.step()
        return s

    seq, bat = sim(False), sim(True)
    assert bat.task.batched and not seq.task.batched
    assert seq.counters() == bat.counters() and seq.local_steps > 0
    assert torch.allclose(seq.server, bat.server, atol=1e-4, rtol=1e-4)
    assert not torch.equal(seq.server, seq.task.init_vector())
