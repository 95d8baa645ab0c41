"""Speed-heterogeneity corrections (qafl_core/speed.py, docs/algorithm.md#speed-heterogeneity-corrections):
hand-computed factors and rescaled progress on scripted clocks, caps, the old blow-up case bounded, the
divergence criterion on a finite blow-up, checkpoint state, the quadratic's bias metrics and the report."""
from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch

from qafl_core import timing
from qafl_core.algorithms import QuAFL
from qafl_core.algorithms import quafl as quafl_module
from qafl_core.config import RunConfig
from qafl_core.quantize import make_quantizer
from qafl_core.runner import build_simulation, run
from qafl_core.speed import clip, heavy_tailed
from qafl_core.speed_report import tail_means
from qafl_core.store import check_plain
from qafl_core.theory import QuadraticTask

from engine_fakes import FakeTask, ScriptedClocks

# lr 2/3 with s = 2: client step size (2/3)(s+1)/s = 1.  Rounds every 2 time units: client 0's 0.5-unit steps
# give 3 steps per gap (0.5, 1, 1.5 end before 2; 2 does not), client 1's 1.5-unit steps give 1.
FAST_SLOW = {0: [0.5], 1: [1.5]}


def _sim(durations=FAST_SLOW, **kw):
    cfg = RunConfig(**{**dict(dataset="synthetic", sit=2.0, lr=2 / 3, local_steps=5, clients_per_round=2,
                              progress=False, time_limit=100.0), **kw})
    task = FakeTask(len(durations))
    sim = QuAFL(cfg, task, make_quantizer("identity", segments=task.segments), ScriptedClocks(durations))
    return sim, task


QUAD = dict(dataset="quadratic", num_clients=8, clients_per_round=3, sit=1.0, lr=0.1, progress=False,
            dataset_options={"dim": 5})


# ---------------------------------------------------------------------- lr: realised progress
def test_lr_factors_by_hand():
    sim, task = _sim(speed_correction="lr")
    sim.step()  # T = 0: nobody has progressed; both estimates are the prior K = 5
    sim.step()  # T = 2: estimates (0 + 5) / (1 + 1) = 2.5 each -> factors 1; steps 3 and 1
    assert task.calls == [(0, 3, pytest.approx(1.0)), (1, 1, pytest.approx(1.0))]
    sim.step()  # T = 4: H = (3 + 5) / 3 = 8/3 and (1 + 5) / 3 = 2, mean 7/3 -> factors 7/8 and 7/6
    assert task.calls[2:] == [(0, 3, pytest.approx(7 / 8)), (1, 1, pytest.approx(7 / 6))]
    assert sim.speed_state["steps"] == [3, 1] and sim.speed_state["contacts"] == [2, 2]
    assert sim.speed_state["pending"] == [[0, 3], [1, 1]]  # this round's contacts count from the next round on


def test_lr_factors_are_capped():
    # client 1 never completes a step: its estimate 5 / (c + 1) falls, its factor rises until the cap
    sim, task = _sim({0: [0.5], 1: [100.0]}, speed_correction="lr", speed_correction_cap=1.5)
    for _ in range(30):
        sim.step()
    assert sim.speed.factors == [pytest.approx(1 / 1.5), 1.5]
    assert task.calls[-1] == (0, 3, pytest.approx(1 / 1.5))
    assert clip(math.inf, 4.0) == 4.0 and clip(0.0, 4.0) == 0.25 and clip(2.0, 4.0) == 2.0


def test_cap_one_gives_the_uncorrected_run_bit_for_bit():
    base = dict(QUAD, time_limit=30.0, eval_every=5.0)
    plain = run(base).drop(columns="config_hash")
    for mode in ("lr", "normalized", "estimate"):
        capped = run({**base, "speed_correction": mode, "speed_correction_cap": 1.0}).drop(columns="config_hash")
        pd.testing.assert_frame_equal(plain, capped, check_exact=True)


