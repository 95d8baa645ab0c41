"""qafl_core.experiments.analysis: headline numbers that cannot mislead (issue 11, item 10), on hand-made tables.

A time-to-target is refused (``null`` with a reason) when the target is at or below the starting accuracy;
a speed-up carries both final accuracies and is ``null`` unless every run of both groups reached the target.
Every expected number below is computed by hand from the tables.
"""
from __future__ import annotations

import pandas as pd
import pytest

from qafl_core.experiments import analysis, fig1_peers, fig4_vs_fedavg, fig5_vs_fedbuff
from qafl_core.experiments import tab1_time_to_accuracy as tab1


def _curve(label: str, seed: int, points: list[tuple[float, float]]) -> list[dict]:
    """Rows of one run: (time, test accuracy) pairs; bits grow by 1 Mbit per time unit."""
    run = f"{label}/{seed}"
    return [{"label": label, "seed": seed, "config_hash": run, "dataset": "toy", "time": t, "server_steps": k,
             "bits_up": t * 1e6, "bits_down": 0.0, "split": "test", "metric": "accuracy", "value": v}
            for k, (t, v) in enumerate(points)]


def _table(*runs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for run in runs for row in run])


# Fig. 4 as the embedded fallback had it: QuAFL gets to the target first but finishes lowest
FAST_BUT_LOW = _table(
    _curve("QuAFL", 0, [(0, 0.20), (100, 0.37), (200, 0.34), (300, 0.35), (400, 0.35)]),
    _curve("FedAvg", 0, [(0, 0.20), (100, 0.25), (200, 0.36), (300, 0.37), (400, 0.37)]),
)


def test_speedup_carries_final_accuracies_and_flags_a_faster_but_lower_finisher():
    out = analysis.speedup(FAST_BUT_LOW, "QuAFL", "FedAvg", target=0.36)
    # QuAFL first >= 0.36 at t = 100, FedAvg at t = 200: 200 / 100
    assert out["value"] == pytest.approx(2.0)
    assert out["time_to_target"] == {"QuAFL": 100.0, "FedAvg": 200.0}
    # final = mean of the last 3 evaluations: QuAFL (0.34 + 0.35 + 0.35) / 3, FedAvg (0.36 + 0.37 + 0.37) / 3
    assert out["final_accuracy"]["QuAFL"] == pytest.approx(1.04 / 3)
    assert out["final_accuracy"]["FedAvg"] == pytest.approx(1.10 / 3)
    assert out["reached"] == {"QuAFL": "1/1", "FedAvg": "1/1"} and out["reason"] is None
    assert out["note"] == "QuAFL reaches 36.0 % sooner but finishes lower: 34.7 % against 36.7 %"


def test_speedup_is_null_unless_every_run_reached_the_target():
    table = _table(_curve("QuAFL", 0, [(0, 0.1), (100, 0.5)]), _curve("QuAFL", 1, [(0, 0.1), (100, 0.3)]),
                   _curve("FedAvg", 0, [(0, 0.1), (200, 0.5)]), _curve("FedAvg", 1, [(0, 0.1), (300, 0.5)]))
    out = analysis.speedup(table, "QuAFL", "FedAvg", target=0.45)
    assert out["value"] is None and out["reached"] == {"QuAFL": "1/2", "FedAvg": "2/2"}
    assert out["reason"] == "not every run reached the target: QuAFL 1/2"
    assert out["final_accuracy"] == {"QuAFL": pytest.approx(0.4), "FedAvg": pytest.approx(0.5)}


def test_target_at_or_below_the_starting_accuracy_is_refused():
    # one seed's untrained model already has 0.32 (as the fallback Fig. 1 had): a target of 0.29 measures nothing
    table = _table(_curve("s = 2", 0, [(0, 0.32), (50, 0.30), (100, 0.34)]),
                   _curve("s = 2", 1, [(0, 0.10), (50, 0.20), (100, 0.33)]))
    block = analysis.target_summary(table, 0.29)
    assert block["time_to_target"] is None and block["starting_accuracy"] == pytest.approx(0.32)
    assert block["time_to_target_refused"].startswith("target accuracy 29.0 % is at or below the starting accuracy "
                                                      "32.0 %")
    assert analysis.target_summary(table, 0.32)["time_to_target"] is None       # "at": refused too
    ok = analysis.target_summary(table, 0.33)
    assert ok["time_to_target_refused"] is None
    assert ok["time_to_target"]["s = 2"]["time_mean"] == pytest.approx((100 + 100) / 2)
    sp = analysis.speedup(table, "s = 2", "s = 2", 0.30)
    assert sp["value"] is None and "starting accuracy" in sp["reason"]


def test_figure_headlines_use_the_refusal():
    table = _table(_curve("s = 2", 0, [(0, 0.32), (50, 0.30), (100, 0.34)]),
                   _curve("s = 4", 0, [(0, 0.31), (50, 0.36), (100, 0.40)]))
    table = pd.concat([table, table.assign(split="sim", metric="zero_step_fraction_slow", value=0.2)])
    h1 = fig1_peers.headline(table, {"peers": [2, 4], "target_accuracy": None, "target_fraction": 0.8})   # 0.8 x best final (0.37) = 0.296 < 0.32
    assert h1["target_accuracy"] == pytest.approx(0.8 * (0.36 + 0.40) / 2)
    assert h1["time_to_target"] is None and "starting accuracy 32.0 %" in h1["time_to_target_refused"]
    labelled = FAST_BUT_LOW.assign(label=FAST_BUT_LOW["label"] + " 32-bit")
    h4 = fig4_vs_fedavg.headline(labelled, {"variants": ["quafl identity", "fedavg identity"], "baseline": False,
                                            "target_accuracy": 0.36, "target_fraction": 0.8})
    assert h4["time_to_target"]["QuAFL 32-bit"]["time_mean"] == 100.0 and h4["speedup_quafl_over_fedavg"]["value"] == 2.0
    assert "finishes lower" in h4["speedup_quafl_over_fedavg"]["note"]


def test_table1_marks_a_refused_target():
    table = _table(_curve("QuAFL", 0, [(0, 0.32), (100, 0.33), (200, 0.35)]),
                   _curve("FedAvg", 0, [(0, 0.32), (100, 0.34), (200, 0.36)]))
    frame = tab1.frame(table, {"target_accuracy": {"toy": 0.30}, "target_fraction": 0.8})
    assert frame["time_mean"].isna().all() and (frame["reached"] == 0).all()
    assert (frame["target_refused"].str.contains("starting accuracy 32.0 %")).all()
    md = tab1.markdown(frame)
    assert "| toy | QuAFL | 30.0 % | — | — | refused¹ |" in md and "¹ target accuracy 30.0 %" in md
    fine = tab1.frame(table, {"target_accuracy": {"toy": 0.335}, "target_fraction": 0.8})
    assert list(fine["time_mean"]) == [200.0, 100.0] and not fine["target_refused"].any()
    with_loss = pd.concat([table, table.assign(metric="loss", value=1.0)])
    toy = fig5_vs_fedbuff.headline(with_loss, {"target_accuracy": {"toy": 0.30}, "target_fraction": 0.8})["toy"]
    assert toy["time_to_target"] is None and "starting accuracy" in toy["time_to_target_refused"]
