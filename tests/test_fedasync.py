"""FedAsync (Xie, Koyejo, Gupta 2019, arXiv:1903.03934): hand-computed merges for the constant, polynomial and
hinge staleness functions, the proximal worker, version counting on a scripted clock, quantized messages
(uploads decoded against the server model), checkpoints, and real runs through the runner and the CLI."""
from __future__ import annotations

import pytest
import torch

from qafl_core.algorithms import FedAsync
from qafl_core.algorithms.fedasync import mix, staleness_factor
from qafl_core.cli import main
from qafl_core.config import RunConfig
from qafl_core.runner import run

from engine_fakes import FakeTask, one_thread, resumed_pair, scripted_simulation  # noqa: F401 (a fixture)


pytestmark = pytest.mark.usefixtures("one_thread")


X, X_NEW, ALPHA = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0]), 0.6


def _merge(kind, d, a=0.5, b=4.0):
    return mix(X.clone(), X_NEW, ALPHA * staleness_factor(kind, d, a, b))


@pytest.mark.parametrize("d", [0, 1, 7, 50])
def test_constant_merge_by_hand(d):
    assert torch.allclose(_merge("constant", d), torch.tensor([2.2, 0.8]))


@pytest.mark.parametrize("d,alpha_t,expected", [(0, 0.6, (2.2, 0.8)), (3, 0.3, (1.6, 1.4)),
                                                (6, 0.226779, (1.453557, 1.546443))])
