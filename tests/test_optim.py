"""Per-client optimizers (:mod:`qafl_core.optim`): each client's ``torch.optim`` state persists across its
contacts, exactly as one long-lived ``torch.optim`` instance per client would keep it (the paper's code), and
it never leaks from one client to another.  The reference is independent of the engine: an ``nn.Module`` per
client with its own ``torch.optim.Adam``/``SGD``, ``loss.backward()``, fed the same mini-batches."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from qafl_bench.workloads import random_dataset
from qafl_core.config import RunConfig
from qafl_core.local import ClientBatcher, NeuralTask
from qafl_core.models import build_model
from qafl_core.rng import torch_generator
from qafl_core.runner import build_simulation, run

SEED, BATCH = 3, 5


def _task(optimizer="adam", momentum=0.0, weight_decay=0.0):
    ds = random_dataset("mnist", 3, 17, (1, 28, 28), 10)
    return NeuralTask(ds, "mlp", SEED, BATCH, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)


class _Reference:
    """One client as the paper's code holds it: its own module and its own torch.optim instance."""

    def __init__(self, task, client, make_opt):
        self.module = build_model("mlp", task.dataset.input_shape, 10, generator=torch_generator(SEED, "model_init"))
        self.opt = make_opt(self.module.parameters())
        self.batcher = ClientBatcher(task.dataset.train_counts(), BATCH, SEED)
        self.client, self.ds, self.base = client, task.dataset, task.offsets[client]

    def steps(self, k, lr):
        for group in self.opt.param_groups:
            group["lr"] = lr
        for _ in range(k):
            idx = self.batcher.next(self.client) + self.base
            self.opt.zero_grad()
            F.cross_entropy(self.module(self.ds.x_train[idx]), self.ds.y_train[idx]).backward()
            self.opt.step()

    def vector(self):
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])

    def average_with(self, other, p):
        """What a contact does to the weights (never to the optimizer): w <- (1-p) w + p other."""
        with torch.no_grad():
            for w, o in zip(self.module.parameters(), other):
                w.mul_(1 - p).add_(o, alpha=p)


@pytest.mark.parametrize("name, make_opt, kw", [
    ("adam", lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01), dict(optimizer="adam", weight_decay=0.01)),
    ("sgd-momentum", lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, weight_decay=0.001),
     dict(optimizer="sgd", momentum=0.9, weight_decay=0.001)),
])
def test_state_persists_across_contacts_like_one_torch_optim_per_client(name, make_opt, kw):
    task = _task(**kw)
    rows = task.init_vector().unsqueeze(0).repeat(3, 1)
    refs = {c: _Reference(task, c, make_opt) for c in (0, 2)}
    other = [torch.full_like(p, 0.05) for p in refs[0].module.parameters()]
    flat_other = torch.cat([o.reshape(-1) for o in other])
    # interleaved contacts of two clients, with averaging between them and changing step sizes
    for client, k, lr in [(0, 3, 0.01), (2, 2, 0.01), (0, 1, 0.005), (2, 4, 0.02), (0, 2, 0.01)]:
        task.local_sgd(rows[client], client, k, lr)
        refs[client].steps(k, lr)
        rows[client].mul_(0.75).add_(flat_other, alpha=0.25)
        refs[client].average_with(other, 0.25)
        assert torch.allclose(rows[client], refs[client].vector(), atol=1e-6, rtol=0), (name, client)
    assert not torch.equal(rows[0], rows[2])
    assert torch.equal(rows[1], task.init_vector())                      # untouched client: untouched row
    assert set(task.optimizers.states) == {0, 2}                         # state allocated lazily, per client
    key = "exp_avg" if name == "adam" else "momentum_buffer"
    assert all(key in s for s in task.optimizers.states[0])
    if name == "adam":
        assert float(task.optimizers.states[0][0]["step"]) == 6 and float(task.optimizers.states[2][0]["step"]) == 6


