"""FedBuff concurrency (Nguyen et al. 2022, arXiv:2106.06639) and the shared asynchronous event loop
(:mod:`qafl_core.algorithms.asynchronous`): the default C = n reproduces the FedBuff of before the concurrency
option bit for bit (a frozen copy of it is the reference below), C < n follows the documented rules on a
scripted clock, batched waves equal one-at-a-time training, checkpoints are plain and resume exactly."""
from __future__ import annotations

import heapq
from collections import Counter

import pytest
import torch

from qafl_core.algorithms import FedBuff
from qafl_core.algorithms.base import Simulation
from qafl_bench.workloads import random_dataset
from qafl_core.cli import main
from qafl_core.config import RunConfig
from qafl_core.local import NeuralTask
from qafl_core.quantize import make_quantizer
from qafl_core.runner import build_simulation, run
from qafl_core.timing import ClientClocks

from engine_fakes import FakeTask, ScriptedClocks, one_thread, resumed_pair  # noqa: F401 (a fixture)


pytestmark = pytest.mark.usefixtures("one_thread")


class PreConcurrencyFedBuff(Simulation):
    """FedBuff as it was before ``concurrency`` (every client always busy), frozen as the reference."""

    name = "fedbuff"

    def __init__(self, cfg, task, quantizer, clocks):
        super().__init__(cfg, task, quantizer, clocks)
        self.clients = self.server.unsqueeze(0).repeat(self.n, 1)
        self.start_step = [0] * self.n
        self.queue = [(clocks.draw_sum(i, cfg.local_steps), i) for i in range(self.n)]
        heapq.heapify(self.queue)
        self._down_cache = None
        self.client_lr = cfg.lr * (cfg.clients_per_round / self.n if cfg.fedbuff_client_lr_s_over_n else 1.0)
        self._delta = torch.empty_like(self.server)

    weight = FedBuff.weight

    def _down_message(self):
        if self._down_cache is None or self._down_cache[0] != self.server_steps:
            self._down_cache = (self.server_steps, self.encode(self.server, "down"))
        return self._down_cache[1]

    def _restart(self, i):
        down = self._down_message()
        row = self.clients[i]
        row.copy_(self.decode(down, row, "server->client"))      # the channel counts its bits
        self.start_step[i] = self.server_steps
        heapq.heappush(self.queue, (self.time + self.clocks.draw_sum(i, self.cfg.local_steps), i))

    def step(self):
        cfg, z = self.cfg, self.cfg.effective_buffer_size
        acc = self.accumulator()
        for j in range(z):
            finish, i = heapq.heappop(self.queue)
            self.time = max(self.time, finish)
            row = self.clients[i]
            start = self._delta.copy_(row)
            self.local_sgd(row, i, cfg.local_steps, self.client_lr * self.lr_factor())
            up = self.encode(start.sub_(row), "up", i)
            acc.add_(self.decode(up, self.zeros, "client->server"), alpha=self.weight(self.server_steps - self.start_step[i]))
            self.record_contact(i, cfg.local_steps)
            if j < z - 1:
                self._restart(i)
        self.apply_server_delta(acc.div_(z), cfg.server_lr)
        self.server_steps += 1
        self.time += cfg.round_sit
        self._restart(i)


def _pair(cfg, steps):
    sims = []
    for cls in (PreConcurrencyFedBuff, FedBuff):
        ref = build_simulation(cfg)
        sim = cls(cfg, ref.task, ref.quantizer, ClientClocks(ref.n, cfg.timing, cfg.slow_fraction, cfg.fast_mean,
                                                            cfg.slow_mean, cfg.seed))
        sims.append(sim)
        for _ in range(steps):
            sim.step()
    return sims


QUAD = dict(algorithm="fedbuff", dataset="quadratic", num_clients=12, clients_per_round=3, sit=0.5, lr=0.05,
            progress=False, time_limit=1e9)
SYNTH = dict(algorithm="fedbuff", dataset="synthetic", dataset_options={"num_tasks": 30}, num_clients=10,
             clients_per_round=3, sit=0.3, batch_size=8, progress=False, time_limit=1e9)