# ---------------------------------------------------------------------- normalized (FedNova-like)
def test_normalized_progress_by_hand():
    sim, task = _sim(speed_correction="normalized")
    sim.step()
    sim.step()  # T = 2: mean H 2.5; client 0 moved -3 (3 steps of gradient 1) -> x 2.5/3; client 1 -2 -> x 2.5
    assert task.calls == [(0, 3, 1.0), (1, 1, 1.0)]  # the step size is untouched
    assert torch.allclose(sim.server, torch.full((2,), -2.5))          # (0 - 2.5 - 5) / 3
    assert torch.allclose(sim.clients[0], torch.full((2,), -5 / 3))    # 0/3 + 2/3 (-2.5)
    assert torch.allclose(sim.clients[1], torch.full((2,), -10 / 3))   # 0/3 + 2/3 (-5)


def test_normalized_scale_is_capped():
    sim, _ = _sim(speed_correction="normalized", speed_correction_cap=2.0)
    sim.step()
    sim.step()  # client 1's scale 2.5 is clipped to 2: it sends -4
    assert torch.allclose(sim.server, torch.full((2,), (0 - 2.5 - 4) / 3))


# ---------------------------------------------------------------------- estimate and the old blow-up
def test_old_blow_up_case_is_bounded():
    # n = 8, s = 3, sit = 1, seed 0: the old uncapped estimate gave a slow client step size 102.9 instead of 0.133
    cfg = RunConfig(**{**QUAD, "dataset_options": {}, "time_limit": 200.0, "eval_every": 10.0})
    base = 0.1 * 4 / 3
    for mode in ("estimate", "lr"):
        df = run(cfg.replace(speed_correction=mode))
        sim = build_simulation(cfg.replace(speed_correction=mode))
        assert max(sim.speed.factors) <= 4.0 and min(sim.speed.factors) >= 0.25
        assert max(sim.client_lr) == pytest.approx(base)  # factors multiply at each contact, client_lr stays the base
        assert not (df.split == "status").any()
        loss = df[(df.split == "test") & (df.metric == "loss")].value
        assert loss.iloc[-1] < loss.iloc[0]
    estimate = build_simulation(cfg.replace(speed_correction="estimate")).speed.factors
    assert estimate[0] == 4.0  # the slow clients (first 30 %) are in the heavy-tailed regime: at the cap
    assert heavy_tailed(8.0, 1.0, 3 / 8) and not heavy_tailed(2.0, 1.0, 3 / 8)


def test_speed_lr_correction_is_refused_with_a_pointer():
    with pytest.raises(ValueError, match="^speed_lr_correction: replaced by speed_correction"):
        RunConfig(speed_lr_correction=True)
    assert RunConfig(speed_lr_correction=False).speed_correction == "none"


@pytest.mark.parametrize("kw, needle", [
    (dict(speed_correction="fast"), "speed_correction: unknown value 'fast'"),
    (dict(speed_correction="lr", algorithm="fedavg"), "speed_correction: only QuAFL"),
    (dict(speed_correction_cap=0.5), "speed_correction_cap: must be >= 1"),
    (dict(speed_correction_cap=float("inf")), "speed_correction_cap: expected a finite number"),
    (dict(divergence_factor=1.0), "divergence_factor: must be > 1"),
    (dict(divergence_factor="big"), "divergence_factor: expected a finite number"),
])
def test_keys_are_validated(kw, needle):
    with pytest.raises(ValueError) as exc:
        RunConfig(**kw)
    assert str(exc.value).startswith(needle)


def test_heavy_tailed_threshold():
    # m ln(1/(1-p)) >= r: 8 ln(4/3) = 2.30
    assert heavy_tailed(8.0, 2.0, 0.25) and not heavy_tailed(8.0, 2.4, 0.25) and heavy_tailed(0.1, 5.0, 1.0)


