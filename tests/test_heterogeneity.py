"""Tests of the heterogeneity experiment (qafl_core.experiments.heterogeneity) and its notebook.

The run grid of each profile is checked config by config, the headline numbers on a small hand-made
results table against numbers computed by hand, and the notebook's ``parameters`` cell against the smoke
profile it must equal.
"""
from __future__ import annotations

import ast
import itertools
import json
import math
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from qafl_core import reproduce
from qafl_core.experiments import analysis, common, manifest
from qafl_core.experiments import heterogeneity as het

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"


def _params(profile: str) -> dict:
    return yaml.safe_load((NB_DIR / "params" / f"heterogeneity.{profile}.yaml").read_text())


# ---------------------------------------------------------------------- the run grid
@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_run_grid_has_every_cell_algorithm_and_seed(profile):
    p = _params(profile)
    choice = common.DatasetChoice(p["dataset"], p["dataset"], dict(p["dataset_options"].get(p["dataset"], {})))
    runs = het.runs(p, choice)
    alphas, ratios, seeds = p["dirichlet_alphas"], p["speed_ratios"], p["seeds"]
    assert (len(alphas), len(ratios), len(p["variants"])) == (3, 3, 3)
    assert len(runs) == len(alphas) * len(ratios) * len(p["variants"]) * len(seeds)
    assert len(common.config_hashes(runs)) == len(runs)                   # every run distinct
    want = {(float(a), float(r), algo, int(s)) for a, r, algo, s in
            itertools.product(alphas, ratios, ("quafl", "fedavg", "fedbuff"), seeds)}
    got = set()
    for run in runs:
        c = run.config
        assert c.dataset == p["dataset"] and c.partition == "dirichlet" and c.timing == "exponential"
        assert c.fast_mean == p["fast_mean"] == 2.0                        # the fast mean is fixed ...
        ratio = c.slow_mean / c.fast_mean                                  # ... the slow one moves
        assert (c.num_clients, c.clients_per_round, c.local_steps) == \
            (p["num_clients"], p["clients_per_round"], p["local_steps"])
        assert c.slow_fraction == 0.3 and c.quantizer == "identity" and c.eval_max_samples is None
        assert run.label == het.cell_label(het.variant_name(c), c.dirichlet_alpha, ratio)
        got.add((c.dirichlet_alpha, ratio, c.algorithm, c.seed))
    assert got == want


def test_smoke_profile_is_the_brief_setting():
    p = _params("smoke")
    assert (p["num_clients"], p["clients_per_round"], p["local_steps"], p["slow_fraction"]) == (20, 5, 5, 0.3)
    assert p["seeds"] == [0, 1] and p["dirichlet_alphas"] == [0.1, 1.0, 100.0] and p["speed_ratios"] == [1.0, 4.0, 16.0]
    assert 0 < p["at_time"] <= p["time_limit"]
    assert _params("paper")["num_clients"] == 100 and len(_params("paper")["seeds"]) == 3


def test_run_grid_rejects_bad_axes():
    p = {**_params("smoke"), "speed_ratios": [0.5, 4.0]}
    with pytest.raises(ValueError, match="speed_ratios"):
        het.runs(p, common.DatasetChoice("synthetic", "synthetic"))
    p = {**_params("smoke"), "dirichlet_alphas": [1.0, 1.0]}
    with pytest.raises(ValueError, match="dirichlet_alphas"):
        het.runs(p, common.DatasetChoice("synthetic", "synthetic"))
    p = {**_params("smoke"), "dirichlet_alphas": [0.0]}
    with pytest.raises(ValueError, match="dirichlet_alpha"):
        het.runs(p, common.DatasetChoice("synthetic", "synthetic"))


def test_reproduce_plans_the_same_dataset_as_the_notebook(monkeypatch):
    """The smoke profile runs on embedded data (no fallback: the real-data folder); the paper one on Fashion-MNIST."""
    assert het.choice(_params("smoke")).name == "synthetic" and not het.choice(_params("smoke")).fallback
    assert reproduce.plan_fallbacks({"heterogeneity": _params("smoke")}) == {}
    monkeypatch.setattr(common, "data_available", lambda name, options=None: (False, "no Fashion-MNIST files"))
    fell = het.choice(_params("paper"))
    assert fell.fallback and fell.requested == "fmnist" and fell.name == "synthetic"
    assert "heterogeneity" in reproduce.plan_fallbacks({"heterogeneity": _params("paper")})