@pytest.mark.parametrize("kw", [
    dict(QUAD),
    dict(QUAD, quantizer="lattice", bits=8, lattice_eps=1e-3, staleness="sqrt", buffer_size=4),   # wraps: failures
    dict(QUAD, quantizer="qsgd", bits=4, staleness="poly", staleness_exponent=0.7, sit=0.0),
    dict(SYNTH, quantizer="qsgd", bits=6, fedbuff_client_lr_s_over_n=True, lr_decay=True, time_limit=30.0),
    dict(SYNTH, slow_fraction=0.5, clients_per_round=5, sit=0.0),
])
def test_default_concurrency_is_the_pre_concurrency_fedbuff_bit_for_bit(kw):
    old, new = _pair(RunConfig(**kw), 25)
    assert new.concurrency == new.n
    assert torch.equal(old.server, new.server) and torch.equal(old.clients, new.clients)
    assert old.counters() == new.counters() and old.decode_failures == new.decode_failures
    assert old.local_steps > 0 and not torch.equal(new.server, new.task.init_vector())
    if kw.get("quantizer") == "lattice":
        assert new.decode_failures > 0          # the key semantics are exercised, not only the happy path


def test_concurrency_by_hand_on_a_scripted_clock(monkeypatch):
    from qafl_core.algorithms import asynchronous

    script, seen = [0, 1, 0, 1, 0, 0], []

    def draw(self, m):
        seen.append(list(self.idle))
        return script.pop(0)

    monkeypatch.setattr(asynchronous.ClientJobs, "draw", draw)
    cfg = RunConfig(algorithm="fedbuff", dataset="synthetic", clients_per_round=2, local_steps=1, lr=1.0, sit=0.5,
                    concurrency=2, staleness="sqrt", progress=False)
    task = FakeTask(3)   # a job of client i moves its row by -(i+1): its upload is Delta = i+1
    sim = FedBuff(cfg, task, make_quantizer("identity"), ScriptedClocks({0: [1.0], 1: [2.0], 2: [3.0]}))
    # t = 0: idle [0, 1, 2], draw 0 -> client 0 (idle [2, 1]); draw 1 -> client 1 (idle [2])
    assert seen == [[0, 1, 2], [2, 1]] and sorted(sim.jobs.queue) == [(1.0, 0), (2.0, 1)]
    sim.step()
    # t = 1: client 0 arrives (tau 0), frees a slot: idle [2, 0], draw 0 -> client 2 starts at 1 from X_0 (ends 4).
    # t = 2: client 1 arrives (tau 0), fills the buffer: X_1 = 0 - (1 + 2)/2 = -1.5, t = 2.5; idle [0, 1],
    # draw 1 -> client 1 starts at 2.5 from X_1 (ends 4.5)
    assert seen[2:] == [[2, 0], [0, 1]]
    assert [c[0] for c in task.calls] == [0, 1] and sim.time == 2.5 and sim.server_steps == 1
    assert torch.allclose(sim.server, torch.full((2,), -1.5))
    assert torch.equal(sim.clients[2], torch.zeros(2)) and torch.allclose(sim.clients[1], torch.full((2,), -1.5))
    assert sim.jobs.version == [0, 1, 0] and sorted(sim.jobs.queue) == [(4.0, 2), (4.5, 1)]
    sim.step()
    # t = 4: client 2 arrives; it started at version 0, the server is at 1: tau = 1, weight 1/sqrt(2); idle [0, 2],
    # draw 0 -> client 0 starts at 4 from X_1. t = 4.5: client 1 arrives (tau 0). X_2 = -1.5 - (3/sqrt 2 + 2)/2
    assert seen[4:] == [[0, 2], [2, 1]]
    assert [c[0] for c in task.calls] == [0, 1, 2, 1] and sim.time == 5.0
    assert torch.allclose(sim.server, torch.full((2,), -1.5 - (3 / 2 ** 0.5 + 2) / 2))
    assert torch.allclose(sim.clients[0], torch.full((2,), -1.5))      # downloaded X_1 at t = 4
    # t = 5 (after sit): idle [2, 1], draw 0 -> client 2 starts from X_2 (version 2), ends 8; client 1 stays idle
    assert sim.jobs.version == [1, 1, 2] and sorted(sim.jobs.queue) == [(5.0, 0), (8.0, 2)] and sim.jobs.idle == [1]
    assert sim.bits_up == 4 * 64 and sim.bits_down == 4 * 64            # 4 uploads, 4 downloads of 2 floats


