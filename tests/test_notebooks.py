"""Every figure notebook runs under papermill with its smoke profile and writes sane headline numbers.

One session fixture runs ``qafl reproduce --profile smoke --jobs 2`` once, into temporary figure, executed-
notebook and run-cache folders (``QAFL_CACHE_DIR``), so the tests depend on no earlier run; each test then
checks one notebook's outputs.  With ``QAFL_DATA_DIR`` set (CI) the FEMNIST-based figures use FEMNIST,
without it they must say "embedded fallback".  The static tests check the committed notebooks themselves.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

pytestmark = pytest.mark.notebooks

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = ["fig1_peers", "fig2_bits", "fig3_averaging", "fig4_vs_fedavg", "fig5_vs_fedbuff",
             "tab1_time_to_accuracy", "theory_quadratic"]
#: notebooks whose subject is FEMNIST/CelebA and so fall back to embedded data without QAFL_DATA_DIR
NEEDS_FEMNIST = {"fig1_peers", "fig3_averaging", "fig4_vs_fedavg", "fig5_vs_fedbuff", "tab1_time_to_accuracy"}


def _femnist_present() -> bool:
    base = os.environ.get("QAFL_DATA_DIR")
    return bool(base) and (Path(base) / "femnist" / "slz-ai__leaf-torch" / "train").is_dir()


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "QAFL_CACHE_DIR": str(tmp / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "qafl_core.cli", "reproduce", "--profile", "smoke", "--jobs", "2",
           "--output-dir", str(tmp / "figures"), "--executed-dir", str(tmp / "executed")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr, "figures": tmp / "figures",
            "executed": tmp / "executed"}


def _numbers(obj, path=""):
    """Every number in a JSON value with its path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def _accuracy_tables(headline):
    """(path, {label: {"mean", ...}}) for every final-accuracy table in a headline."""
    if isinstance(headline, dict):
        for k, v in headline.items():
            if k == "final_accuracy":
                yield k, v
            else:
                yield from _accuracy_tables(v)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_smoke_profile(smoke, name):
    line = next((ln for ln in smoke["out"].splitlines() if ln.startswith(name + " ")), None)
    assert line is not None, f"{name} missing from the reproduce table:\n{smoke['out']}\n{smoke['err'][-3000:]}"
    assert " ok " in line, f"{name} failed: {line}"
    assert (smoke["executed"] / f"{name}.smoke.ipynb").is_file()
    figs = smoke["figures"]
    for ext in ("png", "pdf"):
        assert (figs / f"{name}.{ext}").stat().st_size > 5000
    rec = json.loads((figs / f"{name}.metrics.json").read_text())
    assert rec["figure"] == name and rec["profile"] == "smoke" and rec["config_hashes"]
    assert set(rec) >= {"headline", "dataset", "embedded_fallback", "datasets", "files", "git_commit"}
    head = rec["headline"]
    assert head, "empty headline"
    for path, value in _numbers(head):
        assert math.isfinite(value), f"{name}{path} = {value}"
    tables = list(_accuracy_tables(head))
    if name != "theory_quadratic":
        assert tables, f"{name}: no final_accuracy in the headline"
    for _, table in tables:
        for label, stats in table.items():
            assert 0.0 <= stats["mean"] <= 1.0, f"{name}: accuracy of {label} = {stats['mean']}"
            assert stats["n"] >= 1
    if name in NEEDS_FEMNIST:
        femnist = _femnist_present()
        used = [d["dataset"] for d in rec["datasets"]]
        assert ("femnist" in used) == femnist, f"{name} used {used} with QAFL_DATA_DIR={os.environ.get('QAFL_DATA_DIR')}"
        assert rec["embedded_fallback"] == (not femnist)
        if not femnist:
            assert any("embedded fallback" in d["label"] for d in rec["datasets"])
    man = json.loads((figs / "MANIFEST.json").read_text())
    entry = man["figures"][name]
    assert entry["status"] == "ok" and entry["profile"] == "smoke" and entry["config_hashes"] == rec["config_hashes"]
    assert entry["parameters"]["output_dir"] == str(figs) and entry["wall_time_s"] > 0