def test_adam_is_not_plain_sgd_and_plain_sgd_has_no_state():
    plain, adam = _task("sgd"), _task("adam")
    assert plain.optimizers is None                                        # the fused default path, unchanged
    a, b = plain.init_vector(), adam.init_vector()
    plain.local_sgd(a, 0, 3, 0.01)
    adam.local_sgd(b, 0, 3, 0.01)
    assert not torch.allclose(a, b)
    # Adam's first step moves a parameter by lr * |g| / (|g| + eps) (bias-corrected m / sqrt(v) = g / |g|):
    # by at most lr, and by lr (to 0.1 %) wherever |g| >> eps = 1e-8 -- most coordinates here
    c = adam.init_vector()
    fresh = _task("adam")
    fresh.local_sgd(c, 1, 1, 0.01)
    moved = (c - fresh.init_vector()).abs()
    assert float(moved.max()) <= 0.01 * (1 + 1e-5)
    assert float((moved > 0.00999).double().mean()) > 0.5


def test_state_dict_round_trip_is_plain_and_exact():
    from qafl_core.store import check_plain

    a, b = _task("adam"), _task("adam")
    ra, rb = a.init_vector(), b.init_vector()
    a.local_sgd(ra, 1, 4, 0.01)
    state = copy.deepcopy(a.state_dict())
    check_plain(state)
    b.load_state_dict(state)
    rb.copy_(ra)
    a.local_sgd(ra, 1, 3, 0.01)
    b.local_sgd(rb, 1, 3, 0.01)
    assert torch.equal(ra, rb)
    with pytest.raises(ValueError, match="optimizer"):
        _task("sgd", momentum=0.5).load_state_dict(state)                 # Adam state into an SGD run
    with pytest.raises(ValueError, match="optimizer"):
        _task("adam").load_state_dict({k: v for k, v in state.items() if k != "optimizers"})


@pytest.mark.parametrize("changes, field", [
    (dict(optimizer="adagrad"), "optimizer"),
    (dict(optimizer="adam", momentum=0.9), "momentum"),
    (dict(momentum=1.0), "momentum"),
    (dict(momentum=-0.1), "momentum"),
    (dict(weight_decay=-1e-3), "weight_decay"),
    (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(optimizer="adam", dataset="quadratic", num_clients=8), "optimizer"),
    (dict(optimizer="adam", batched_clients=True), "batched_clients"),
    (dict(momentum=0.5, batched_clients=True), "batched_clients"),
])
def test_bad_optimizer_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        RunConfig(**changes)


def test_defaults_keep_config_hashes_and_optimizer_keys_enter_them():
    base = RunConfig()
    assert base.replace(optimizer="sgd", momentum=0.0, weight_decay=0.0).config_hash() == base.config_hash()
    hashes = {base.config_hash(), base.replace(optimizer="adam").config_hash(),
              base.replace(momentum=0.9).config_hash(), base.replace(weight_decay=1e-4).config_hash()}
    assert len(hashes) == 4


def test_batched_task_refuses_a_stateful_optimizer():
    task = _task("adam")
    assert not task.supports_batched
    with pytest.raises(ValueError, match="batched_clients"):
        task.local_sgd_many([task.init_vector()], [0], [1], [0.1])


@pytest.mark.parametrize("algorithm", ["quafl", "fedavg", "fedbuff", "fedasync", "qafel"])
def test_every_algorithm_trains_with_adam_deterministically(algorithm):
    cfg = dict(algorithm=algorithm, dataset="synthetic", dataset_options={"num_tasks": 8}, clients_per_round=3,
               local_steps=2, batch_size=4, optimizer="adam", lr=0.01, sit=1.0, time_limit=12.0, eval_every=6.0,
               progress=False)
    a, b = run(cfg), run(cfg)
    assert a.equals(b)
    sgd = run({**cfg, "optimizer": "sgd"})
    assert not a.value.equals(sgd.value)
    sim = build_simulation(RunConfig(**cfg))
    for _ in range(3):
        sim.step()
    assert sim.task.optimizers.states                                     # some client trained with Adam
