"""qafl_core.experiments.estimate (``qafl reproduce --estimate``): a run's counts simulated without training equal
the counters of the real run; cached runs count 0; the table and JSON name every notebook."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

from qafl_core import runner
from qafl_core.cli import main as qafl_main
from qafl_core.config import RunConfig
from qafl_core.experiments import estimate, theory_quadratic

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
QUAD = {"dataset": "quadratic", "num_clients": 6, "clients_per_round": 2, "local_steps": 3, "time_limit": 40.0,
        "eval_every": 10.0, "sit": 2.0, "lr": 0.05, "progress": False, "dataset_options": {"dim": 5}}


def _real_counters(df) -> dict:
    """The real run's counters at its end and its number of evaluations of the server model."""
    test = df[df["split"] == "test"]
    last = test.iloc[-1]
    return {"server_steps": int(last["server_steps"]), "local_steps": int(last["local_steps"]),
            "bits": int(last["bits_up"] + last["bits_down"]), "evaluations": int(test["time"].nunique()),
            "time": float(last["time"])}


@pytest.mark.parametrize("over", [
    {"algorithm": "quafl", "quantizer": "lattice", "bits": 10, "lattice_eps": 1e-3},
    {"algorithm": "quafl", "quantizer": "identity", "bits": 32, "slow_fraction": 0.5},
    {"algorithm": "fedavg", "quantizer": "qsgd", "bits": 8},
    {"algorithm": "fedbuff", "quantizer": "identity", "bits": 32},
    {"algorithm": "fedasync", "quantizer": "identity", "bits": 32},
    {"algorithm": "qafel", "quantizer": "qsgd", "bits": 8, "server_quantizer": "qsgd", "server_bits": 4},
], ids=lambda o: f"{o['algorithm']}-{o['quantizer']}")
def test_counts_equal_the_real_runs_counters(over):
    cfg = RunConfig.from_dict({**QUAD, **over})
    est = estimate.run_counts(cfg)
    real = _real_counters(runner.run(cfg))
    assert {k: est[k] for k in real} == real
    if over["algorithm"] in ("quafl", "fedavg"):   # per round: the server model once, and one message per client
        assert est["messages"] == est["server_steps"] * (cfg.clients_per_round + 1)


def test_a_null_run_reports_exact_message_sizes():
    cfg = RunConfig.from_dict({**QUAD, "quantizer": "identity", "bits": 32})
    assert estimate.message_bits(cfg) == 32 * 5
    counts = estimate.simulate_counts(cfg, message_bits=1000)
    assert counts["bits"] == 1000 * 2 * cfg.clients_per_round * counts["server_steps"]    # s up + s down per round


def test_smoke_profile_estimate_matches_a_real_run_and_skips_cached_runs(tmp_path, monkeypatch):
    """The theory notebook's smoke profile: counts of its shortest run equal that run's real counters; once the run
    is in the run cache it counts 0; duplicated configs count once."""
    monkeypatch.setenv("QAFL_CACHE_DIR", str(tmp_path / "cache"))
    params = yaml.safe_load((NB_DIR / "params" / "theory_quadratic.smoke.yaml").read_text())
    costs = estimate.CostCache(tmp_path / "costs.json")
    first = estimate.estimate({"theory_quadratic": params}, costs=costs)[0]
    runs = theory_quadratic.runs(params)
    assert len(first.runs) == len(runs)
    todo = [r for r in first.runs if r.status == "to run"]
    assert len(todo) == len({r.config.config_hash() for r in runs}) and {r.status for r in first.runs} <= {"to run", "shared"}
    short = min(todo, key=lambda r: r.server_steps)
    cfg = next(r.config for r in runs if r.config.config_hash() == short.config_hash)
    from qafl_core.cache import load_or_run

    real = _real_counters(load_or_run(cfg))
    assert {k: getattr(short, k) for k in ("server_steps", "local_steps", "bits", "evaluations")} == \
        {k: real[k] for k in ("server_steps", "local_steps", "bits", "evaluations")}
    assert short.seconds > 0 and json.loads((tmp_path / "costs.json").read_text())   # costs measured and cached
    again = estimate.estimate({"theory_quadratic": params}, costs=estimate.CostCache(tmp_path / "costs.json"))[0]
    cached = [r for r in again.runs if r.config_hash == short.config_hash]
    assert cached[0].status == "cached" and again.total("local_steps") == first.total("local_steps") - short.local_steps
    table = estimate.format_table([again])
    assert table.splitlines()[0].split()[:2] == ["notebook", "runs"] and "theory_quadratic" in table


