"""The bad-input catalogue (issue 6, item 3): every case gives ONE clear message naming the file or field.

One table, :data:`CASES`, of ``(id, setup, needles)``: ``setup(tmp_path)`` writes the bad input and returns
the ``qafl`` command line; the command must exit with status 2, print exactly one line
``qafl: error: ...`` on stderr (no traceback, nothing else) containing every needle (``{tmp}`` stands
for ``tmp_path``).  The commands run through :func:`qafl_core.cli.main` in-process (fast); a few are
repeated as real processes.  Diverging runs are not errors: they stop, are marked ``diverged`` with
the time in the results, and a sweep / batch goes on with the other runs.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from qafl_core.cli import main

REPO = Path(__file__).resolve().parents[1]
PIX = [0.5] * 784
QUAD = ["dataset=quadratic", "num_clients=6", "clients_per_round=2", "sit=1", "time_limit=30", "eval_every=5"]
SYNTH = ["dataset=synthetic", "dataset_options={num_tasks: 30}", "clients_per_round=2", "time_limit=30"]


# ---------------------------------------------------------------------- builders
def _leaf(users: list[str], n: int = 2) -> dict:
    return {"users": list(users), "num_samples": [n] * len(users),
            "user_data": {u: {"x": [PIX] * n, "y": [k % 62] * n} for k, u in enumerate(users)}}


def _femnist(tmp: Path, train=None, test=None, train_text: str | None = None) -> Path:
    """A LEAF FEMNIST sample dir ``tmp/femnist`` (two writers unless told otherwise)."""
    root = tmp / "femnist"
    for side, obj in (("train", train), ("test", test)):
        (root / side).mkdir(parents=True)
        body = json.dumps(obj if obj is not None else _leaf(["f0", "f1"]))
        if side == "train" and train_text is not None:
            body = train_text
        (root / side / f"all_data_0_niid_05_keep_0_{side}_9.json").write_text(body)
    return root


def _describe(mutate: Callable[[Path], object] | None = None, **kw) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        root = _femnist(tmp, **kw)
        if mutate is not None:
            mutate(root)
        return ["data", "describe", "femnist", "--root", str(root)]
    return setup


def _bad_user(**user) -> dict:
    obj = _leaf(["f0", "f1"])
    obj["user_data"]["f0"] = user
    return obj


def _run(*sets: str, yaml_text: str | None = None, yaml_bytes: bytes | None = None,
         extra: tuple[str, ...] = ()) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        argv = ["run", "--quiet", "--out", str(tmp / "out")]
        if yaml_text is not None or yaml_bytes is not None:
            (tmp / "cfg.yaml").write_bytes(yaml_bytes if yaml_bytes is not None else yaml_text.encode())
            argv += ["--config", str(tmp / "cfg.yaml")]
        for s in sets:
            argv += ["--set", s]
        return argv + list(extra)
    return setup


def _sweep(yaml_text: str, seeds: str = "2", *extra: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / "sweep.yaml").write_text(yaml_text)
        return ["sweep", "--config", str(tmp / "sweep.yaml"), "--seeds", seeds, "--out", str(tmp / "sw"), *extra]
    return setup


_QUAD_YAML = "dataset: quadratic\nnum_clients: 6\nclients_per_round: 2\ntime_limit: 20\nsit: 1\n"
TRAIN_NAME = "all_data_0_niid_05_keep_0_train_9.json"
TRAIN_FILE = "{tmp}/femnist/train/" + TRAIN_NAME

# ---------------------------------------------------------------------- the catalogue
CASES: list[tuple[str, Callable[[Path], list[str]], tuple[str, ...]]] = [
    # --- data files (LEAF JSON, read through `qafl data describe femnist --root DIR`)
    ("data-truncated-json", _describe(train_text=json.dumps(_leaf(["f0", "f1"]))[:500]),
     (TRAIN_FILE, "invalid JSON (truncated or corrupt?)")),
    ("data-empty-file", _describe(train_text=""), (TRAIN_FILE, "invalid JSON")),
    ("data-not-an-object", _describe(train_text="[1, 2, 3]"), (TRAIN_FILE, "expected a JSON object")),
    ("data-missing-key", _describe(train={"users": ["f0"], "num_samples": [2]}),
     (TRAIN_FILE, "missing key 'user_data'")),
    ("data-wrong-type-users", _describe(train={**_leaf(["f0"]), "users": "f0"}),
     (TRAIN_FILE, "'users' must be a list")),
    ("data-wrong-type-num-samples", _describe(train={**_leaf(["f0", "f1"]), "num_samples": ["2", "2"]}),
     (TRAIN_FILE, "'num_samples' entry of user 'f0' must be an int")),
    ("data-num-samples-length", _describe(train={**_leaf(["f0", "f1"]), "num_samples": [2]}),
     (TRAIN_FILE, "'num_samples' has 1 entries for 2 users")),
    ("data-int-user-id", _describe(train={**_leaf(["f0"]), "users": [7]}), (TRAIN_FILE, "user ids must be strings")),
    ("data-duplicate-user", _describe(train={**_leaf(["f0"]), "users": ["f0", "f0"], "num_samples": [2, 2]}),
     (TRAIN_FILE, "user 'f0' listed twice")),
    ("data-user-without-data", _describe(train={**_leaf(["f0"]), "users": ["f0", "f1"], "num_samples": [2, 2]}),
     (TRAIN_FILE, "user 'f1' has no entry in 'user_data'")),
    ("data-x-not-a-list", _describe(train=_bad_user(x="pixels", y=[1])),
     (TRAIN_FILE, "user_data['f0']", "'x' and 'y'")),
    ("data-x-y-length-mismatch", _describe(train=_bad_user(x=[PIX, PIX], y=[1])),
     (TRAIN_FILE, "user_data['f0'] has 2 x but 1 y")),
    ("data-wrong-pixel-count", _describe(train=_bad_user(x=[[0.5] * 10], y=[1])),
     ("femnist", "train data of user 'f0'", "784 pixels")),
    ("data-label-out-of-range", _describe(train=_bad_user(x=[PIX], y=[99])),
     ("femnist", "train data of user 'f0'", "labels must lie in 0..61")),
    ("data-non-numeric-pixels", _describe(train=_bad_user(x=[["a"] * 784], y=[1])),
     ("femnist", "train data of user 'f0'")),
    ("data-train-test-mismatch", _describe(test=_leaf(["f0", "f2"])),
     ("train/test users differ", "{tmp}/femnist/train", "only in train ['f1']", "only in test ['f2']")),
    ("data-empty-dir", _describe(lambda r: [p.unlink() for p in (r / "train").iterdir()]),
     ("no LEAF .json/.json.gz files in {tmp}/femnist/train",)),
    ("data-missing-test-dir", _describe(lambda r: shutil.rmtree(r / "test")),
     ("{tmp}/femnist", "train/ and test/")),
    ("data-missing-root", lambda tmp: ["data", "describe", "femnist", "--root", str(tmp / "nowhere")],
     ("{tmp}/nowhere", "LEAF sample directory")),
    ("data-unknown-option", lambda tmp: ["data", "describe", "synthetic", "--option", "num_taks=5"],
     ("synthetic: unknown option 'num_taks'", "num_tasks")),
    ("data-bad-option-syntax", lambda tmp: ["data", "describe", "synthetic", "--option", "num_tasks"],
     ("--option expects key=value",)),
    ("data-deeply-nested-json", _describe(train_text="[" * 100_000 + "]" * 100_000),
     (TRAIN_FILE, "JSON nested too deeply")),
    ("data-not-utf8", _describe(lambda r: (r / "train" / TRAIN_NAME).write_bytes(b'{"users": ["\xff"]}')),
     (TRAIN_FILE, "not UTF-8")),
    ("data-nan-pixel", _describe(train=_bad_user(x=[[math.nan] + PIX[1:]], y=[1])),
     (TRAIN_FILE, "femnist", "train data of user 'f0'", "1 NaN or infinite value(s)")),
    ("data-inf-pixel-1e400", _describe(train_text=json.dumps(_bad_user(x=[[7.0] + PIX[1:]], y=[1])).replace("7.0", "1e400")),
     (TRAIN_FILE, "train data of user 'f0'", "NaN or infinite")),
    ("data-non-integer-label", _describe(train=_bad_user(x=[PIX, PIX], y=[1, 2.5])),
     (TRAIN_FILE, "train data of user 'f0'", "labels must be integers, got 2.5")),
    ("data-label-beyond-int64", _describe(train=_bad_user(x=[PIX], y=[2 ** 70])),
     (TRAIN_FILE, "train data of user 'f0'")),
    ("data-label-out-of-range-test", _describe(test=_bad_user(x=[PIX], y=[62])),
     ("{tmp}/femnist/test/all_data_0_niid_05_keep_0_test_9.json", "test data of user 'f0'", "0..61")),
    # --- configs: YAML files
    ("config-unknown-key-yaml", _run(yaml_text=_QUAD_YAML + "lrr: 0.1\n"),
     ("{tmp}/cfg.yaml", "unknown config key(s) lrr")),
    ("config-yaml-not-a-mapping", _run(yaml_text="- lr: 0.1\n- seed: 1\n"), ("{tmp}/cfg.yaml", "expected a mapping")),
    ("config-yaml-scalar", _run(yaml_text="just a string\n"), ("{tmp}/cfg.yaml", "expected a mapping", "str")),
    ("config-yaml-syntax", _run(yaml_text="lr: [0.1\nseed: 1\n"), ("{tmp}/cfg.yaml", "not valid YAML")),
    ("config-file-missing", lambda tmp: ["run", "--config", str(tmp / "nope.yaml"), "--out", str(tmp / "o")],
     ("{tmp}/nope.yaml", "config file not found")),
    ("config-lr-string-yaml", _run(yaml_text=_QUAD_YAML + "lr: abc\n"),
     ("{tmp}/cfg.yaml", "lr: expected a number", "abc")),
    ("config-lr-list-yaml", _run(yaml_text=_QUAD_YAML + "lr: [0.1, 0.2]\n"), ("lr: expected a finite number",)),
    ("config-num-clients-float-yaml", _run(yaml_text="dataset: quadratic\nnum_clients: 2.5\n"),
     ("num_clients: expected an integer", "2.5")),
    ("config-dataset-options-not-mapping", _run(yaml_text=_QUAD_YAML + "dataset_options: [1, 2]\n"),
     ("dataset_options: expected a mapping",)),
    ("config-not-utf8", _run(yaml_bytes=_QUAD_YAML.encode() + "lr: 0.1  # caf\xe9\n".encode("latin-1")),
     ("{tmp}/cfg.yaml", "not UTF-8 text (byte 0xe9")),
    ("config-yaml-nested-too-deeply", _run(yaml_text="lr: " + "[" * 20_000 + "]" * 20_000 + "\n"),
     ("{tmp}/cfg.yaml", "nested too deeply")),
    ("config-int-beyond-int64-yaml", _run(yaml_text=_QUAD_YAML.replace("num_clients: 6", f"num_clients: {10 ** 30}")),
     ("num_clients: 1000000000000000000000000000000 does not fit a 64-bit integer",)),
    ("config-float-too-large-yaml", _run(yaml_text=_QUAD_YAML + "lr: 1" + "0" * 400 + "\n"),
     ("lr: 1000", "is too large for a number")),
    # --- configs: --set values and impossible combinations
    ("config-unknown-key-set", _run(*QUAD, "lrr=0.1"), ("--set", "unknown config key(s) lrr")),
    ("config-set-without-equals", _run(*QUAD, "lr"), ("--set 'lr'", "expected key=value")),
    ("config-s-greater-than-n", _run(*QUAD, "clients_per_round=9"), ("clients_per_round", "exceeds num_clients = 6")),
    ("config-K-zero", _run(*QUAD, "local_steps=0"), ("local_steps: must be >= 1",)),
    ("config-bits-zero", _run(*QUAD, "quantizer=lattice", "bits=0"), ("bits: must be >= 1",)),
    ("config-bits-33", _run(*QUAD, "quantizer=qsgd", "bits=33"), ("bits: must be <= 32",)),
    ("config-identity-with-bits", _run(*QUAD, "bits=8"), ("bits: the identity quantizer",)),
    ("config-negative-sit", _run(*QUAD, "sit=-1"), ("sit: must be >= 0",)),
    ("config-negative-swt", _run(*QUAD, "swt=-0.5"), ("swt: must be >= 0",)),
    ("config-lr-abc", _run(*QUAD, "lr=abc"), ("lr: expected a number", "'abc'")),
    ("config-lr-zero", _run(*QUAD, "lr=0"), ("lr: must be > 0",)),
    ("config-lr-nan", _run(*QUAD, "lr=nan"), ("lr: expected a finite number",)),
    ("config-time-limit-inf", _run(*QUAD, "time_limit=inf"), ("time_limit: expected a finite number",)),
    ("config-seed-negative", _run(*QUAD, "seed=-1"), ("seed: must be >= 0",)),
    ("config-slow-fraction", _run(*QUAD, "slow_fraction=1.5"), ("slow_fraction: must be in [0, 1]",)),
    ("config-bool", _run(*QUAD, "server_averaging=maybe"), ("server_averaging: expected true/false",)),
    ("config-buffer-too-big", _run(*QUAD, "algorithm=fedbuff", "buffer_size=7"), ("buffer_size: Z = 7 exceeds",)),
    ("config-unknown-algorithm", _run(*QUAD, "algorithm=fedprox"), ("algorithm: unknown value 'fedprox'", "quafl")),
    ("config-unknown-quantizer", _run(*QUAD, "quantizer=zip"), ("quantizer: unknown value 'zip'", "lattice")),
    ("config-unknown-dataset", _run("dataset=emnist"), ("dataset: unknown value 'emnist'", "femnist")),
    ("config-unknown-staleness", _run(*QUAD, "staleness=exp"), ("staleness: unknown value 'exp'",)),
    ("config-unknown-model", _run(*SYNTH, "model=vgg"), ("unknown model 'vgg'",)),
    ("config-quadratic-without-n", _run("dataset=quadratic", "clients_per_round=1"),
     ("num_clients: the quadratic problem needs",)),
    ("config-quadratic-bad-option", _run(*QUAD, "dataset_options={dimm: 3}"),
     ("dataset_options.dimm: unknown option",)),
    ("config-synthetic-bad-option", _run("dataset=synthetic", "dataset_options={num_taks: 3}"),
     ("synthetic: unknown option 'num_taks'",)),
    ("config-more-clients-than-data", _run(*SYNTH, "num_clients=500"),
     ("num_clients: 500 requested but dataset 'synthetic' has only 30",)),
    ("config-femnist-missing-root", _run("dataset=femnist", "data_root={tmp}/none"), ("{tmp}/none",)),
    ("config-checkpoint-every-zero", _run(*QUAD, extra=("--checkpoint-every", "0")),
     ("--checkpoint-every: must be > 0",)),
    # --- huge integers, YAML inside --set, configs that can never finish, sizes too large to allocate
    ("config-num-clients-power-expr", _run(*QUAD, "num_clients=10**30"), ("num_clients: expected an integer",)),
    ("config-num-clients-beyond-int64", _run(*QUAD, f"num_clients={10 ** 30}"),
     ("num_clients:", "does not fit a 64-bit integer",)),
    ("config-seed-beyond-int64", _run(*QUAD, f"seed={2 ** 64}"), ("seed: 18446744073709551616 does not fit",)),
    ("config-yaml-error-in-set", _run(*QUAD, "dataset_options={dim: [1"),
     ("--set: dataset_options: not valid YAML", "'{dim: [1'")),
    ("config-quafl-clock-never-advances", _run(*QUAD, "sit=0"), ("sit, swt: QuAFL with sit = swt = 0 never advances",)),
    ("config-eval-every-tiny", _run(*QUAD, "eval_every=1e-9"),
     ("eval_every: 1e-09 gives 3e+10 intervals over time_limit = 30.0; at most 1,000,000",)),
    ("config-eval-every-nan", _run(*QUAD, "eval_every=nan"), ("eval_every: expected a finite number",)),
    ("config-checkpoint-every-nan", _run(*QUAD, extra=("--checkpoint-every", "nan")),
     ("--checkpoint-every: expected a finite number, got nan",)),
    ("config-checkpoint-every-inf", _run(*QUAD, extra=("--checkpoint-every", "inf")),
     ("--checkpoint-every: expected a finite number, got inf",)),
    ("config-checkpoint-every-tiny", _run(*QUAD, extra=("--checkpoint-every", "1e-9")),
     ("--checkpoint-every: 1e-09 gives 3e+10 intervals",)),
    ("config-memory-clients-times-dim", _run("dataset=quadratic", "num_clients=1000000000", "clients_per_round=2",
                                             "dataset_options={dim: 1000}"),
     ("num_clients, model size: this run needs about", "n = 1,000,000,000, d = 1,000", "GB are available")),
    ("config-memory-lattice-huge-dim", _run("dataset=quadratic", "num_clients=4", "clients_per_round=2", "quantizer=lattice",
                                            "bits=16", "dataset_options={dim: 100000000000}"),
     ("num_clients, model size", "d = 100,000,000,000")),
    # --- sweeps
    ("sweep-grid-not-mapping", _sweep(_QUAD_YAML + "grid: [1, 2]\n"), ("{tmp}/sweep.yaml", "grid: expected a mapping")),
    ("sweep-grid-unknown-key", _sweep(_QUAD_YAML + "grid:\n  lrr: [0.1]\n"),
     ("{tmp}/sweep.yaml", "grid.lrr: unknown config key")),
    ("sweep-grid-scalar", _sweep(_QUAD_YAML + "grid:\n  lr: 0.1\n"), ("grid.lr: expected a non-empty list",)),
    ("sweep-grid-empty", _sweep(_QUAD_YAML + "grid:\n  lr: []\n"), ("grid.lr: expected a non-empty list",)),
    ("sweep-grid-seed", _sweep(_QUAD_YAML + "grid:\n  seed: [1, 2]\n"), ("grid.seed", "--seeds")),
    ("sweep-grid-bad-value", _sweep(_QUAD_YAML + "grid:\n  lr: [0.1, -1]\n"),
     ("{tmp}/sweep.yaml", "lr=-1", "lr: must be > 0")),
    ("sweep-key-twice", _sweep(_QUAD_YAML + "lr: 0.1\ngrid:\n  lr: [0.1, 0.2]\n"), ("lr: given both",)),
    ("sweep-seed-key", _sweep(_QUAD_YAML + "seed: 3\n"), ("seed: a sweep runs seeds 0..N-1",)),
    ("sweep-zero-seeds", _sweep(_QUAD_YAML, "0"), ("--seeds: expected a positive number",)),
    ("sweep-checkpoint-every-zero", _sweep(_QUAD_YAML, "1", "--checkpoint-every", "0"),
     ("--checkpoint-every: must be > 0",)),
    ("sweep-address-without-ray", _sweep(_QUAD_YAML, "1", "--address", "auto"), ("--address",)),
    ("sweep-clock-never-advances", _sweep(_QUAD_YAML.replace("sit: 1\n", "") + "grid:\n  sit: [1, 0]\n"),
     ("{tmp}/sweep.yaml (sit=0)", "never advances")),
    ("sweep-eval-every-tiny", _sweep(_QUAD_YAML + "grid:\n  eval_every: [5, 1.0e-9]\n"),
     ("{tmp}/sweep.yaml (eval_every=1e-09): eval_every: 1e-09 gives 2e+10 intervals",)),
    # --- data prepare
    ("prepare-bad-zip", lambda tmp: _bad_archives(tmp), ("{tmp}/raw/by_class.zip: not a readable zip archive",)),
]


def _bad_archives(tmp: Path) -> list[str]:
    raw = tmp / "raw"
    raw.mkdir()
    (raw / "by_class.zip").write_bytes(b"PK\x03\x04 this is not a zip archive")
    (raw / "by_write.zip").write_bytes(b"nor is this")
    return ["data", "prepare", "femnist", "--raw", str(raw), "--out", str(tmp / "prepared")]


def _expand(needle: str, tmp: Path) -> str:
    return needle.replace("{tmp}", str(tmp))


def _check(rc: int, err: str, needles: tuple[str, ...], tmp: Path) -> None:
    assert rc == 2, f"exit status {rc}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qafl: error: "), f"expected one error line, got:\n{err}"
    for n in needles:
        assert _expand(n, tmp) in lines[0], f"{_expand(n, tmp)!r} not in {lines[0]!r}"


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("case_id,setup,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, setup, needles, tmp_path, capsys):
    argv = [_expand(a, tmp_path) for a in setup(tmp_path)]
    before = _tree(tmp_path)
    rc = main(argv)
    cap = capsys.readouterr()
    _check(rc, cap.err, needles, tmp_path)
    assert _tree(tmp_path) == before, "a refused command changed the disk"


@pytest.mark.parametrize("case_id", ["data-truncated-json", "config-unknown-key-yaml", "sweep-grid-bad-value"])
def test_bad_input_real_process(case_id, tmp_path):
    """The installed entry point behaves as main(): exit status 2, one line, no traceback."""
    _, setup, needles = next(c for c in CASES if c[0] == case_id)
    argv = [_expand(a, tmp_path) for a in setup(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "qafl_core.cli", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    _check(done.returncode, done.stderr, needles, tmp_path)


def test_argparse_errors_exit_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--set", "lr=0.1"])  # --out missing
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err


# ---------------------------------------------------------------------- runs that diverge
@pytest.mark.parametrize("quantizer", ["identity", "qsgd", "lattice"])
def test_diverging_quadratic_run_stops_and_is_marked(quantizer, tmp_path, capsys):
    q = {"identity": [], "qsgd": ["quantizer=qsgd", "bits=8"], "lattice": ["quantizer=lattice", "bits=16"]}[quantizer]
    argv = _run(*QUAD, "lr=1e10", "time_limit=200", *q)(tmp_path)
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("DIVERGED"), out
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    status = df[df.split == "status"]
    assert list(status.metric) == ["diverged"] and list(status.value) == [1.0]
    t = status.time.iloc[0]
    assert 0 < t < 200 and df.time.max() == t  # stopped there: nothing recorded later


def test_diverging_neural_run_stops_and_is_marked(tmp_path, capsys):
    rc = main(_run(*SYNTH, "lr=1e38", "time_limit=100")(tmp_path))
    assert rc == 0 and capsys.readouterr().out.startswith("DIVERGED")
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    status = df[df.split == "status"]
    assert list(status.metric) == ["diverged"] and 0 < status.time.iloc[0] < 100


def test_sweep_goes_on_after_a_diverged_run(tmp_path, capsys):
    yaml_text = _QUAD_YAML + "eval_every: 5\ngrid:\n  lr: [0.05, 1.0e+10, 0.1]\n"
    rc = main(_sweep(yaml_text, "2")(tmp_path))
    assert rc == 0
    summary = pd.read_csv(tmp_path / "sw" / "summary.csv")
    assert list(summary.status) == ["ok", "ok", "diverged", "diverged", "ok", "ok"]
    assert summary.diverged_at.notna().tolist() == [False, False, True, True, False, False]
    results = pd.read_csv(tmp_path / "sw" / "results.csv")
    assert set(results.run) == set(range(6))
    assert (results[results.run.isin([0, 1, 4, 5])].time.max() >= 20)  # the others ran to the end


def test_batch_goes_on_after_a_failing_run(tmp_path, caplog):
    from qafl_core.backend import failures, run_many, run_status

    ok = dict(dataset="quadratic", num_clients=6, clients_per_round=2, sit=1.0, time_limit=20.0, progress=False)
    configs = [ok, {**ok, "dataset_options": {"dimm": 3}}, {**ok, "lr": 1e10}, {**ok, "seed": 1}]
    frames = run_many(configs, cache_dir=tmp_path)
    assert [run_status(f) for f in frames] == ["ok", "failed", "diverged", "ok"]
    assert failures(frames) == [(1, "ValueError: dataset_options.dimm: unknown option of the quadratic problem; "
                                    "valid: dim, sigma, heterogeneity, offset")]
    assert "run #1" in caplog.text and "dimm" in caplog.text
    with pytest.raises(ValueError, match=r"config #2: lr: must be > 0"):
        run_many([ok, ok, {**ok, "lr": -1}], cache_dir=tmp_path)


# ---------------------------------------------------------------------- numerical faults are results
@pytest.mark.parametrize("algorithm,quantizer,bits,lr", [
    ("quafl", "lattice", 16, 1e3),             # |x|/eps passes 2**62 while x is still finite
    ("quafl", "dithered_lattice", 12, 1e10),
    ("fedavg", "lattice", 16, 1e3),
    ("fedbuff", "lattice", 16, 3.0),
    ("fedbuff", "dithered_lattice", 12, 2.5),
])
def test_lattice_range_overflow_is_a_diverged_run(algorithm, quantizer, bits, lr, tmp_path, capsys):
    argv = _run(*QUAD, "time_limit=200", f"algorithm={algorithm}", f"quantizer={quantizer}", f"bits={bits}",
                f"lr={lr}")(tmp_path)
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("DIVERGED"), out
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    status = df[df.split == "status"]
    assert list(status.metric) == ["diverged"] and df.time.max() == status.time.iloc[0] < 200
    assert (df.split == "test").sum() >= 2  # the curve up to the fault is kept


def test_sweep_goes_on_after_a_lattice_range_overflow(tmp_path):
    yaml_text = (_QUAD_YAML + "eval_every: 5\nquantizer: lattice\nbits: 16\n"
                 "grid:\n  lr: [0.05, 1000.0, 0.1]\n")
    assert main(_sweep(yaml_text, "1")(tmp_path)) == 0
    summary = pd.read_csv(tmp_path / "sw" / "summary.csv")
    assert list(summary.status) == ["ok", "diverged", "ok"] and 0 < summary.diverged_at.iloc[1] < 20


@pytest.mark.parametrize("name,bad", [("lattice", math.inf), ("lattice", 1e30), ("dithered_lattice", math.nan),
                                      ("qsgd", math.inf), ("qsgd", math.nan)])
def test_every_quantizer_refuses_bad_values_in_the_words_the_runner_treats_as_divergence(name, bad):
    import torch

    from qafl_core.quantize import make_quantizer
    from qafl_core.runner import QUANTIZER_RANGE_ERROR

    q = make_quantizer(name, bits=8, eps=1e-4, bucket=None, segments=[4])
    x = torch.tensor([0.0, 1.0, bad, 2.0])
    with pytest.raises(ValueError, match=QUANTIZER_RANGE_ERROR):
        q.encode(x, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------- bad data: bounded reads, NaN, labels
def test_gzip_bomb_is_refused_before_it_is_decompressed(tmp_path, monkeypatch, capsys):
    import gzip

    root = _femnist(tmp_path)
    bomb = root / "train" / (TRAIN_NAME + ".gz")
    (root / "train" / TRAIN_NAME).unlink()
    with gzip.open(bomb, "wb") as fh:  # 20 MB of JSON padding in a ~20 kB file
        fh.write(b'{"users": [], "num_samples": [], "user_data": {}, "pad": "' + b" " * 20_000_000 + b'"}')
    assert bomb.stat().st_size < 100_000
    monkeypatch.setenv("QAFL_MAX_JSON_BYTES", str(10 ** 6))
    rc = main(["data", "describe", "femnist", "--root", str(root)])
    _check(rc, capsys.readouterr().err, (str(bomb), "more than 1,000,000 bytes after decompression; refused",
                                         "QAFL_MAX_JSON_BYTES"), tmp_path)
    from qafl_core import limits

    assert limits.MAX_JSON_BYTES == 2 ** 30  # the documented default


def _idx(path: Path, kind: int, shape: tuple[int, ...], body: bytes) -> None:
    head = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    path.write_bytes(head + body)


def _fmnist(root: Path, labels: bytes, n: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for img, lab in (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                     ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
        _idx(root / img, 3, (n, 28, 28), bytes(n * 784))
        _idx(root / lab, 1, (n,), labels)
    return root


def test_vision_label_out_of_range_names_the_file(tmp_path, capsys):
    root = _fmnist(tmp_path / "fm", bytes([1, 2, 12, 3]))
    rc = main(["data", "describe", "fmnist", "--root", str(root), "--num-clients", "2"])
    _check(rc, capsys.readouterr().err, (f"{root}/train-labels-idx1-ubyte: label 12 of sample 2 is not in 0..9",),
           tmp_path)
    root = _fmnist(tmp_path / "ok", bytes([1, 2, 9, 3]))
    assert main(["data", "describe", "fmnist", "--root", str(root), "--num-clients", "2", "--json"]) == 0


def test_vision_gzip_bomb_is_refused(tmp_path, monkeypatch, capsys):
    import gzip

    import qafl_core.data.vision as vision

    root = _fmnist(tmp_path / "fm", bytes([1, 2, 3, 4]))
    img = root / "train-images-idx3-ubyte"
    img.with_name(img.name + ".gz").write_bytes(gzip.compress(img.read_bytes() + bytes(10 ** 6)))
    img.unlink()
    monkeypatch.setattr(vision, "_MAX_IDX_BYTES", 100_000)
    rc = main(["data", "describe", "fmnist", "--root", str(root), "--num-clients", "2"])
    _check(rc, capsys.readouterr().err, (f"{img}.gz: more than 100,000 bytes after decompression",), tmp_path)


def test_nan_or_bad_labels_in_a_dataset_from_any_source_are_a_data_error():
    """Tensors that bypass the file readers (a planted or stale Synthetic cache) are checked too."""
    import torch

    from qafl_core.data.federated import FederatedDataset

    ok = dict(name="synthetic", client_ids=["0", "1"], x_train=torch.zeros(4, 3), y_train=torch.tensor([0, 1, 0, 1]),
              train_offsets=torch.tensor([0, 2, 4]), x_test=torch.zeros(2, 3), y_test=torch.tensor([0, 1]),
              test_offsets=torch.tensor([0, 1, 2]), num_classes=2)
    FederatedDataset(**ok)
    x = torch.zeros(4, 3)
    x[3, 1] = math.nan
    with pytest.raises(ValueError, match=r"synthetic: train inputs of client '1' hold NaN or infinite values"):
        FederatedDataset(**{**ok, "x_train": x})
    with pytest.raises(ValueError, match=r"synthetic: test labels of client '0' must be integers in 0..1, got 5"):
        FederatedDataset(**{**ok, "y_test": torch.tensor([5, 1])})
    with pytest.raises(ValueError, match=r"train labels of client '0' must be integers"):
        FederatedDataset(**{**ok, "y_train": torch.tensor([0.5, 1.0, 0.0, 1.0])})


def test_refused_prepare_keeps_the_previous_output(tmp_path, capsys):
    """With --force a failing prepare (here: a corrupt archive) leaves the earlier LEAF data as it was."""
    out = tmp_path / "prepared"
    (out / "train").mkdir(parents=True)
    (out / "train" / "old.json").write_text("{}")
    argv = _bad_archives(tmp_path)
    argv[argv.index("--out") + 1] = str(out)
    rc = main(argv + ["--force"])
    _check(rc, capsys.readouterr().err, ("by_class.zip: not a readable zip archive",), tmp_path)
    assert [p.name for p in out.rglob("*")] == ["train", "old.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".staging")]


def test_a_config_with_an_unbounded_horizon_is_fine_until_it_is_run():
    """Simulations stepped by hand (the benchmarks) use huge horizons; only a run that evaluates is bounded."""
    from qafl_core.config import RunConfig
    from qafl_core.runner import run

    cfg = RunConfig(dataset="quadratic", num_clients=4, clients_per_round=2, time_limit=1e12, progress=False)
    with pytest.raises(ValueError, match=r"eval_every: 50.0 gives 2e\+10 intervals .* at most 1,000,000"):
        run(cfg)
    cfg.replace(time_limit=5e7).check_intervals()                       # exactly 1,000,000 evaluations: allowed
    with pytest.raises(ValueError, match=r"checkpoint_every: 1e-05 gives 1e\+07 intervals"):
        cfg.replace(time_limit=100.0).check_intervals(checkpoint_every=1e-5)
