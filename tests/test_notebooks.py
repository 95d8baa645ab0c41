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
             "tab1_time_to_accuracy", "theory_quadratic", "heterogeneity"]
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
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=3000)   # every notebook; a loaded 2-core machine needs ~25 min
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
            if not isinstance(stats, dict):      # a record's own final accuracies (e.g. beside a speed-up)
                assert stats is None or 0.0 <= stats <= 1.0, f"{name}: accuracy of {label} = {stats}"
                continue
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
#: run settings every notebook declares (qafl_core.experiments.common.SETTINGS) and their defaults when run by hand
SETTINGS = {"profile": "interactive", "output_dir": None, "backend": "local", "address": None, "num_threads": None}
#: builtins a thin notebook may call besides qafl_core (collecting parameters, printing)
BUILTINS = {"print", "dict", "globals"}
MAX_CODE_CELLS = 6


def _thin_problems(nb, name: str) -> list[str]:
    """Why ``nb`` is not a thin notebook for figure ``name`` ([] when it is): a markdown title, one ``parameters``
    cell of plain literal assignments whose names are the profiles' keys (defaults: the smoke profile) plus the run
    settings, few code cells, no ``def``/``class``/``lambda``, imports from ``qafl_core`` only and no calls but
    into those modules.  Outputs, execution counts and metadata (what Jupyter adds on save) do not matter."""
    import ast

    from qafl_core.experiments import figure

    problems = []
    if not (nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")):
        problems.append("the first cell must be a markdown title")
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        return problems + [f"{len(tagged)} cells tagged 'parameters', expected 1"]
    if len(code) > MAX_CODE_CELLS:
        problems.append(f"{len(code)} code cells, at most {MAX_CODE_CELLS}")
    values = {}
    for stmt in ast.parse(tagged[0].source).body:
        ok = isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
        try:
            values[stmt.targets[0].id] = ast.literal_eval(stmt.value) if ok else None
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"parameters cell: line {stmt.lineno} is not 'name = plain value'")
    smoke = yaml.safe_load((NB_DIR / "params" / f"{name}.smoke.yaml").read_text())
    for profile in ("smoke", "paper"):
        keys = set(yaml.safe_load((NB_DIR / "params" / f"{name}.{profile}.yaml").read_text()))
        if keys | set(SETTINGS) != set(values):
            problems.append(f"parameters cell names differ from {name}.{profile}.yaml's keys + run settings: "
                            f"{sorted(set(values) ^ (keys | set(SETTINGS)))}")
    defaults = {**SETTINGS, **smoke}
    wrong = sorted(k for k in values if k in defaults and values[k] != defaults[k])
    if wrong:
        problems.append(f"parameters cell defaults differ from the smoke profile / run settings: {wrong}")
    if set(figure(name).PARAMETERS) != set(smoke):
        problems.append(f"qafl_core.experiments.{name}.PARAMETERS differ from {name}.smoke.yaml's keys")
    modules = set()
    for cell in code:
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                problems.append(f"a {type(node).__name__} in a code cell: logic belongs in qafl_core.experiments.{name}")
            elif isinstance(node, ast.Import):
                problems.append(f"'import {node.names[0].name}': import from qafl_core only")
            elif isinstance(node, ast.ImportFrom):
                if not (node.module or "").startswith("qafl_core"):
                    problems.append(f"'from {node.module} import ...': import from qafl_core only")
                modules |= {a.asname or a.name for a in node.names}
    for cell in code:
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call):
                f = node.func
                root = f
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(f, ast.Name) and f.id in BUILTINS:
                    continue
                if not (isinstance(f, ast.Attribute) and isinstance(root, ast.Name) and root.id in modules):
                    problems.append(f"a call to {ast.unparse(f)}: a thin notebook calls only qafl_core")
    return problems


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_thin(name):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    assert _thin_problems(nb, name) == []


def test_every_notebook_has_its_figure_module():
    from qafl_core.experiments import FIGURES, figure

    assert set(FIGURES) <= set(NOTEBOOKS) and set(NOTEBOOKS) <= {p.stem for p in NB_DIR.glob("*.ipynb")}
    assert all(figure(p.stem) is not None for p in NB_DIR.glob("*.ipynb"))
    assert figure("common") is None and figure("no_such_figure") is None


def test_the_thin_check_can_fail():
    nb = nbformat.read(NB_DIR / "fig4_vs_fedavg.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = next(c for c in code if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace("seeds = [0, 1, 2]", "seeds = [0]").replace("\nbaseline = True", "")
    code[-1].source = "import numpy\ndef f():\n    return numpy.mean([1])\n" + code[-1].source
    problems = "\n".join(_thin_problems(nb, "fig4_vs_fedavg"))
    for expected in ("names differ", "['baseline']", "defaults differ", "['seeds']", "a FunctionDef", "'import numpy'",
                     "a call to numpy.mean"):
        assert expected in problems, problems


def _as_saved_by_jupyter(nb):
    """``nb`` as Jupyter saves it after a run: execution counts, outputs, cell and notebook metadata."""
    for k, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = k + 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="some output\n"),
                        nbformat.v4.new_output("display_data", data={"text/plain": "<Figure>", "image/png": "iVBORw0KGgo="})]
        cell.metadata.update({"scrolled": True, "execution": {"iopub.status.busy": "2026-11-29T10:00:00.000Z"}})
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.2", "mimetype": "text/x-python",
                                    "file_extension": ".py", "codemirror_mode": {"name": "ipython", "version": 3}}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    return nb


@pytest.mark.slow
def test_a_notebook_saved_by_jupyter_stays_thin_and_runs_through_reproduce(tmp_path):
    """Open, run and save in Jupyter: the thin check still passes and ``qafl reproduce`` still runs it (here the
    theory notebook with a tiny profile of its own, so that it takes seconds)."""
    import shutil

    name = "theory_quadratic"
    nb_dir = tmp_path / "notebooks"
    shutil.copytree(NB_DIR / "params", nb_dir / "params")
    saved = _as_saved_by_jupyter(nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4))
    nbformat.write(saved, nb_dir / f"{name}.ipynb")
    assert _thin_problems(nbformat.read(nb_dir / f"{name}.ipynb", as_version=4), name) == []
    tiny = {**yaml.safe_load((NB_DIR / "params" / f"{name}.smoke.yaml").read_text()), "num_clients": 4,
            "clients_per_round": 2, "dim": 5, "horizons": [5, 10], "peers": [1, 2], "local_steps_grid": [1, 2],
            "seeds": [0]}
    (nb_dir / "params" / f"{name}.tiny.yaml").write_text(yaml.safe_dump(tiny))
    env = {**os.environ, "QAFL_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "qafl_core.cli", "reproduce", "--profile", "tiny", "--notebooks-dir", str(nb_dir),
           "--output-dir", str(tmp_path / "figures"), "--jobs", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads((tmp_path / "figures" / f"{name}.metrics.json").read_text())
    # 2 conservation runs, T = 5 and 10, s = 1 (s = 2 is the T = 10 run), K = 1 and 2
    assert rec["profile"] == "tiny" and rec["num_runs"] == 7


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