def test_reproduce_estimate_prints_a_table_or_json(tmp_path, monkeypatch, capsys):
    nb_dir = tmp_path / "notebooks"
    (nb_dir / "params").mkdir(parents=True)
    shutil.copy(NB_DIR / "theory_quadratic.ipynb", nb_dir)
    tiny = {**yaml.safe_load((NB_DIR / "params" / "theory_quadratic.smoke.yaml").read_text()), "num_clients": 4,
            "clients_per_round": 2, "dim": 5, "horizons": [5, 10], "peers": [1, 2], "local_steps_grid": [1, 2],
            "seeds": [0]}
    (nb_dir / "params" / "theory_quadratic.tiny.yaml").write_text(yaml.safe_dump(tiny))
    monkeypatch.setenv("QAFL_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["reproduce", "--notebooks-dir", str(nb_dir), "--profile", "tiny", "--estimate"]
    assert qafl_main(argv + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    nb = doc["notebooks"][0]
    assert nb["notebook"] == "theory_quadratic" and nb["runs"] == 8 and nb["to_run"] == 7   # s = 2 is the T = 10 run
    assert nb["local_steps"] == sum(r["local_steps"] for r in nb["per_run"]) and doc["total_seconds"] > 0
    assert qafl_main(argv) == 0
    out = capsys.readouterr().out
    assert "theory_quadratic" in out and "7/8" in out and "est. time" in out
    assert not (tmp_path / "figures").exists() and not (nb_dir / "executed").exists()     # nothing run or written
    assert qafl_main(["reproduce", "--notebooks-dir", str(nb_dir), "--profile", "tiny", "--json"]) == 2
    assert "--json: only with --estimate" in capsys.readouterr().err
    assert qafl_main(["reproduce", "--notebooks-dir", str(nb_dir), "--profile", "tiny", "--remeasure"]) == 2
    assert "--remeasure: only with --estimate" in capsys.readouterr().err


def test_cost_cache_records_the_load_and_remeasures_on_request(tmp_path, monkeypatch):
    """Costs are measured once per key and kept with the load average of the moment; ``remeasure`` measures each
    key once more and replaces the entry, and the caption says under which load the costs in use were measured."""
    calls, loads = [], iter([3.5, 0.25])
    monkeypatch.setattr(estimate, "measure_costs", lambda cfg, budget_s=2.0: calls.append(cfg) or {
        "sgd_step_s": float(len(calls)), "evaluation_s": 0.0, "message_s": 0.0})
    monkeypatch.setattr(estimate, "_load1", lambda: next(loads))
    cfg = RunConfig.from_dict({**QUAD, "quantizer": "identity", "bits": 32})
    path = tmp_path / "costs.json"
    first = estimate.CostCache(path)
    assert first.get(cfg) == {"sgd_step_s": 1.0, "evaluation_s": 0.0, "message_s": 0.0, "load1": 3.5}
    assert first.get(cfg)["sgd_step_s"] == 1.0 and len(calls) == 1                      # once per key
    assert estimate.CostCache(path).get(cfg)["sgd_step_s"] == 1.0 and len(calls) == 1    # kept on disk
    assert "load average of 3.5 on" in first.note()
    again = estimate.CostCache(path, remeasure=True)
    assert again.get(cfg)["load1"] == 0.25 and again.get(cfg)["sgd_step_s"] == 2.0 and len(calls) == 2
    assert json.loads(path.read_text())[estimate.cost_key(cfg)]["load1"] == 0.25        # replaced on disk
    # an entry from before loads were recorded says so
    path.write_text(json.dumps({estimate.cost_key(cfg): {"sgd_step_s": 1.0, "evaluation_s": 0.0, "message_s": 0.0}}))
    old = estimate.CostCache(path)
    old.get(cfg)
    assert old.note().startswith("1 measured at a load not recorded") and len(calls) == 2
