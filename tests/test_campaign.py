"""``qafl campaign``: a campaign file's runs, resumable, archived as they finish (qafl_core/cli/campaign.py)."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from qafl_core import archive, runner
from qafl_core.cli import main
from qafl_core.experiments import paper_headline as ph

SPEC = {"base": {"dataset": "quadratic", "num_clients": 4, "clients_per_round": 2, "time_limit": 30.0,
                 "eval_every": 10.0, "progress": False},
        "experiments": {"small": {}},
        "seeds": [0, 1],
        "variants": {"A": {"algorithm": "quafl"}, "B": {"algorithm": "fedavg", "quantizer": "qsgd", "bits": 6}}}


@pytest.fixture
def camp(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    args = ["--config", str(spec), "--experiment", "small", "--out", str(tmp_path / "work"),
            "--archive", str(tmp_path / "arch")]
    return tmp_path, args


def _no_runs(monkeypatch):
    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("a run was started"))


def test_run_archives_every_run_once_and_equal_to_a_direct_run(camp, monkeypatch, capsys):
    tmp, args = camp
    assert main(["campaign", "run", *args, "--checkpoint-every", "10"]) == 0
    assert "4 of 4 runs archived (4 run now)" in capsys.readouterr().out
    for label, seed, cfg in ph.run_configs(SPEC, "small"):
        got = archive.lookup(cfg, [tmp / "arch"])
        assert got is not None
        pd.testing.assert_frame_equal(got, runner.run(cfg), check_dtype=False)
        rec = archive.read(tmp / "arch" / f"{cfg.config_hash()}.json")[1]
        assert (rec["label"], rec["seed"], rec["experiment"]) == (label, seed, "small") and rec["code_fingerprint"]
        assert not (tmp / "work" / "small" / cfg.config_hash() / "checkpoint.pt").exists()
    _no_runs(monkeypatch)
    assert main(["campaign", "run", *args]) == 0                 # all archived: nothing runs again
    assert "4 of 4 runs archived (0 run now)" in capsys.readouterr().out
    assert main(["campaign", "status", *args]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "4 archived, 0 in progress, 0 to run"


def test_selection_dry_run_and_status(camp, monkeypatch, capsys):
    tmp, args = camp
    assert main(["campaign", "run", *args, "--seeds", "1", "--only", "B"]) == 0
    out = capsys.readouterr().out
    assert "small seed 1 B" in out and "seed 0" not in out and " A " not in out
    _no_runs(monkeypatch)
    assert main(["campaign", "run", *args, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["run", "run", "run", "archived"]
    assert lines[-1] == "1 of 4 runs archived (0 run now), dry run; 3 left"
    assert not any((tmp / "work" / "small").glob("*/checkpoint.pt"))


def test_a_checkpoint_is_resumed_a_finished_work_dir_imported_and_stop_ends_between_runs(camp, monkeypatch, capsys):
    tmp, args = camp
    runs = ph.run_configs(SPEC, "small")
    first, second = runs[0][2], runs[1][2]
    runner.run(first, out_dir=tmp / "work" / "small" / first.config_hash())      # finished, not archived
    d2 = tmp / "work" / "small" / second.config_hash()
    d2.mkdir(parents=True)
    (d2 / "checkpoint.pt").write_bytes(b"x")                                    # an interrupted run
    assert main(["campaign", "status", *args]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 archived, 1 in progress, 3 to run"
    calls, real = [], runner.run

    def fake_run(cfg, out_dir=None, resume=False, checkpoint_every=None):
        calls.append((cfg.config_hash(), resume, checkpoint_every))
        (tmp / "work" / "STOP").write_text("")                                  # stop after this run
        (out_dir / "checkpoint.pt").unlink()
        return real(cfg, out_dir=out_dir)
    monkeypatch.setattr(runner, "run", fake_run)
    assert main(["campaign", "run", *args]) == 0
    out = capsys.readouterr().out
    assert calls == [(second.config_hash(), True, 500.0)]                     # the finished one was not rerun
    assert out.splitlines()[0].startswith("import ") and "STOP: found, stopping before small seed 1 A" in out
    assert archive.lookup(first, [tmp / "arch"]) is not None and archive.lookup(second, [tmp / "arch"]) is not None


def test_status_estimates_the_runs_not_archived_with_the_engines_own_counts(camp, monkeypatch, capsys):
    """``status --estimate``: the counts of each run not archived are those a real run ends with, the time is
    counts x measured costs (here fixed: 1 s a local step, 2 s an evaluation), and archived runs cost nothing."""
    from qafl_core.experiments import estimate

    tmp, args = camp
    monkeypatch.setenv("QAFL_CACHE_DIR", str(tmp / "cache"))
    monkeypatch.setattr(estimate, "measure_costs", lambda cfg, budget_s=2.0: {
        "sgd_step_s": 1.0, "evaluation_s": 2.0, "message_s": 0.0})
    monkeypatch.setattr(estimate, "_load1", lambda: 1.5)
    assert main(["campaign", "run", *args, "--seeds", "0", "--only", "A"]) == 0
    capsys.readouterr()
    assert main(["campaign", "status", *args, "--estimate", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    total = 0
    for (label, seed, cfg), line in zip(ph.run_configs(SPEC, "small"), lines):
        if (label, seed) == ("A", 0):
            assert line.startswith("archived") and "~" not in line
            continue
        df = runner.run(cfg)
        steps = int(df.local_steps.max())
        evals = int(((df.split == "test") & (df.metric == "loss")).sum())
        seconds = steps + 2 * evals
        total += seconds
        assert line.startswith("to run") and f"~ {seconds / 60:.0f} min here: {steps:,} local steps, {evals} " \
            f"evaluations" in line
    assert lines[-2] == "1 archived, 0 in progress, 3 to run"
    assert lines[-1].startswith(f"estimated time of the 3 runs not archived, one after another, each from its "
                                f"start: {total / 3600:.1f} h here")
    assert "measured at a 1-min load average of 1.5 on" in lines[-1]
    assert main(["campaign", "status", *args, "--remeasure"]) == 2
    assert "--remeasure: only with --estimate" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--threads", "0"], "--threads: must be >= 1"),
    (["--only", "C"], "--only: C is not a variant of"),
    (["--seeds", "0,x"], "--seeds: expected comma-separated integers"),
    (["--checkpoint-every", "0"], "--checkpoint-every: must be > 0"),
    (["--set", "lr"], "--set 'lr': expected key=value"),
    (["--set", "clients_per_round=9"], "clients_per_round"),
])
def test_bad_options_are_one_clear_error(camp, extra, message, capsys):
    _, args = camp
    assert main(["campaign", "run", *args, *extra]) == 2
    assert message in capsys.readouterr().err


def test_the_committed_campaign_files_plan(capsys):
    """Every committed campaign file plans its runs without running or needing data (dry run, archive unverified)."""
    for path in sorted((ph.ROOT / "configs" / "paper").glob("*.yaml")):
        spec = ph.load_spec(path)
        for experiment in spec["experiments"]:
            assert main(["campaign", "run", "--config", str(path), "--experiment", experiment, "--dry-run",
                         "--no-verify-data", "--out", "/nonexistent/work"]) == 0
            assert "dry run" in capsys.readouterr().out.splitlines()[-1]