def test_concurrency_keeps_C_jobs_of_distinct_clients_and_draws_uniformly():
    # equal exponential speeds: by symmetry every client gets the same share of the starts
    cfg = RunConfig(algorithm="fedbuff", dataset="synthetic", clients_per_round=1, local_steps=1, lr=0.1, sit=0.0,
                    concurrency=2, slow_fraction=0.0, progress=False)
    n = 5
    sim = FedBuff(cfg, FakeTask(n), make_quantizer("identity"), ClientClocks(n, "exponential", 0.0, 2.0, 8.0, 0))
    starts = Counter()
    for _ in range(4000):
        sim.step()
        running = [i for _, i in sim.jobs.queue]
        assert len(running) == 2 and len(set(running)) == 2
        assert sorted(running + sim.jobs.idle) == list(range(n))
        started = [i for i in running if sim.jobs.version[i] == sim.server_steps]
        assert len(started) == 1                  # Z = 1: one start per server step, after it
        starts.update(started)
    expected = 4000 / n
    chi2 = sum((starts[i] - expected) ** 2 / expected for i in range(n))
    assert chi2 < 25, starts                     # 4 degrees of freedom: p < 1e-4


def test_concurrency_is_validated():
    with pytest.raises(ValueError, match="concurrency: must be >= 1"):
        RunConfig(concurrency=0)
    with pytest.raises(ValueError, match="concurrency: C = 9 exceeds num_clients = 8"):
        RunConfig(num_clients=8, concurrency=9)
    with pytest.raises(ValueError, match="concurrency: C = 4 exceeds the 3 clients"):
        FedBuff(RunConfig(clients_per_round=2, concurrency=4), FakeTask(3), make_quantizer("identity"),
                ScriptedClocks({0: [1.0], 1: [1.0], 2: [1.0]}))
    with pytest.raises(ValueError, match="concurrency: expected an integer"):
        RunConfig.from_dict({"concurrency": "many"})


def _mlp_sim(batched, **kw):
    cfg = RunConfig(dataset="mnist", algorithm="fedbuff", clients_per_round=3, local_steps=3, batch_size=8, lr=0.1,
                    sit=0.2, progress=False, time_limit=1e9, **kw)
    task = NeuralTask(random_dataset("mnist", 8, 30, (1, 28, 28), 10), "mlp", 0, 8)
    task.batched = batched
    return build_simulation(cfg, task)


# identity messages only: with a stochastic quantizer one float-rounding difference moves a coordinate to the
# next level and the two runs decorrelate, which says nothing about the grouping
@pytest.mark.parametrize("kw", [{}, {"concurrency": 3}, {"concurrency": 5, "staleness": "sqrt"}])
def test_batched_waves_equal_one_at_a_time_training(kw):
    seq, bat = _mlp_sim(False, **kw), _mlp_sim(True, **kw)
    groups = []
    real = bat.task.local_sgd_many

    def record(rows, clients, steps, lrs):
        groups.append(list(clients))
        real(rows, clients, steps, lrs)

    bat.task.local_sgd_many = record
    for _ in range(12):
        seq.step()
        bat.step()
    assert seq.counters() == bat.counters() and seq.jobs.version == bat.jobs.version
    assert torch.allclose(seq.server, bat.server, atol=1e-6, rtol=0)
    assert torch.allclose(seq.clients, bat.clients, atol=1e-6, rtol=0)
    assert not torch.equal(seq.server, seq.task.init_vector())
    assert all(len(g) == len(set(g)) for g in groups)          # a wave never holds one client twice
    assert max(len(g) for g in groups) == 3 and sum(map(len, groups)) == 12 * 3


def test_a_job_started_and_finished_in_one_flush_trains_from_its_download():
    # n = 2, Z = 3, C = n: client 0 (steps of 1) reports at 1 and 2 before client 1 (5) completes the buffer.
    # Its second job started at 1 from X_0 (the download waits for its first job's upload): two waves.
    cfg = RunConfig(algorithm="fedbuff", dataset="synthetic", clients_per_round=2, buffer_size=2, local_steps=1,
                    lr=1.0, sit=0.0, progress=False)
    sim = FedBuff(cfg, FakeTask(2), make_quantizer("identity"), ScriptedClocks({0: [1.0], 1: [5.0]}))
    waves = []
    real = sim._run_wave
    sim._run_wave = lambda wave: (waves.append([a.client for a in wave]), real(wave))
    sim.step()
    assert waves == [[0], [0]] and torch.allclose(sim.server, torch.full((2,), -1.0))


@pytest.mark.parametrize("kw", [dict(QUAD, concurrency=4, quantizer="qsgd", bits=6, staleness="sqrt"),
                                dict(SYNTH, num_clients=6, concurrency=4)])