# ---------------------------------------------------------------------- one lazy-progress rule
def test_lazy_progress_by_hand_and_shared(monkeypatch):
    draws = iter([1.0, 5.0])
    assert timing.lazy_progress(0.0, 0.5, 2.0, 5, lambda: next(draws)) == (2, 5.0)  # ends 0.5, 1.5; 6.5 > 2
    assert timing.lazy_progress(0.0, 3.0, 3.0, 5, lambda: 1.0) == (0, 3.0)          # strictly before the contact
    assert timing.lazy_progress(0.0, 0.1, 9.0, 2, lambda: 0.1) == (2, 0.1)          # at most K
    assert quafl_module.lazy_progress is timing.lazy_progress
    calls = []

    def counting(*args):
        calls.append(args)
        return original(*args)

    original = timing.lazy_progress
    monkeypatch.setattr(timing, "lazy_progress", counting)
    timing.expected_steps_per_contact(2.0, 1.0, 0.5, 5, "exponential", seed=0, num_contacts=7)
    assert len(calls) == 7


# ---------------------------------------------------------------------- checkpoint state
def test_running_estimates_survive_a_checkpoint():
    cfg = RunConfig(**{**QUAD, "time_limit": 60.0, "speed_correction": "lr"})
    a = build_simulation(cfg)
    for _ in range(10):
        a.step()
    state = copy.deepcopy(a.state_dict())
    check_plain(state)  # checkpoints hold plain data only (qafl_core/store.py)
    assert "speed_state" in state and sum(state["speed_state"]["contacts"]) > 0
    for _ in range(15):
        a.step()
    b = build_simulation(cfg)
    b.load_state_dict(state)
    for _ in range(15):
        b.step()
    assert torch.equal(a.server, b.server) and torch.equal(a.clients, b.clients)
    assert build_simulation(cfg.replace(speed_correction="none")).state_dict()["speed_state"] is None


# ---------------------------------------------------------------------- divergence
def test_finite_blow_up_is_marked_diverged_with_its_curve():
    # client step 3 * 4/3 = 4: x <- x - 4 (x - c) triples the distance to c at every step, finite for a long while
    cfg = dict(QUAD, lr=3.0, sit=1.0, time_limit=500.0, eval_every=2.0)
    df = run(cfg)
    status = df[df.split == "status"]
    assert list(status.metric) == ["diverged"]
    loss = df[(df.split == "test") & (df.metric == "loss")]
    t = float(status.time.iloc[0])
    assert loss.time.max() == t and t < 50.0                      # the curve is kept up to the divergence
    assert math.isfinite(loss.value.iloc[-1]) and loss.value.iloc[-1] > 1e4 * loss.value.iloc[0]
    assert (loss.value.iloc[:-1] <= 1e4 * loss.value.iloc[0]).all()
    late = run({**cfg, "divergence_factor": None})
    late_loss = late[(late.split == "test") & (late.metric == "loss")]
    assert late_loss.value.max() > 1e60  # without the finite bound it runs on to absurd but finite losses
    assert float(late[late.split == "status"].time.iloc[0]) > 10 * t


def test_divergence_reference_is_at_least_one():
    # a start at the optimum (loss 0.5 * G^2 = 0.005): the bound is factor * max(1, |loss_0|) = 10
    from qafl_core.runner import _diverged, _Recorder

    rec = _Recorder(RunConfig(**{**QUAD, "divergence_factor": 10.0}), 8)
    rec.rows = [{"split": "test", "metric": "loss", "value": 0.005}]
    assert not _diverged(rec, {"loss": 9.9}) and _diverged(rec, {"loss": 10.1})
    assert _diverged(rec, {"loss": 1.0, "grad_sq": math.nan})
    rec.cfg = rec.cfg.replace(divergence_factor=None)
    assert not _diverged(rec, {"loss": 1e30})