# ---------------------------------------------------------------------- headline numbers by hand
def _run(variant, alpha, ratio, seed, evals, p10=None):
    """Rows of one run: ``evals`` = [(time, accuracy)], ``p10`` = [client accuracy p10] at the same times."""
    algo = variant.split()[0].lower()
    h = f"{algo}-{alpha}-{ratio}-{seed}"
    rows = []
    for k, (t, acc) in enumerate(evals):
        base = {"algorithm": algo, "seed": seed, "time": t, "server_steps": k, "bits_up": 0, "bits_down": 0,
                "config_hash": h, "label": het.cell_label(variant, alpha, ratio), "dirichlet_alpha": alpha,
                "speed_ratio": ratio, "variant": variant}
        rows.append({**base, "split": "test", "metric": "accuracy", "value": acc})
        if p10 is not None:
            rows.append({**base, "split": "clients", "metric": "accuracy_p10", "value": p10[k]})
    return rows


def _table():
    rows = []
    # cell (0.1, 4): QuAFL two seeds, FedAvg two seeds (one never reaches 0.5)
    rows += _run("QuAFL 32-bit", 0.1, 4.0, 0, [(0, .1), (10, .3), (20, .5), (30, .6), (40, .7), (50, .9)],
                 [0, .1, .2, .3, .4, .8])
    rows += _run("QuAFL 32-bit", 0.1, 4.0, 1, [(0, .1), (10, .4), (20, .4), (30, .6), (40, .8), (50, .8)],
                 [0, .2, .2, .4, .6, .6])
    rows += _run("FedAvg 32-bit", 0.1, 4.0, 0, [(0, .1), (35, .45), (70, .6)], [0, .3, .5])
    rows += _run("FedAvg 32-bit", 0.1, 4.0, 1, [(0, .1), (45, .3), (90, .4)], [0, .1, .2])
    return pd.DataFrame(rows)


def test_headline_numbers_by_hand():
    frame, rec = het.headline(_table(), at_time=40.0, target=0.5)
    q = frame[frame["variant"] == "QuAFL 32-bit"].iloc[0]
    f = frame[frame["variant"] == "FedAvg 32-bit"].iloc[0]
    # QuAFL at t = 40: last 3 evaluations at or before 40 -> seed 0 (.5+.6+.7)/3 = .6, seed 1 (.4+.6+.8)/3 = .6
    assert q["accuracy_at_time_mean"] == pytest.approx(0.6) and q["accuracy_at_time_std"] == pytest.approx(0.0)
    # p10: seed 0 (.2+.3+.4)/3 = .3, seed 1 (.2+.4+.6)/3 = .4 -> mean .35, std (ddof 1) sqrt(2) * .05
    assert q["accuracy_p10_at_time_mean"] == pytest.approx(0.35)
    assert q["accuracy_p10_at_time_std"] == pytest.approx(math.sqrt(2) * 0.05)
    # FedAvg at t = 40: seed 0 has only (35, .45) after t = 0; seed 1 only its t = 0 evaluation (.1)
    assert f["accuracy_at_time_mean"] == pytest.approx((0.45 + 0.1) / 2)
    assert f["accuracy_p10_at_time_mean"] == pytest.approx((0.3 + 0.0) / 2)
    # time to 0.5: QuAFL seeds at 20 and 30 -> 25 ± 7.07, 2/2; FedAvg only seed 0 at 70 -> 1/2
    assert q["time_to_target_mean"] == pytest.approx(25.0) and q["time_to_target_std"] == pytest.approx(50 ** 0.5)
    assert (q["reached"], q["runs"]) == (2, 2) and (f["reached"], f["runs"]) == (1, 2)
    assert f["time_to_target_mean"] == pytest.approx(70.0)
    cell = rec["cells"]["0.1"]["4"]
    assert cell["QuAFL 32-bit"]["every_seed_reached"] is True and cell["FedAvg 32-bit"]["every_seed_reached"] is False
    assert cell["FedAvg 32-bit"]["reached"] == "1/2" and cell["QuAFL 32-bit"]["accuracy_at_time"]["n"] == 2
    assert rec["at_time"] == 40.0 and rec["target_accuracy"] == 0.5 and rec["starting_accuracy"] == pytest.approx(0.1)
    assert rec["time_to_target_refused"] is None
    # the final-accuracy table of the other figures (mean of the last 3 evaluations, t = 0 excluded)
    fin = rec["final_accuracy"][het.cell_label("FedAvg 32-bit", 0.1, 4.0)]
    assert fin["mean"] == pytest.approx(((0.45 + 0.6) / 2 + (0.3 + 0.4) / 2) / 2)
    assert list(frame["variant"]) == ["QuAFL 32-bit", "FedAvg 32-bit"]      # the grid's order
    md = het.markdown(frame)
    assert "| 0.1 | 4 | QuAFL 32-bit | 60.0 ± 0.0 | 35.0 ± 7.1 | 25 ± 7 | 2/2 |" in md
    assert "| 0.1 | 4 | FedAvg 32-bit | 27.5 ± 24.7 | 15.0 ± 21.2 | 70 | 1/2 |" in md