def test_polynomial_merge_by_hand(d, alpha_t, expected):
    assert ALPHA * staleness_factor("poly", d, 0.5, 4.0) == pytest.approx(alpha_t, abs=1e-6)
    assert torch.allclose(_merge("poly", d), torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("d,alpha_t,expected", [(3, 0.6, (2.2, 0.8)), (4, 0.6, (2.2, 0.8)),
                                                (6, 0.6 / 21, (1.057143, 1.942857))])
def test_hinge_merge_by_hand(d, alpha_t, expected):
    assert ALPHA * staleness_factor("hinge", d, 10.0, 4.0) == pytest.approx(alpha_t, abs=1e-7)
    assert torch.allclose(_merge("hinge", d, a=10.0), torch.tensor(expected), atol=1e-6)


class HalfSquare(FakeTask):
    """f(x) = (x - 4)^2 / 2 for every client, in every coordinate: one step x <- x - lr (x - 4)."""

    def local_sgd(self, row, client, num_steps, lr):
        self.calls.append((client, num_steps, lr))
        for _ in range(num_steps):
            row.sub_(lr * (row - 4.0))


def _sim(task, durations, **kw):
    cfg = RunConfig(**{**dict(algorithm="fedasync", dataset="synthetic", clients_per_round=1, lr=0.1, sit=0.0,
                              progress=False), **kw})
    return scripted_simulation(FedAsync, task, durations, cfg)


def test_proximal_worker_by_hand():
    # x_tau = 0, gamma = 0.1, rho = 1, H = 2: 0 -> 0.4 -> 0.72; merged into x = 0 with alpha 0.5, d = 0: 0.36
    sim = _sim(HalfSquare(1, dim=1), {0: [1.0]}, local_steps=2, fedasync_rho=1.0, fedasync_alpha=0.5)
    sim.step()
    assert float(sim.clients[0]) == pytest.approx(0.36)     # the client downloaded the merged model
    assert float(sim.server) == pytest.approx(0.36)
    assert sim.task.calls == [(0, 1, 0.1), (0, 1, 0.1)]     # one step at a time, the pull after each
    no_prox = _sim(HalfSquare(1, dim=1), {0: [1.0]}, local_steps=2, fedasync_alpha=0.5)
    no_prox.step()
    assert float(no_prox.server) == pytest.approx(0.5 * (4 - 4 * 0.81))   # 0 -> 0.4 -> 0.76, merged: 0.38
    assert no_prox.task.calls == [(0, 2, 0.1)]


def test_versions_count_merges_on_a_scripted_clock():
    # n = 2, C = 2, K = 1, lr 1, sit 0: client 0 (steps of 1, moves by -1) merges at t = 1..5; client 1 (a 5.5
    # step, moves by -2) was dispatched at version 0 and merges at t = 5.5 at version 5: d = 5
    seen = []
    sim = _sim(FakeTask(2), {0: [1.0], 1: [5.5]}, lr=1.0, local_steps=1, fedasync_staleness="poly")
    real = sim.alpha_t
    sim.alpha_t = lambda d: (seen.append(d), real(d))[1]
    for _ in range(5):
        sim.step()
    # each job of client 0 starts right after the previous merge: d = 0, x <- x - 0.6
    assert seen == [0] * 5 and sim.server_steps == 5 and torch.allclose(sim.server, torch.full((2,), -3.0))
    assert sim.jobs.version[0] == 5          # client 0's next job: dispatched at t = 5, version 5
    sim.step()
    assert seen[-1] == 5 and sim.server_steps == 6 and sim.time == 5.5
    a_t = 0.6 * 6 ** -0.5
    assert torch.allclose(sim.server, torch.full((2,), (1 - a_t) * -3.0 + a_t * -2.0))
    sim.step()          # client 0's job dispatched at version 5 merges at t = 6, after client 1's merge: d = 1
    assert seen[-1] == 1 and sim.server_steps == 7


def test_dispatched_and_merged_at_the_same_version_has_staleness_zero():
    sim = _sim(FakeTask(1), {0: [1.0]}, lr=1.0, local_steps=1)
    for _ in range(5):
        sim.step()
    assert sim.server_steps == 5 and sim.jobs.version[0] == 5
    seen = []
    real = sim.alpha_t
    sim.alpha_t = lambda d: (seen.append(d), real(d))[1]
    sim.step()
    assert seen == [0] and sim.server_steps == 6


def test_uploads_are_decoded_against_the_server_model_and_bits_count_both_ways():
    class Far(FakeTask):       # models near 100: against zero a 8-bit lattice window of +-1.28 would wrap
        def init_vector(self):
            return torch.full((self.dim,), 100.0)

    sim = _sim(Far(2), {0: [1.0], 1: [1.5]}, lr=0.1, quantizer="lattice", bits=8, lattice_eps=0.01)
    for _ in range(6):
        sim.step()
    assert sim.decode_failures == 0
    assert sim.bits_up == sim.bits_down == 6 * 8 * 2
    assert 97.0 < float(sim.server.min()) and float(sim.server.max()) < 100.0       # it moved, by 6 damped jobs
    lattice = sim.quantizer
    assert lattice.decode(lattice.encode(sim.clients[0]), torch.zeros(2)).failures == 2    # zero as key would wrap


def test_fedasync_config_is_validated():
    for kw, msg in [(dict(fedasync_alpha=0.0), "fedasync_alpha: must be > 0"),
                    (dict(fedasync_alpha=1.5), "fedasync_alpha: must be in (0, 1]"),
                    (dict(fedasync_staleness="exp"), "fedasync_staleness: unknown value 'exp'"),
                    (dict(fedasync_a=-1.0), "fedasync_a: must be >= 0"),
                    (dict(fedasync_rho=float("nan")), "fedasync_rho: expected a finite number")]:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
            RunConfig(**kw)


SYNTH = dict(algorithm="fedasync", dataset="synthetic", dataset_options={"num_tasks": 30}, num_clients=8,
             clients_per_round=2, sit=0.5, lr=0.05, batch_size=8, progress=False)


@pytest.mark.parametrize("kw", [dict(concurrency=3, fedasync_staleness="hinge", fedasync_a=10.0, fedasync_rho=0.01),
                                dict(quantizer="qsgd", bits=8, fedasync_staleness="poly")])
def test_checkpoint_is_plain_and_resumes_exactly(kw):
    cfg = RunConfig(**SYNTH, **kw)
    a, b = resumed_pair(cfg, 10, 15)
    assert torch.equal(a.server, b.server) and torch.equal(a.clients, b.clients) and a.counters() == b.counters()


def test_real_run_learns_and_is_deterministic():
    cfg = RunConfig(**SYNTH, concurrency=3, time_limit=150.0, eval_every=50.0, fedasync_staleness="poly")
    a, b = run(cfg), run(cfg)
    assert a.equals(b)
    loss = a[(a.split == "test") & (a.metric == "loss")].value
    assert loss.iloc[-1] < loss.iloc[0]
    last = a.iloc[-1]
    assert last.server_steps > 10 and last.local_steps == 5 * last.server_steps and last.bits_up == last.bits_down
    assert not a.value.equals(run(cfg.replace(seed=1)).value)


def test_cli_runs_fedasync(tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["run", "--set", "algorithm=fedasync", "--set", "dataset=quadratic", "--set", "num_clients=6",
               "--set", "clients_per_round=2", "--set", "time_limit=20", "--set", "fedasync_staleness=hinge",
               "--quiet", "--out", str(out)])
    assert rc == 0 and (out / "results.csv").read_text().splitlines()[1].startswith("fedasync,quadratic")
    assert main(["run", "--set", "fedasync_staleness=linear", "--quiet", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qafl: error: fedasync_staleness: unknown value 'linear'")