def test_reproduce_exit_status_and_summary(smoke):
    assert smoke["rc"] == 0, smoke["out"][-3000:] + smoke["err"][-3000:]
    assert f"{len(NOTEBOOKS)} ok, 0 failed" in smoke["out"]


def test_headlines_make_sense(smoke):
    figs = smoke["figures"]
    h1 = json.loads((figs / "fig1_peers.metrics.json").read_text())["headline"]
    assert all(0 <= v <= 1 for v in h1["zero_step_fraction_slow"].values())
    assert len(h1["final_accuracy"]) == len(yaml.safe_load((NB_DIR / "params/fig1_peers.smoke.yaml").read_text())["peers"])
    h2 = json.loads((figs / "fig2_bits.metrics.json").read_text())["headline"]
    mbit = h2["total_mbit_sent"]
    assert mbit["8 bits (lattice)"] > 0 and h2["decode_failures"]["32 bits (full precision)"] == 0
    h4 = json.loads((figs / "fig4_vs_fedavg.metrics.json").read_text())["headline"]
    assert "Baseline: single slow node" in h4["final_accuracy"]
    ht = json.loads((figs / "theory_quadratic.metrics.json").read_text())["headline"]
    assert ht["max_conservation_residual"]["identity (32-bit)"] < 1e-3      # exact up to float rounding
    assert ht["loglog_slope_vs_T"] < -0.2 and ht["mean_local_steps_H"] > 0
    tab = (figs / "tab1_time_to_accuracy.md").read_text()
    assert tab.startswith("| dataset | algorithm |") and "QuAFL" in tab
    # tab1 reuses fig5's runs (same configs -> same hashes)
    c5 = json.loads((figs / "fig5_vs_fedbuff.metrics.json").read_text())["config_hashes"]
    ct = json.loads((figs / "tab1_time_to_accuracy.metrics.json").read_text())["config_hashes"]
    assert c5 == ct


# ---------------------------------------------------------------------- the committed notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_thin_and_clean(name):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, f"{name}: committed with outputs"
            assert "def " not in cell.source and "class " not in cell.source, f"{name}: logic belongs in qafl_core"
    import papermill

    params = set(papermill.inspect_notebook(str(NB_DIR / f"{name}.ipynb")))
    for profile in ("smoke", "paper"):
        keys = set(yaml.safe_load((NB_DIR / "params" / f"{name}.{profile}.yaml").read_text()))
        assert keys | {"profile", "output_dir"} == params, f"{name}.{profile}.yaml keys differ from the notebook's"


def test_notebooks_match_their_generator():
    sys.path.insert(0, str(NB_DIR))
    try:
        import _make_notebooks as gen
    finally:
        sys.path.remove(str(NB_DIR))
    assert sorted(gen.NOTEBOOKS) == sorted(NOTEBOOKS)
    for name in NOTEBOOKS:
        built = json.loads(nbformat.writes(gen.build(name)))
        assert built == json.loads((NB_DIR / f"{name}.ipynb").read_text()), \
            f"{name}.ipynb is stale: run notebooks/_make_notebooks.py"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_headline_numbers_come_out_again(smoke, name):
    """Committed means reproducible: the smoke profile, re-run from an empty run cache, gives exactly the headline
    numbers committed under figures/smoke/ (real data) or figures/smoke-embedded/ (embedded fallback)."""
    fresh = json.loads((smoke["figures"] / f"{name}.metrics.json").read_text())
    folder = "smoke-embedded" if fresh["embedded_fallback"] else "smoke"
    committed = ROOT / "figures" / folder / f"{name}.metrics.json"
    if not committed.is_file():
        pytest.skip(f"no committed {folder} figure for {name} (the {folder} folder holds the figures of that data)")
    assert fresh["headline"] == json.loads(committed.read_text())["headline"], (
        f"{name}: headline numbers differ from the committed {committed.relative_to(ROOT)}; regenerate the figures "
        "deliberately (qafl reproduce --profile smoke) if the change is intended, and say why in the commit")
