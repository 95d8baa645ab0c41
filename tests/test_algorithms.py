"""Engine tests: hand-computed rounds of QuAFL, FedAvg and FedBuff with scripted step times,
the QuAFL conservation invariant (docs/algorithm.md#conservation-invariant), and determinism."""
from __future__ import annotations

import pytest
import torch

from qafl_core.algorithms import FedAvg, FedBuff, QuAFL
from qafl_core.config import RunConfig
from qafl_core.runner import build_simulation, run

from engine_fakes import FakeTask, scripted_simulation


def _cfg(**kw):
    base = dict(dataset="synthetic", sit=2.0, swt=0.0, lr=2 / 3, local_steps=5, progress=False, time_limit=100.0)
    base.update(kw)
    return RunConfig(**base)


def _sim(cls, cfg, durations, n=2):
    task = FakeTask(n)
    return scripted_simulation(cls, task, durations, cfg), task


def test_quafl_two_rounds_by_hand():
    # n = s = 2, p = 1/3, client lr = (2/3) * (s+1)/s = 1
    sim, task = _sim(QuAFL, _cfg(clients_per_round=2), {0: [1.0], 1: [3.0]})
    sim.step()  # T = 0: nobody has progressed, all models stay 0
    assert sim.time == 2.0 and sim.local_steps == 0
    assert torch.equal(sim.server, torch.zeros(2))
    sim.step()  # T = 2: client 0 finished one step (0+1 < 2; 1+1 < 2 is false); client 1's 3-unit step is in flight
    assert task.calls == [(0, 1, pytest.approx(1.0))]
    assert torch.allclose(sim.server, torch.full((2,), -1 / 3))          # (0 + (-1) + 0) / 3
    assert torch.allclose(sim.clients[0], torch.full((2,), -2 / 3))      # 0/3 + 2/3 * (-1)
    assert torch.allclose(sim.clients[1], torch.zeros(2))
    assert sim.zero_step_contacts == {"slow": 0, "fast": 3} and sim.contacts["fast"] == 4
    assert sim.bits_up == sim.bits_down == 4 * 32 * 2


def test_quafl_in_flight_step_keeps_its_duration():
    # client 1's drawn 3-unit step only completes when a gap between contacts exceeds it (docs/timing.md#quafl-lazy-progress)
    sim, task = _sim(QuAFL, _cfg(clients_per_round=2, sit=2.5), {0: [10.0], 1: [3.0, 1.0]})
    for _ in range(3):
        sim.step()
    assert [c for c in task.calls if c[0] == 1] == []  # gaps of 2.5 never fit a 3-unit step


def test_quafl_caps_progress_at_K():
    sim, task = _sim(QuAFL, _cfg(clients_per_round=2, sit=100.0, local_steps=3), {0: [1.0], 1: [1.0]})
    sim.step()
    sim.step()
    assert sorted(c[:2] for c in task.calls) == [(0, 3), (1, 3)]


def test_quafl_averaging_switches():
    # server only: client adopts Q(X); client only: server adopts the clients' mean
    sim, _ = _sim(QuAFL, _cfg(clients_per_round=2, client_averaging=False), {0: [1.0], 1: [3.0]})
    sim.step(); sim.step()
    assert torch.allclose(sim.clients[0], torch.zeros(2))  # took the pre-round server model 0
    sim, _ = _sim(QuAFL, _cfg(clients_per_round=2, server_averaging=False), {0: [1.0], 1: [3.0]})
    sim.step(); sim.step()
    # no lr scaling without server averaging: client 0 moved by lr = 2/3; server = mean(-2/3, 0)
    assert torch.allclose(sim.server, torch.full((2,), -1 / 3))


def test_quafl_conservation_invariant_identity_quantizer():
    cfg = RunConfig(dataset="quadratic", num_clients=12, clients_per_round=4, local_steps=3, lr=0.05, sit=1.0,
                    time_limit=40.0, eval_every=1.0, progress=False, dataset_options={"dim": 6})
    df = run(cfg)
    res = df[(df.split == "mean_model") & (df.metric == "conservation_residual")].value
    assert len(res) > 30 and res.max() < 1e-4
    assert df[(df.metric == "grad_sq") & (df.split == "test")].value.iloc[-1] < \
        df[(df.metric == "grad_sq") & (df.split == "test")].value.iloc[0]


def test_quafl_lattice_breaks_conservation_only_by_quantization_error():
    cfg = RunConfig(dataset="quadratic", num_clients=8, clients_per_round=3, local_steps=3, lr=0.05, sit=1.0,
                    time_limit=20.0, eval_every=1.0, progress=False, quantizer="lattice", bits=16, lattice_eps=1e-3,
                    scale_sit_by_bits=False, dataset_options={"dim": 5})
    df = run(cfg)
    res = df[(df.split == "mean_model") & (df.metric == "conservation_residual")].value
    assert 0 < res.max() < 20 * 9 * 1e-3  # at most rounds * (2s+1) * eps/2 per coordinate


