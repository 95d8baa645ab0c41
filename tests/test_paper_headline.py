"""The paper profile's headline numbers from archived runs (qafl_core/experiments/paper_headline.py)."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qafl_core import archive
from qafl_core.experiments import paper_headline as ph
from qafl_core.runner import COLUMNS

SPEC = {"base": {"dataset": "quadratic", "num_clients": 4, "clients_per_round": 2, "time_limit": 30.0,
                 "eval_every": 10.0},
        "experiments": {"small": {}},
        "seeds": [0, 1, 2],
        "variants": {"A": {"algorithm": "quafl"}, "B": {"algorithm": "fedavg"}}}


def _table(cfg, accs, losses, bits_per_eval, zero=0.25):
    """A hand-made results table: evaluations at t = 0, 10, 20, 30."""
    rows = []
    for i, (acc, loss) in enumerate(zip(accs, losses)):
        base = {c: None for c in COLUMNS}
        base.update(algorithm=cfg.algorithm, dataset=cfg.dataset, model="linear", seed=cfg.seed, quantizer="identity",
                    bits=32, clients_per_round=2, num_clients=4, time=10.0 * i, server_steps=i, local_steps=5 * i,
                    bits_up=bits_per_eval * i, bits_down=bits_per_eval * i, config_hash=cfg.config_hash())
        rows += [{**base, "split": "test", "metric": "accuracy", "value": acc},
                 {**base, "split": "test", "metric": "loss", "value": loss},
                 {**base, "split": "sim", "metric": "zero_step_fraction_slow", "value": zero}]
    return pd.DataFrame(rows, columns=COLUMNS)


CURVES = {  # (label, seed) -> accuracies at t = 0, 10, 20, 30
    ("A", 0): [0.1, 0.5, 0.7, 0.8], ("A", 1): [0.1, 0.3, 0.6, 0.9], ("A", 2): [0.1, 0.2, 0.3, 0.7],
    ("B", 0): [0.1, 0.2, 0.3, 0.4], ("B", 1): [0.1, 0.2, 0.5, 0.6],   # B seed 2 not archived
}


@pytest.fixture
def root(tmp_path):
    for label, seed, cfg in ph.run_configs(SPEC, "small"):
        if (label, seed) in CURVES:
            accs = CURVES[(label, seed)]
            archive.add(_table(cfg, accs, [1 - a for a in accs], 1e9), cfg, tmp_path / "small", data_fingerprint="d",
                        code_fingerprint="c", git_commit=None)
    return tmp_path


def test_mean_ci_is_the_student_t_interval():
    mean, half = ph.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)   # t(0.975, 2) * sd / sqrt(n)
    assert ph.mean_ci([5.0])[0] == 5.0 and math.isnan(ph.mean_ci([5.0])[1])
    assert all(math.isnan(v) for v in ph.mean_ci([math.nan]))


def test_headline_numbers_by_hand(root):
    results, missing, prov = ph.collect(SPEC, "small", roots=[root], verify_data=False)
    assert missing == [("B", 2)] and len(prov) == 5 and all(p["data_verified"] is False for p in prov)
    table = ph.headline(results, target=0.6, order=["A", "B"]).set_index("label")
    a, b = table.loc["A"], table.loc["B"]
    assert a.seeds == 3 and a.reached == 3 and b.seeds == 2 and b.reached == 1
    assert a.final_accuracy == pytest.approx(0.8)                       # (0.8 + 0.9 + 0.7) / 3
    assert a.final_loss == pytest.approx(0.2)
    assert a.time_to_target == pytest.approx(70 / 3)                     # first t with accuracy >= 0.6: 20, 20, 30
    assert b.time_to_target == pytest.approx(30.0) and math.isnan(b.time_to_target_ci)   # one seed reached
    assert a.gbits_to_target == pytest.approx(2 * a.time_to_target / 10)   # 1 Gbit up + 1 down per 10 time units
    assert a.zero_step_slow == pytest.approx(0.25) and a.local_steps == 15
    md = ph.markdown(ph.headline(results, 0.6, ["A", "B"]), 0.6)
    assert "| A | 3 | 80.0 ± " in md and "(1/2)" in md


def test_unknown_experiment_is_an_error_naming_it():
    with pytest.raises(ValueError, match="^experiment: 'nope'"):
        ph.run_configs(SPEC, "nope")


def test_per_run_time_to_target_is_the_analysis_one_with_ties_by_server_step():
    # two evaluations at t = 10 (a zero-interaction-time round): the one after fewer server steps is the first,
    # whatever the table's row order -- analysis.time_to_target's order (time, then server steps)
    cfg = ph.run_configs(SPEC, "small")[0][2]
    table = _table(cfg, [0.1, 0.7, 0.65, 0.9], [0.9, 0.3, 0.35, 0.1], 1e9)
    table.loc[table.time == 20.0, "time"] = 10.0
    rows = table.iloc[::-1].assign(label="A")                      # latest evaluation first
    run = ph.per_run(rows, 0.6).iloc[0]
    assert run.reached and run.time_to_target == 10.0 and run.gbits_to_target == 2.0   # server step 1, not 2
    never = ph.per_run(rows, 0.95).iloc[0]
    assert not never.reached and math.isnan(never.time_to_target) and math.isnan(never.gbits_to_target)


def test_runs_are_taken_from_the_first_listed_device_that_has_them(tmp_path):
    """A campaign may be computed partly on a GPU: the device is part of a run's configuration, so each
    (variant, seed) is looked up on each listed device in turn, and the table says where each came from."""
    import dataclasses

    spec = {**SPEC, "devices": ["cpu", "cuda"]}
    for label, seed, cfg in ph.run_configs(spec, "small"):
        if label != "A":
            continue
        # seed 0 on both devices (different curves), seed 1 only on cuda, seed 2 only on cpu
        for dev, accs in (("cpu", [0.1, 0.2, 0.3, 0.4]), ("cuda", [0.1, 0.5, 0.6, 0.9])):
            if (dev, seed) in {("cuda", 2), ("cpu", 1)}:
                continue
            c = dataclasses.replace(cfg, device=dev)
            archive.add(_table(c, accs, [1 - a for a in accs], 1e9), c, tmp_path / "small", data_fingerprint="d",
                        code_fingerprint="c", git_commit=None)
    results, missing, prov = ph.collect(spec, "small", roots=[tmp_path], verify_data=False)
    assert {(p["seed"], p["device"]) for p in prov} == {(0, "cpu"), (1, "cuda"), (2, "cpu")}
    runs = ph.per_run(results, target=0.6).set_index("seed")
    assert runs.loc[0, "final_accuracy"] == 0.4 and runs.loc[1, "final_accuracy"] == 0.9   # cpu first, then cuda
    table = ph.headline(results, target=0.6)
    assert table.loc[0, "devices"] == "cpu 2, cuda 1"
    assert "cpu 2, cuda 1" in ph.markdown(table, 0.6)
    assert sorted(missing) == [("B", 0), ("B", 1), ("B", 2)]
    # without the device list only the runs' own device (the default, cpu) is looked up
    _, missing_cpu, _ = ph.collect(SPEC, "small", roots=[tmp_path], verify_data=False)
    assert ("A", 1) in missing_cpu and ("A", 0) not in missing_cpu


@pytest.mark.parametrize("path", sorted((Path(ph.ROOT) / "configs" / "paper").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_campaign_file_builds_valid_run_configs(path):
    spec = ph.load_spec(path)
    for experiment in spec["experiments"]:
        runs = ph.run_configs(spec, experiment)          # RunConfig validates every key and value
        assert len(runs) == len(spec["seeds"]) * len(spec["variants"])
        assert len({cfg.config_hash() for _, _, cfg in runs}) == len(runs)    # no two runs share a result
    assert 0 < float(spec.get("target", 0.4)) <= 1


def test_plot_means_seeds_on_a_common_grid_and_names_seed_counts_in_the_legend(root):
    """Seeds that evaluate at different times are interpolated onto one grid before the mean, each only inside its
    own time range: at t = 15 the mean of A is over its three seeds, not over the one seed that evaluated there."""
    import matplotlib.pyplot as plt

    results, _, _ = ph.collect(SPEC, "small", roots=[root], verify_data=False)
    a1 = (results.label == "A") & (results.seed == 1)
    results.loc[a1, "time"] = results.loc[a1, "time"] / 2          # seed 1 of A: evaluations at t = 0, 5, 10, 15
    fig = ph.plot(results, "small", order=["A", "B"])
    try:
        acc_time = fig.axes[0]
        a = acc_time.lines[0]                                     # hue order: A first
        xs, ys = a.get_xdata(), a.get_ydata()
        i15 = int(np.argmin(np.abs(xs - 15.0)))
        assert xs[i15] == pytest.approx(15.0)
        # seed 0: (0.5 + 0.7) / 2, seed 1: 0.9 (its last evaluation), seed 2: (0.2 + 0.3) / 2
        assert ys[i15] == pytest.approx(100 * (0.6 + 0.9 + 0.25) / 3)
        i24 = int(np.argmin(np.abs(xs - 24.0)))                   # seed 1 ended at t = 15: mean of seeds 0 and 2
        assert xs[i24] == pytest.approx(24.0)
        assert ys[i24] == pytest.approx(100 * ((0.7 + 0.4 * 0.1) + (0.3 + 0.4 * 0.4)) / 2)
        names = [t.get_text() for t in fig.legends[0].get_texts()]
        assert names == ["A (3 seeds)", "B (2 seeds)"]
        assert [ax.get_xlabel().split(" ")[0] for ax in fig.axes] == ["simulated", "simulated", "data"]
        assert all(ax.get_legend() is None for ax in fig.axes)  # one legend, below the panels, over no curve
    finally:
        plt.close(fig)