def test_checkpoint_is_plain_and_resumes_exactly(kw):
    cfg = RunConfig(**kw)
    a, b = resumed_pair(cfg, 6, 8)
    assert torch.equal(a.server, b.server) and torch.equal(a.clients, b.clients) and a.counters() == b.counters()
    assert a.jobs.queue == b.jobs.queue and a.jobs.idle == b.jobs.idle


def test_run_with_concurrency_is_deterministic_and_learns():
    cfg = RunConfig(**{**SYNTH, "time_limit": 60.0, "eval_every": 20.0, "concurrency": 4})
    a, b = run(cfg), run(cfg)
    assert a.equals(b)
    loss = a[(a.split == "test") & (a.metric == "loss")].value
    assert loss.iloc[-1] < loss.iloc[0]
    other = run(cfg.replace(concurrency=None))
    assert other.local_steps.max() > a.local_steps.max()       # every client busy: more jobs reach the server


def test_cli_accepts_concurrency(tmp_path, capsys):
    rc = main(["run", "--set", "algorithm=fedbuff", "--set", "dataset=quadratic", "--set", "num_clients=6",
               "--set", "clients_per_round=2", "--set", "concurrency=3", "--set", "time_limit=20", "--quiet",
               "--out", str(tmp_path / "o")])
    assert rc == 0 and (tmp_path / "o" / "results.csv").is_file()
    assert main(["run", "--set", "concurrency=0", "--quiet", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["qafl: error: concurrency: must be >= 1, got 0"]


def test_fedbuff_concurrency_bench_line_on_a_tiny_workload(capsys):
    from qafl_bench import suite as bench

    line = bench.bench_fedbuff_concurrency("tiny")
    assert line.name == "fedbuff_concurrency" and line.passed is None and line.target == "reported"
    assert 0 < line.value < 100 and line.note.startswith("reported, no target")
    for res in (line.detail["sit=10"], line.detail["sit=1"]):
        assert res["local_steps_n"] > 0 and res["local_steps_2s"] > 0 and len(res["ratios"]) == 1
    # with sit = 1 the tiny run is client-bound: fewer jobs at concurrency 2s reach the server
    assert line.detail["sit=1"]["local_steps_2s"] < line.detail["sit=1"]["local_steps_n"]
    assert main(["bench", "--tiny", "--json", "--only", "fedbuff_concurrency"]) == 0
    assert "fedbuff_concurrency" in capsys.readouterr().out


def test_batchnorm_statistics_take_the_arrivals_mean_not_stale_displacements():
    # Fashion-MNIST CNN (two BatchNorm layers) on random images, every client busy: most updates are stale.
    # Stepping the running variances by stale displacements drove them below zero (NaN loss); they must be
    # the plain mean of the Z arrivals' trained statistics, and the parameters still get the buffered step.
    cfg = RunConfig(algorithm="fedbuff", dataset="fmnist", model="fmnist_cnn", num_clients=6, clients_per_round=3,
                    local_steps=2, batch_size=4, lr=0.05, sit=0.5, progress=False, time_limit=1e9)
    ds = random_dataset("fmnist", cfg.num_clients, 12, (1, 28, 28), 10, seed=1)
    sim = build_simulation(cfg, NeuralTask(ds, "fmnist_cnn", cfg.seed, cfg.batch_size))
    p, flat = sim.num_params, sim.task.flat
    assert 0 < p < sim.task.dim                      # the vector holds BatchNorm statistics after the parameters
    arrived, real = [], sim.receive

    def receive(arrival, start):
        arrived.append((arrival.staleness, sim.clients[arrival.client][p:].clone(), start[:p].clone(),
                        sim.clients[arrival.client][:p].clone()))
        real(arrival, start)

    sim.receive = receive
    for _ in range(12):
        before, arrived[:] = sim.server.clone(), []
        sim.step()
        stats = torch.stack([a[1] for a in arrived])
        assert torch.allclose(sim.server[p:], stats.mean(0), atol=1e-6, rtol=1e-6)
        step = torch.stack([a[2] - a[3] for a in arrived]).mean(0)
        assert torch.allclose(sim.server[:p], before[:p] - step, atol=1e-6, rtol=1e-5)
    assert max(a[0] for a in arrived) > 0            # stale arrivals were exercised
    variances = [v for name, v in flat.views(sim.server).items() if name.endswith("running_var")]
    assert variances and all(bool((v > 0).all()) for v in variances)