def test_headline_refuses_a_target_every_run_starts_at_and_needs_whole_test_set_for_p10():
    table = _table()
    frame, rec = het.headline(table, at_time=40.0, target=0.1)
    assert rec["time_to_target_refused"] and "starting accuracy" in rec["time_to_target_refused"]
    assert frame["time_to_target_mean"].isna().all() and (frame["reached"] == 0).all()
    assert rec["cells"]["0.1"]["4"]["QuAFL 32-bit"]["time_to_target"] is None
    md = het.markdown(frame)                       # never "not reached" for a target nobody could miss
    assert "| 0.1 | 4 | QuAFL 32-bit | 60.0 ± 0.0 | 35.0 ± 7.1 | — | refused¹ |" in md
    assert "not reached" not in md and "\n¹ target accuracy 10.0 % is at or below the starting accuracy" in md
    frame, rec = het.headline(table[table["split"] == "test"], at_time=40.0, target=0.5)
    assert frame["accuracy_p10_at_time_mean"].isna().all()
    assert json.loads(json.dumps(manifest.jsonable(rec), allow_nan=False))["cells"]["0.1"]["4"]["QuAFL 32-bit"][
        "accuracy_p10_at_time"] == {"mean": None, "std": None}


def test_save_tables_writes_csv_and_markdown(tmp_path):
    frame, _ = het.headline(_table(), at_time=40.0, target=0.5)
    csv, md = het.save_tables(frame, tmp_path)
    back = pd.read_csv(csv)
    assert list(back["variant"]) == ["QuAFL 32-bit", "FedAvg 32-bit"] and back["reached"].tolist() == [2, 1]
    assert md.read_text() == het.markdown(frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heterogeneity.csv", "heterogeneity.md"]   # no temp files


def test_headline_final_window_matches_the_other_figures():
    assert analysis.FINAL_WINDOW == 3     # the hand-computed numbers above assume it


# ---------------------------------------------------------------------- the notebook
def _parameters_cell():
    nb = nbformat.read(NB_DIR / "heterogeneity.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    values = {}
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, "parameters cell: plain assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return nb, values


def test_notebook_parameters_cell_is_the_smoke_profile():
    nb, values = _parameters_cell()
    assert values.pop("profile") == "interactive" and values.pop("output_dir") is None
    assert (values.pop("backend"), values.pop("address"), values.pop("num_threads")) == ("local", None, None)
    assert values == _params("smoke")
    assert set(_params("paper")) == set(_params("smoke"))


def test_notebook_is_thin_clean_and_hand_written():
    nb, _ = _parameters_cell()
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# Heterogeneity")
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert not cell.get("outputs") and cell.get("execution_count") is None
        assert "def " not in cell.source and "class " not in cell.source
    k = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    assert code[k + 1].source.startswith("output_dir = outputs.output_folder(output_dir)\n")
    assert "heterogeneity.runs(params" in code[k + 1].source
    import papermill

    assert set(papermill.inspect_notebook(str(NB_DIR / "heterogeneity.ipynb"))) == set(_params("smoke")) | {
        "profile", "output_dir", "backend", "address", "num_threads"}
    assert "heterogeneity" in reproduce.discover(NB_DIR)
