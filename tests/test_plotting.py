"""Tests of qafl_core.experiments.plotting (panels, saving) and of the reductions the figures plot."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from qafl_core.experiments import analysis, fig1_peers, plotting
from qafl_core.experiments import tab1_time_to_accuracy as tab1
from qafl_core.runner import COLUMNS


def _run(label: str, seed: int, times, acc, bits_per_eval=1e6, steps_per_eval=10, h="h", dataset="synthetic"):
    """A results table of one run: test accuracy/loss and sim statistics at the given times."""
    rows = []
    for k, (t, a) in enumerate(zip(times, acc)):
        base = dict(algorithm="quafl", dataset=dataset, seed=seed, quantizer="identity", bits=32, clients_per_round=5,
                    num_clients=20, time=t, server_steps=k * steps_per_eval, local_steps=k * 40,
                    bits_up=k * bits_per_eval / 2, bits_down=k * bits_per_eval / 2, config_hash=f"{h}{label}{seed}")
        rows.append({**base, "split": "test", "metric": "accuracy", "value": a})
        rows.append({**base, "split": "test", "metric": "loss", "value": 2.0 - a})
        rows.append({**base, "split": "sim", "metric": "zero_step_fraction_slow", "value": 0.25 + 0.01 * seed})
        rows.append({**base, "split": "mean_model", "metric": "grad_sq", "value": 1.0 / (k + 1)})
    return pd.DataFrame(rows, columns=COLUMNS).assign(label=label)


@pytest.fixture
def results():
    t = [0.0, 10.0, 20.0, 30.0]
    return pd.concat([
        _run("A", 0, t, [0.1, 0.4, 0.6, 0.7]), _run("A", 1, t, [0.1, 0.5, 0.6, 0.9]),
        _run("B", 0, t, [0.1, 0.2, 0.3, 0.4], bits_per_eval=2e6), _run("B", 1, t, [0.1, 0.2, 0.3, 0.2], bits_per_eval=2e6),
    ], ignore_index=True)


def test_final_is_mean_and_std_over_seeds(results):
    fin = analysis.final(results).set_index("label")
    assert fin.loc["A", "mean"] == pytest.approx(0.8)
    assert fin.loc["A", "std"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
    assert fin.loc["B", "mean"] == pytest.approx(0.3)
    assert list(fin["n"]) == [2, 2]
    # window: each run's final value is the mean of its last evaluations (A: 0.65 and 0.75)
    assert analysis.final(results, window=2).set_index("label").loc["A", "mean"] == pytest.approx(0.7)
    # ... but never the untrained model's evaluation at t = 0
    two = _run("C", 0, [0.0, 10.0], [0.05, 0.5])
    assert analysis.final(two, window=3)["mean"].iloc[0] == pytest.approx(0.5)


def test_curves_interpolate_inside_each_run(results):
    cur = analysis.curves(results, "accuracy", "time", points=7)     # grid 0, 5, ..., 30
    a0 = cur[(cur["label"] == "A") & (cur["seed"] == 0)].set_index("x")["value"]
    assert a0.loc[5.0] == pytest.approx(0.25)                          # halfway between 0.1 and 0.4
    # B sent twice the bits: on a bits axis A's runs stop at half of the grid
    cb = analysis.curves(results, "accuracy", "bits", points=5)
    assert cb[cb["label"] == "A"]["x"].max() == pytest.approx(3e6)
    assert cb[cb["label"] == "B"]["x"].max() == pytest.approx(6e6)


def test_time_to_target_reports_nan_when_never_reached(results):
    per_run = analysis.time_to_target(results, 0.55)
    a = per_run[per_run["label"] == "A"]
    assert list(a["time"]) == [20.0, 20.0] and a["reached"].all()
    assert a["mbit"].iloc[0] == pytest.approx(2.0)
    b = per_run[per_run["label"] == "B"]
    assert not b["reached"].any() and b["time"].isna().all()
    s = analysis.summarize_time_to_target(per_run).set_index("label")
    assert s.loc["A", "reached"] == 2 and s.loc["B", "reached"] == 0 and math.isnan(s.loc["B", "time_mean"])


def test_running_average_and_slopes(results):
    run = analysis.running_average(results)
    one = run[(run["label"] == "A") & (run["seed"] == 0)]["value"].to_numpy()
    assert one == pytest.approx([1.0, 0.75, (1 + 1 / 2 + 1 / 3) / 3, (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4])
    x = np.array([10, 100, 1000.0])
    assert analysis.loglog_slope(x, 3 * x ** -0.5) == pytest.approx(-0.5)
    assert math.isnan(analysis.loglog_slope([1.0], [1.0]))
    assert analysis.rank_agreement([1, 2, 3], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert analysis.rank_agreement([1, 2, 3], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)


def test_missing_metric_is_a_clear_error(results):
    with pytest.raises(ValueError, match="no test/f1 rows"):
        analysis.final(results, "f1")
    with pytest.raises(ValueError, match="unknown axis"):
        analysis.curves(results, "accuracy", "walltime")


def test_headlines_relative_target_and_tab1(results):
    # relative target: 0.5 x the best final accuracy, A's mean over seeds of its last 3 evaluations
    assert analysis.target_accuracy(results, None, 0.5) == pytest.approx(0.5 * (0.4 + 0.6 + 0.7 + 0.5 + 0.6 + 0.9) / 6)
    assert analysis.target_accuracy(results, 0.3, 0.5) == 0.3
    frame = tab1.frame(results, {"target_accuracy": {"synthetic": 0.55}, "target_fraction": 0.8})
    assert frame.set_index("algorithm").loc["A", "final_accuracy_mean"] == pytest.approx((0.6 + 0.7 + 0.6 + 0.9 + 0.4 + 0.5) / 6)
    md = tab1.markdown(frame)
    assert "| synthetic | A | 55.0 % | 20 ± 0 |" in md and "not reached" in md
    as_peers = results.assign(label=results["label"].map({"A": "s = 1", "B": "s = 2"}))
    h = fig1_peers.headline(as_peers, {"peers": [1, 2], "target_accuracy": None, "target_fraction": 0.8})
    assert h["final_accuracy_rank_correlation_with_s"] == pytest.approx(-1.0)
    assert h["zero_step_fraction_slow"]["s = 1"] == pytest.approx(0.255)


def test_panels_and_save(tmp_path, results):
    fig, axes = plotting.subplots(3)
    plotting.metric_panel(axes[0], results, "accuracy", x="time", hue_order=["A", "B"], title="t")
    plotting.metric_panel(axes[1], results, "accuracy", x="bits")
    plotting.bar_panel(axes[2], analysis.last_sim(results, "zero_step_fraction_slow"), x="label", percent=True)
    assert axes[0].get_ylabel() == "test accuracy (%)"
    assert "simulated time" in axes[0].get_xlabel() and "Mbit" in axes[1].get_xlabel()
    # accuracy is drawn in percent: A's final mean is 80 %
    assert max(max(line.get_ydata()) for line in axes[0].get_lines() if len(line.get_ydata())) == pytest.approx(80.0)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["A", "B"]
    plotting.suptitle(fig, "title", plotting.band_note(2))
    paths = plotting.save(fig, tmp_path / "out", "demo", close=True)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:4] == b"%PDF"


def test_bits_axis_switches_to_gbit():
    assert plotting.bits_scale(5e9) == (1e6, "data sent, up + down (Mbit)")
    assert plotting.bits_scale(2e10)[1] == "data sent, up + down (Gbit)"
    assert plotting.band_note(1) == "1 seed (no band)" and plotting.band_note(3) == "mean ± 1 std over 3 seeds"


def test_comparison_figure_keeps_colours_across_datasets():
    from qafl_core.experiments.common import DatasetChoice

    t = [0.0, 10.0, 20.0]
    res = pd.concat([_run("A", 0, t, [0.1, 0.2, 0.3], dataset="d1"), _run("B", 0, t, [0.1, 0.3, 0.5], dataset="d1"),
                     _run("B", 0, t, [0.1, 0.3, 0.4], dataset="d2", h="x")], ignore_index=True)
    fig, axes = plotting.comparison_figure(res, [DatasetChoice("d1", "d1"), DatasetChoice("d2", "d2")],
                                           ("accuracy",), hue_order=["A", "B"], models={"d1": "m1"})
    colour = {ax.get_title(): {ln.get_label(): ln.get_color() for ln in ax.get_lines()} for ax in axes}
    assert colour["d1 [m1]\naccuracy"]["B"] == colour["d2\naccuracy"]["B"]
    assert colour["d1 [m1]\naccuracy"]["A"] != colour["d1 [m1]\naccuracy"]["B"]
    plotting.plt.close(fig)