# ---------------------------------------------------------------------- quadratic metrics
def test_bias_fast_and_dist_opt_by_hand():
    task = QuadraticTask(num_clients=4, seed=0, dim=3, heterogeneity=2.0, offset=1.0)
    assert "bias_fast" not in task.evaluate(task.c_bar.float())
    task.set_slow_clients([True, False, False, True])
    fast_opt = task.centres[[1, 2]].double().mean(0)
    at_opt, at_fast = task.evaluate(task.c_bar.float()), task.evaluate(fast_opt.float())
    assert at_opt["bias_fast"] == pytest.approx(0.0, abs=1e-6) and at_opt["dist_opt"] == pytest.approx(0.0, abs=1e-6)
    assert at_fast["bias_fast"] == pytest.approx(1.0, abs=1e-5)
    assert at_fast["dist_opt"] == pytest.approx(float((fast_opt - task.c_bar).norm()), rel=1e-5)
    x = task.c_bar + 2 * (fast_opt - task.c_bar) + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    u = fast_opt - task.c_bar
    assert task.evaluate(x.float())["bias_fast"] == pytest.approx(float((x - task.c_bar) @ u / (u @ u)), rel=1e-5)
    task.set_slow_clients([False] * 4)
    assert "bias_fast" not in task.evaluate(x.float())


def test_runs_report_bias_toward_the_fast_clients():
    df = run(dict(QUAD, time_limit=20.0, eval_every=10.0))
    test = df[df.split == "test"]
    assert {"bias_fast", "dist_opt"} <= set(test.metric)
    grad, dist = (test[test.metric == m].value.to_numpy() for m in ("grad_sq", "dist_opt"))
    assert dist ** 2 == pytest.approx(grad, rel=1e-6)


# ---------------------------------------------------------------------- report
def test_tail_means_by_hand():
    rows = []
    for run_id, seed, values in ((0, 0, [5.0, 1.0, 3.0]), (1, 1, [7.0, 2.0, 2.0])):
        for t, v in zip((0.0, 50.0, 100.0), values):
            rows.append({"run": run_id, "seed": seed, "time": t, "split": "test", "metric": "bias_fast", "value": v})
    rows.append({"run": 1, "seed": 1, "time": 100.0, "split": "status", "metric": "diverged", "value": 1.0})
    out = tail_means(pd.DataFrame(rows), ["test/bias_fast", "test/dist_opt"], tail=0.5)
    assert out["test/bias_fast"].tolist() == [2.0, 2.0] and out.diverged.tolist() == [0.0, 1.0]
    assert out["test/dist_opt"].isna().all()
    with pytest.raises(ValueError, match="--tail"):
        tail_means(pd.DataFrame(rows), ["test/bias_fast"], tail=0.0)


def test_report_table_by_hand(tmp_path):
    from qafl_core.speed_report import main, table

    cfg = tmp_path / "speed.yaml"
    cfg.write_text("dataset: quadratic\nnum_clients: 8\nclients_per_round: 3\nsit: 1.0\nslow_mean: 8.0\n"
                   "grid:\n  speed_correction: [none, lr]\n")
    rows = []
    for run_id, seed, bias in ((0, 0, 0.9), (1, 1, 0.2), (2, 0, 0.7), (3, 1, 0.4)):
        for t in (0.0, 10.0):
            rows.append({"run": run_id, "seed": seed, "time": t, "split": "test", "metric": "bias_fast",
                         "value": 5.0 if t == 0 else bias})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    # runs are numbered grid point by grid point, seeds within each: none = runs 0, 1 (biases 0.9, 0.2)
    lines = table(cfg, tmp_path, metrics=["test/bias_fast"]).splitlines()
    assert lines[0] == "| speed_correction | stuck | seeds | diverged | bias_fast |"
    assert lines[2] == "| none | yes | 2 | 0 | 0.550 ± 0.495 |"   # 8 ln(8/5) = 3.76 >= round time 1: stuck
    assert lines[3] == "| lr | yes | 2 | 0 | 0.550 ± 0.212 |"
    wide = table(cfg, tmp_path, metrics=["test/bias_fast", "test/bias_fast"], pivot="speed_correction").splitlines()
    assert wide[0] == "| stuck | seeds | none | lr |"
    assert wide[2] == "| yes | 2 | 0.55 ± 0.49 / 0.55 ± 0.49 | 0.55 ± 0.21 / 0.55 ± 0.21 |"
    with pytest.raises(ValueError, match="--pivot: 'sit'"):
        table(cfg, tmp_path, pivot="sit")
    assert main(["--config", str(cfg), "--out", str(tmp_path / "missing")]) == 2
