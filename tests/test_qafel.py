"""QAFeL (Ortega, Jafarkhani, arXiv:2410.00242): the hand-computed error-feedback rounds (T1), identity
quantizers give FedBuff bit for bit (T2), staleness in server versions (T4), the dispatch order (T5), the
hidden-state invariant x_hat = x_hat^0 + sum q, bit accounting, checkpoints, and real runs. The quantizer
cases (QSGD T3, scalar T6, top-k) are in test_qsgd_norm.py, test_scalar.py and test_topk.py."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from qafl_core.algorithms import QAFeL
from qafl_core.cli import main
from qafl_core.config import RunConfig
from qafl_core.quantize import make_quantizer
from qafl_core.runner import build_simulation, run

from engine_fakes import FakeTask, one_thread, resumed_pair, scripted_simulation  # noqa: F401 (a fixture)


pytestmark = pytest.mark.usefixtures("one_thread")


class ScriptedUpdates(FakeTask):
    """Each job of client i adds the next scripted displacement u to its row; records the start models."""

    def __init__(self, updates: dict[int, list[tuple[float, ...]]]):
        super().__init__(len(updates), dim=len(updates[0][0]))
        self.updates = {i: [torch.tensor(u) for u in us] for i, us in updates.items()}
        self.starts: list[tuple[int, list[float]]] = []

    def local_sgd(self, row, client, num_steps, lr):
        self.starts.append((client, row.tolist()))
        row.add_(self.updates[client].pop(0))


def _qafel(task, durations, **kw):
    cfg = RunConfig(**{**dict(algorithm="qafel", dataset="synthetic", clients_per_round=1, local_steps=1, lr=1.0,
                              sit=0.0, progress=False), **kw})
    return scripted_simulation(QAFeL, task, durations, cfg)


T1_UPDATES = {0: [(1.0, 0.2), (0.2, 0.2)], 1: [(0.6, -0.4), (0.0, 0.4)]}


@pytest.mark.parametrize("variant", ["qafel", "naive"])
def test_t1_error_feedback_by_hand(variant):
    # d = 2, Z = 2, eta_g = 1, Q_c = identity, Q_s = top-1 (17 bits a coordinate buy one of 2 coordinates)
    task = ScriptedUpdates(T1_UPDATES)
    sim = _qafel(task, {0: [1.0], 1: [1.2]}, clients_per_round=2, server_quantizer="topk", server_bits=17,
                 qafel_variant=variant)
    assert sim.server_quantizer.k(2) == 1
    sim.step()    # arrivals (1.0, 0.2) and (0.6, -0.4)
    assert torch.allclose(sim.server, torch.tensor([0.8, -0.1]))
    assert torch.allclose(sim.hidden, torch.tensor([0.8, 0.0]))                   # q = (0.8, 0) either way
    sim.step()    # arrivals (0.2, 0.2) and (0, 0.4)
    assert torch.allclose(sim.server, torch.tensor([0.9, 0.2]))
    if variant == "qafel":
        assert torch.allclose(sim.hidden, torch.tensor([0.8, 0.2]))              # q = Q_s((0.1, 0.2)) = (0, 0.2)
        assert sim.sim_metrics()["hidden_state_distance"] == pytest.approx(0.1, abs=1e-6)
    else:
        assert torch.allclose(sim.hidden, torch.tensor([0.9, 0.0]))              # coordinate 2 is lost for ever
    # client 0's second job started mid-buffer from x_hat^0, client 1's after the flush from x_hat^1
    assert task.starts == [(0, [0.0, 0.0]), (1, [0.0, 0.0]), (0, [0.0, 0.0]), (1, pytest.approx([0.8, 0.0]))]
    # 4 uploads of 2 floats; 2 broadcasts of one (index, value) pair = 33 bits, each received by both clients
    assert sim.bits_up == 4 * 64 and sim.broadcast_bits == 2 * 33 and sim.bits_down == 2 * 2 * 33


SYNTH = dict(dataset="synthetic", dataset_options={"num_tasks": 30}, num_clients=8, clients_per_round=3, sit=0.3,
             lr=0.05, batch_size=8, progress=False, time_limit=1e9)


@pytest.mark.parametrize("kw", [{}, dict(concurrency=4, staleness="sqrt", buffer_size=2)])
def test_t2_identity_quantizers_give_fedbuff_bit_for_bit(kw):
    sims = [build_simulation(RunConfig(algorithm=alg, **SYNTH, **kw)) for alg in ("fedbuff", "qafel")]
    for _ in range(30):
        for s in sims:
            s.step()
        fb, qa = sims
        assert torch.equal(fb.server, qa.server) and torch.equal(fb.clients, qa.clients)
        assert torch.equal(qa.hidden, qa.server)
    assert fb.time == qa.time and fb.local_steps == qa.local_steps and fb.bits_up == qa.bits_up
    assert not torch.equal(fb.server, fb.task.init_vector())


def test_t2_through_the_runner_same_metrics():
    cfg = RunConfig(algorithm="fedbuff", **{**SYNTH, "time_limit": 40.0, "eval_every": 10.0})
    a, b = run(cfg), run(cfg.replace(algorithm="qafel"))
    ta, tb = a[a.split == "test"].reset_index(drop=True), b[b.split == "test"].reset_index(drop=True)
    pd.testing.assert_frame_equal(ta.drop(columns=["algorithm", "config_hash", "bits_down"]),
                                  tb.drop(columns=["algorithm", "config_hash", "bits_down"]), check_exact=True)
    dist = b[b.metric == "hidden_state_distance"].value
    assert len(dist) >= 4 and (dist == 0).all()


def test_t4_staleness_counts_server_versions():
    # Z = 1, n = C = 2, K = 1, sit = 0: client 0 reports at t = 1, 2, 3, 4; client 1's first job (2.5) arrives at
    # version 2, its second starts then at version 3 and arrives at t = 4.1 at version 5: tau = 2
    taus = []
    sim = _qafel(FakeTask(2), {0: [1.0], 1: [2.5, 1.6]}, staleness="sqrt")
    real = sim.weight
    sim.weight = lambda tau: (taus.append(tau), real(tau))[1]
    for _ in range(5):
        sim.step()
    assert taus == [0, 0, 2, 1, 0] and sim.jobs.version[1] == 3 and sim.server_steps == 5
    before = sim.server.clone()
    sim.step()
    assert taus[-1] == 2 and sim.time == pytest.approx(4.1)
    assert real(2) == pytest.approx(0.57735, abs=1e-5)
    # client 1 trained x_hat^3 by -2 (FakeTask, lr 1): the update enters with weight 3^(-1/2)
    assert torch.allclose(sim.server, before - 2 * 3 ** -0.5)


@pytest.mark.parametrize("order,start_version,start_time", [("step_then_dispatch", 1, 1.5),
                                                             ("dispatch_then_step", 0, 1.0)])
def test_t5_dispatch_order(order, start_version, start_time):
    # Z = 1 and one client: its second job starts from x_hat^1 (after the step and its sit = 0.5) or from x_hat^0
    task = ScriptedUpdates({0: [(-1.0, -1.0)] * 2})
    sim = _qafel(task, {0: [1.0]}, sit=0.5, qafel_order=order)
    sim.step()
    assert torch.allclose(sim.hidden, torch.full((2,), -1.0))          # x_hat^1 = x^1
    assert sim.jobs.version[0] == start_version and sim.jobs.queue == [(start_time + 1.0, 0)]
    sim.step()
    second_start = [-1.0, -1.0] if start_version == 1 else [0.0, 0.0]
    assert task.starts == [(0, [0.0, 0.0]), (0, second_start)]
    assert torch.allclose(sim.server, torch.full((2,), -2.0))         # the update is a displacement either way


@pytest.mark.parametrize("kw", [dict(quantizer="qsgd_norm", bits=4, server_quantizer="topk", server_bits=8),
                                dict(quantizer="qsgd", bits=6, server_quantizer="lattice", server_bits=12,
                                     lattice_eps=1e-3)])
def test_hidden_state_is_the_sum_of_the_broadcasts(kw):
    cfg = RunConfig(algorithm="qafel", **{**SYNTH, "concurrency": 5}, **kw)
    sim = build_simulation(cfg)
    x0 = sim.hidden.clone().double()
    qs = []
    real = sim.decode

    def decode(msg, key, direction, quantizer=None, **kw):
        out = real(msg, key, direction, quantizer=quantizer, **kw)
        if direction == "server->clients":
            qs.append(out.clone().double())
        return out

    sim.decode = decode
    dist = []
    for _ in range(40):
        sim.step()
        dist.append(sim.sim_metrics()["hidden_state_distance"])
    assert len(qs) == 40
    assert torch.allclose(sim.hidden.double(), x0 + torch.stack(qs).sum(0), atol=1e-5, rtol=0)
    moved = float((sim.server.double() - x0).norm())
    assert 0 < max(dist) < moved and sim.decode_failures == 0          # x_hat tracks x: the error stays bounded
    assert sim.bits_down == sim.n * sim.broadcast_bits
    bq = make_quantizer(*cfg.effective_server_quantizer[:1], bits=cfg.effective_server_quantizer[1],
                        eps=cfg.lattice_eps, segments=sim.task.segments)
    assert sim.broadcast_bits == 40 * bq.encode(sim.server, torch.Generator().manual_seed(0)).bits


def test_server_quantizer_defaults_to_the_runs_and_is_validated():
    assert RunConfig(quantizer="qsgd", bits=6).effective_server_quantizer == ("qsgd", 6)
    assert RunConfig(quantizer="qsgd", bits=6, server_quantizer="topk").effective_server_quantizer == ("topk", 6)
    for kw, msg in [(dict(server_quantizer="zip"), "server_quantizer: unknown value 'zip'"),
                    (dict(server_quantizer="identity", server_bits=8), "server_bits: the identity server quantizer"),
                    (dict(quantizer="lattice", bits=8, server_quantizer="identity"), "server_bits: the identity"),
                    (dict(server_quantizer="qsgd_norm", server_bits=1), "server_bits: qsgd_norm needs at least 2"),
                    (dict(server_bits=40), "server_bits: must be <= 32"),
                    (dict(qafel_variant="lazy"), "qafel_variant: unknown value 'lazy'"),
                    (dict(qafel_order="random"), "qafel_order: unknown value 'random'")]:
        with pytest.raises(ValueError, match=msg):
            RunConfig(**kw)


@pytest.mark.parametrize("kw", [dict(quantizer="qsgd_norm", bits=4, server_quantizer="topk", server_bits=8,
                                     concurrency=4, qafel_order="dispatch_then_step"),
                                dict(quantizer="qsgd", bits=8, qafel_variant="naive")])
def test_checkpoint_is_plain_and_resumes_exactly(kw):
    cfg = RunConfig(algorithm="qafel", **SYNTH, **kw)
    a, b = resumed_pair(cfg, 8, 10)
    assert torch.equal(a.server, b.server) and torch.equal(a.hidden, b.hidden) and torch.equal(a.clients, b.clients)
    assert a.counters() == b.counters() and a.broadcast_bits == b.broadcast_bits


def test_real_run_learns_and_is_deterministic():
    cfg = RunConfig(algorithm="qafel", **{**SYNTH, "time_limit": 60.0, "eval_every": 20.0}, quantizer="qsgd_norm",
                    bits=4, server_quantizer="topk", server_bits=8, concurrency=5)
    a, b = run(cfg), run(cfg)
    assert a.equals(b)
    loss = a[(a.split == "test") & (a.metric == "loss")].value
    assert loss.iloc[-1] < loss.iloc[0]
    assert {"hidden_state_distance", "broadcast_bits"} <= set(a[a.split == "sim"].metric)


def test_cli_runs_qafel(tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["run", "--set", "algorithm=qafel", "--set", "dataset=quadratic", "--set", "num_clients=6",
               "--set", "clients_per_round=2", "--set", "time_limit=20", "--set", "quantizer=qsgd_norm",
               "--set", "bits=4", "--set", "server_quantizer=topk", "--quiet", "--out", str(out)])
    assert rc == 0 and (out / "results.csv").read_text().splitlines()[1].startswith("qafel,quadratic")
    assert main(["run", "--set", "server_bits=0", "--quiet", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["qafl: error: server_bits: must be >= 1, got 0"]