def test_fedavg_round_by_hand():
    # s = n = 2, K = 2: client i moves by -lr*K*(i+1); round time = slowest K-step time + sit
    sim, task = _sim(FedAvg, _cfg(clients_per_round=2, local_steps=2, lr=0.5, server_lr=1.0), {0: [1.0], 1: [3.0, 4.0]})
    sim.step()
    assert torch.allclose(sim.server, torch.full((2,), -(1.0 + 2.0) / 2))  # mean of deltas 1 and 2
    assert sim.time == pytest.approx(7.0 + 2.0)
    sim2, _ = _sim(FedAvg, _cfg(clients_per_round=2, local_steps=2, lr=0.5, server_lr=0.5), {0: [1.0], 1: [3.0, 4.0]})
    sim2.step()
    assert torch.allclose(sim2.server, torch.full((2,), -0.75))


def test_fedbuff_flushes_exactly_at_Z_in_finish_order():
    # n = 3, Z = 2, K = 1: finish times 1 (client 0), 1.5 (client 2), 5 (client 1)
    cfg = _cfg(algorithm="fedbuff", clients_per_round=2, local_steps=1, lr=1.0, sit=0.5)
    sim, task = _sim(FedBuff, cfg, {0: [1.0], 1: [5.0], 2: [1.5]}, n=3)
    sim.step()
    assert [c[0] for c in task.calls] == [0, 2]
    assert sim.time == pytest.approx(2.0) and sim.server_steps == 1
    assert torch.allclose(sim.server, torch.full((2,), -(1 + 3) / 2))
    # client 0 restarted at t=1 on the old model (finishes 2); client 2 got the new model after the flush
    # (restarts at 2.0, finishes 3.5); client 0 then restarts at 2 and finishes again at 3, before client 2
    sim.step()
    assert [c[0] for c in task.calls] == [0, 2, 0, 0]
    assert sim.time == pytest.approx(3.0 + 0.5)
    assert sim.bits_up == 4 * 32 * 2 and sim.bits_down == 4 * 32 * 2  # every upload is answered by one download


def test_fedbuff_staleness_weights():
    # n = 2, Z = 1, K = 1, sit = 0: client 0 (steps of 1, delta +1) flushes at t = 1..5; client 1 (a 5-unit step,
    # delta +2) trained on version 0 and arrives at t = 5 when the server is at version 5: tau = 5
    cfg = _cfg(algorithm="fedbuff", clients_per_round=1, local_steps=1, lr=1.0, sit=0.0, staleness="sqrt")
    sim, task = _sim(FedBuff, cfg, {0: [1.0], 1: [5.0]})
    assert sim.weight(0) == 1.0 and sim.weight(3) == pytest.approx(0.5)
    for _ in range(5):
        sim.step()
    assert torch.allclose(sim.server, torch.full((2,), -5.0))
    sim.step()
    assert task.calls[-1][0] == 1
    assert torch.allclose(sim.server, torch.full((2,), -5.0 - 2 / 6 ** 0.5))


def test_same_seed_same_results_and_seed_matters():
    cfg = RunConfig(dataset="quadratic", num_clients=10, clients_per_round=3, time_limit=30.0, eval_every=5.0,
                    sit=1.0, progress=False, lr=0.05, quantizer="qsgd", bits=8)
    a, b = run(cfg), run(cfg)
    assert a.equals(b)
    c = run(cfg.replace(seed=1))
    assert not a.value.equals(c.value)


def test_global_rng_does_not_change_results():
    cfg = RunConfig(dataset="quadratic", num_clients=6, clients_per_round=2, time_limit=20.0, eval_every=5.0,
                    sit=1.0, progress=False, lr=0.05)
    torch.manual_seed(1)
    a = run(cfg)
    torch.manual_seed(12345)
    import numpy as np, random
    np.random.seed(7); random.seed(7)
    assert a.equals(run(cfg))


@pytest.mark.parametrize("algorithm", ["quafl", "fedavg", "fedbuff"])
def test_every_algorithm_runs_and_counts(algorithm):
    cfg = RunConfig(algorithm=algorithm, dataset="quadratic", num_clients=8, clients_per_round=3, time_limit=60.0,
                    eval_every=20.0, sit=1.0, progress=False, lr=0.05, quantizer="lattice", bits=12, lattice_eps=1e-3)
    df = run(cfg)
    last = df.iloc[-1]
    assert last.server_steps > 0 and last.local_steps > 0 and last.bits_up > 0 and last.bits_down > 0
    assert set(df.split) >= {"test", "sim"}
    sim = build_simulation(cfg)
    assert sim.server.numel() == 20
