"""Tests of ``qafl reproduce`` (qafl_core.reproduce), the figure modules' shared helpers
(qafl_core.experiments.common, the theory grids) and the manifest (qafl_core.experiments.manifest), on tiny
generated notebooks — the real notebooks are in test_notebooks.py."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from qafl_core import outputs, reproduce
from qafl_core.experiments import common as figures
from qafl_core.experiments import fig2_bits, fig3_averaging, fig4_vs_fedavg, manifest
from qafl_core.experiments import theory_quadratic as theory_grids
from qafl_core.cache import cache_entry
from qafl_core.cli import main as qafl_main
from qafl_core.fingerprint import run_identity


# ---------------------------------------------------------------------- figures: data choice and grids
def test_choose_dataset_falls_back_without_data_dir(monkeypatch):
    monkeypatch.delenv("QAFL_DATA_DIR", raising=False)
    c = figures.choose_dataset("auto", prefer=["celeba", "femnist"], fallback="synthetic")
    assert c.name == "synthetic" and c.fallback and c.requested == "celeba"
    assert "embedded fallback for CelebA" in c.label and "QAFL_DATA_DIR" in c.reason
    assert c.to_dict()["embedded_fallback"] is True
    with pytest.raises(FileNotFoundError, match="femnist"):
        figures.choose_dataset("femnist", fallback=None)
    # embedded data never falls back
    s = figures.choose_dataset("shakespeare", fallback="synthetic")
    assert s.name == "shakespeare" and not s.fallback and s.label == "Shakespeare"


def test_choose_dataset_uses_femnist_when_present(monkeypatch, tmp_path):
    sample = tmp_path / "femnist" / "slz-ai__leaf-torch"
    (sample / "train").mkdir(parents=True)
    (sample / "test").mkdir()
    monkeypatch.setenv("QAFL_DATA_DIR", str(tmp_path))
    c = figures.choose_dataset("auto", prefer=["celeba", "femnist"], options={"femnist": {"merge": True}})
    assert (c.name, c.fallback, dict(c.options)) == ("femnist", False, {"merge": True})
    assert c.label == "FEMNIST (LEAF samples merged)"
    monkeypatch.setenv("QAFL_DATA_DIR", str(tmp_path / "nothing"))
    assert figures.choose_dataset("femnist").fallback



#: the smoke notebooks whose FEMNIST/CelebA subject falls back to embedded data without QAFL_DATA_DIR
_FALLBACK_SMOKE = ("fig1_peers", "fig3_averaging", "fig4_vs_fedavg", "fig5_vs_fedbuff", "tab1_time_to_accuracy")


@pytest.mark.parametrize("name", _FALLBACK_SMOKE)
def test_smoke_fallback_is_the_learnable_synthetic_and_real_data_runs_are_untouched(name, monkeypatch, tmp_path):
    """The main job (no QAFL_DATA_DIR) runs these figures on LEAF Synthetic's learnable preset, where every method
    learns; with FEMNIST present the same profile builds exactly the runs it built with no Synthetic options."""
    import yaml

    from qafl_core.experiments import figure

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "notebooks" / "params" / f"{name}.smoke.yaml").read_text())
    module = figure(name)
    monkeypatch.delenv("QAFL_DATA_DIR", raising=False)
    synthetic = [r.config for r in module.runs(params) if r.config.dataset == "synthetic"]
    assert synthetic and all(c.dataset_options.get("preset") == "learnable" for c in synthetic)   # (+ pool for the single node)
    for sample in ("slz-ai__leaf-torch", "other"):   # a default sample and a second one (merge needs any)
        (tmp_path / "femnist" / sample / "train").mkdir(parents=True)
        (tmp_path / "femnist" / sample / "test").mkdir()
    monkeypatch.setenv("QAFL_DATA_DIR", str(tmp_path))
    without = {**params, "dataset_options": {k: v for k, v in params["dataset_options"].items() if k != "synthetic"}}
    real = figures.config_hashes(module.runs(params))
    assert "synthetic" not in {c.name for c in module.choices(params)}
    assert real == figures.config_hashes(module.runs(without))

def test_variants_grids_and_per_dataset_values():
    choice = figures.DatasetChoice("synthetic", "femnist", fallback=True)
    base = figures.base_config(choice, lr={"femnist": 0.1, "synthetic": 0.02}, model={"default": "auto"},
                               num_clients=20, eval_max_samples=None, buffer_size=None)
    assert base["lr"] == 0.02 and base["model"] == "auto" and base["eval_max_samples"] is None
    assert "buffer_size" not in base                                   # None = the config's default
    runs = figures.variants(base, figures.sweep("clients_per_round", [2, 4], "s = {}"), seeds=[0, 1])
    assert [(r.label, r.config.clients_per_round, r.config.seed) for r in runs] == \
        [("s = 2", 2, 0), ("s = 2", 2, 1), ("s = 4", 4, 0), ("s = 4", 4, 1)]
    assert len(figures.config_hashes(runs)) == 4
    with pytest.raises(ValueError, match="variant 's = 40'.*clients_per_round"):
        figures.variants(base, figures.sweep("clients_per_round", [40], "s = {}"), seeds=[0])
    with pytest.raises(ValueError, match="lr: no entry for dataset 'synthetic'"):
        figures.base_config(choice, lr={"femnist": 0.1})


def test_figures_forward_their_run_keys_and_extra():
    params = {k: None for k in fig2_bits.PARAMETERS}
    params.update(lr=0.02, model="auto", num_clients=20, clients_per_round=4, local_steps=3, lattice_eps=1e-3,
                  slow_fraction=0.25, sit=2.0, swt=0.5, time_limit=100.0, eval_every=10.0, eval_max_samples=None,
                  quantizer="lattice", bits=[8, 32], extra={"batch_size": 16})
    choice = figures.DatasetChoice("synthetic", "mnist", fallback=True)
    assert fig2_bits.base(params, choice) == {
        "dataset": "synthetic", "dataset_options": {}, "progress": False, "lr": 0.02, "model": "auto",
        "num_clients": 20, "clients_per_round": 4, "local_steps": 3, "lattice_eps": 1e-3, "slow_fraction": 0.25,
        "sit": 2.0, "swt": 0.5, "time_limit": 100.0, "eval_every": 10.0, "eval_max_samples": None, "batch_size": 16}
    assert "quantizer" not in fig2_bits.base(params, choice)          # fig. 2's quantizer is its grid's
    assert fig3_averaging.base(params, choice)["quantizer"] == "lattice"
    with pytest.raises(ValueError, match="extra: lr already set by a parameter"):
        fig4_vs_fedavg.base({**params, "extra": {"lr": 1.0}}, choice)


def test_algorithm_names_are_the_registry_labels():
    from qafl_core.algorithms import ALGORITHMS, LABELS, register_algorithm

    assert figures.ALGORITHM_NAMES is LABELS and set(LABELS) == set(ALGORITHMS)
    assert figures.parse_variant("fedasync identity")[0] == "FedAsync 32-bit"
    assert figures.parse_variant("qafel qsgd:8") == ("QAFeL qsgd:8", {"algorithm": "qafel", "quantizer": "qsgd", "bits": 8})
    register_algorithm("fedavg_again", ALGORITHMS["fedavg"], label="FedAvg again")
    try:
        assert figures.parse_variant("fedavg_again identity")[0] == "FedAvg again 32-bit"
    finally:
        del ALGORITHMS["fedavg_again"], LABELS["fedavg_again"]


def test_parse_variant_and_special_grids():
    assert figures.parse_variant("quafl lattice:12") == ("QuAFL lattice:12", {"algorithm": "quafl", "quantizer": "lattice", "bits": 12})
    assert figures.parse_variant("fedbuff identity")[1] == {"algorithm": "fedbuff", "quantizer": "identity", "bits": 32}
    for bad in ("quafl", "sgd identity", "quafl lattice"):
        with pytest.raises(ValueError, match="variants"):
            figures.parse_variant(bad)
    grid = fig4_vs_fedavg.grid({"variants": ["quafl lattice:12", "fedavg identity"], "baseline": True})
    assert list(grid)[-1] == fig4_vs_fedavg.BASELINE_LABEL
    assert grid[fig4_vs_fedavg.BASELINE_LABEL]["slow_fraction"] == 1.0
    assert list(figures.spec_grid(["quafl lattice:12", "fedavg identity"])) == ["QuAFL lattice:12", "FedAvg 32-bit"]
    assert list(fig2_bits.bits_grid([8, 32])) == ["8 bits (lattice)", "32 bits (full precision)"]
    assert fig3_averaging.averaging_grid(["client only"]) == \
        {"averaging: client only": {"server_averaging": False, "client_averaging": True}}
    with pytest.raises(ValueError, match="averaging: unknown variant"):
        fig3_averaging.averaging_grid(["sideways"])


def test_comparison_runs_are_identical_for_fig5_and_tab1():
    """tab1 reuses fig5's runs only if the same parameters give the same config hashes."""
    import yaml

    params = Path(__file__).resolve().parents[1] / "notebooks" / "params"
    for profile in ("smoke", "paper"):
        f5 = yaml.safe_load((params / f"fig5_vs_fedbuff.{profile}.yaml").read_text())
        t1 = yaml.safe_load((params / f"tab1_time_to_accuracy.{profile}.yaml").read_text())
        assert f5 == t1, f"{profile}: fig5 and tab1 profiles differ"


def test_theory_step_size_and_grids():
    assert theory_grids.theorem_lr(9, 3, 2.0, 100) == pytest.approx(10 / (3 * 2 * 10))
    with pytest.raises(ValueError, match="H must be > 0"):
        theory_grids.theorem_lr(9, 3, 0.0, 100)
    base = theory_grids.theory_base(8, 3, 5, 10, 1.0, 1.0, round_time=2.0)
    groups = theory_grids.grids_of(base, "lattice", 16, [10, 40], [1, 2], [1, 5], 2.0, 1.0, seeds=[0])
    rate = groups["rate"]
    assert [r.config.max_server_steps for r in rate] == [10, 40]
    assert rate[0].config.lr == pytest.approx(2 * rate[1].config.lr)   # eta ~ 1/sqrt(T)
    assert rate[1].config.time_limit == pytest.approx(2.0 * 41) and rate[0].config.eval_every == 2.0
    assert [r.config.clients_per_round for r in groups["peers"]] == [1, 2]
    assert {r.config.lr for r in groups["peers"] + groups["local"]} == {rate[1].config.lr}


def test_run_grid_uses_the_cache_and_the_backend_hook(tmp_path, monkeypatch):
    base = theory_grids.theory_base(4, 2, 2, 5, 1.0, 1.0, round_time=1.0, time_limit=5.0, lr=0.1)
    runs = figures.variants(base, {"a": {}}, seeds=[0])
    first = figures.run_variants(runs, cache_dir=tmp_path)
    assert (cache_entry(run_identity(runs[0].config), tmp_path) / "results.csv").is_file()
    again = figures.run_variants(runs, cache_dir=tmp_path)
    assert np.allclose(first["value"], again["value"]) and set(again["label"]) == {"a"}
    calls = {}
    fake = type(sys)("qafl_core.backend")
    fake.run_many = lambda configs, backend, address, cache_dir: calls.update(n=len(configs), backend=backend) or [first]
    monkeypatch.setitem(sys.modules, "qafl_core.backend", fake)
    assert len(figures.run_grid([r.config for r in runs])) == 1 and calls == {}      # local unless asked
    assert len(figures.run_grid([r.config for r in runs], backend="nonexistent")) == 1
    assert calls == {"n": 1, "backend": "nonexistent"}
    bad = first.iloc[:1].assign(split="status", metric="failed")
    bad.attrs["error"] = "OOM"
    fake.run_many = lambda configs, backend, address, cache_dir: [bad]
    with pytest.raises(RuntimeError, match="1 of 1 runs failed on the nonexistent backend: .*OOM"):
        figures.run_grid([r.config for r in runs], backend="nonexistent")


# ---------------------------------------------------------------------- manifest
def test_jsonable_and_metrics_file(tmp_path):
    assert manifest.jsonable({"a": np.float64(math.nan), "b": np.int64(3), "c": (1.5, math.inf)}) == \
        {"a": None, "b": 3, "c": [1.5, None]}
    choice = figures.DatasetChoice("synthetic", "femnist", fallback=True, reason="no data")
    path = manifest.write_metrics(tmp_path, "figX", {"acc": np.float32(0.5)}, [choice], ["h2", "h1", "h1"],
                                  {"seeds": [0]}, "smoke", [tmp_path / "figX.png"])
    rec = json.loads(path.read_text())
    assert rec["embedded_fallback"] is True and rec["dataset"] == "synthetic" and rec["config_hashes"] == ["h1", "h2"]
    assert rec["headline"] == {"acc": 0.5} and rec["files"] == ["figX.png"]
    man = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert man["figures"]["figX"]["parameters"] == {"seeds": [0]} and "headline" not in man["figures"]["figX"]
    manifest.update_manifest(tmp_path, "figX", {"status": "ok"}, {"profile": "smoke"})
    man = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert man["figures"]["figX"]["status"] == "ok" and man["figures"]["figX"]["profile"] == "smoke"


# ---------------------------------------------------------------------- reproduce
def _notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "interactive"\noutput_dir = "."\nvalue = 1')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def nb_dir(tmp_path):
    d = tmp_path / "notebooks"
    (d / "params").mkdir(parents=True)
    _notebook(d / "good.ipynb", "import json, pathlib\npathlib.Path(output_dir, 'good.metrics.json').write_text("
              "json.dumps({'datasets': [{'label': 'Toy'}], 'files': ['good.png']}))\nassert value == 7")
    _notebook(d / "bad.ipynb", "raise RuntimeError('boom at value %d' % value)")
    for name in ("good", "bad"):
        (d / "params" / f"{name}.smoke.yaml").write_text("value: 7\n")
    return d


def test_profiles_are_validated(nb_dir):
    assert reproduce.load_profile(nb_dir, "good", "smoke") == {"value": 7}
    with pytest.raises(FileNotFoundError, match=r"good\.paper\.yaml"):
        reproduce.load_profile(nb_dir, "good", "paper")
    (nb_dir / "params" / "good.smoke.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        reproduce.load_profile(nb_dir, "good", "smoke")
    with pytest.raises(ValueError, match="unknown parameter.*valeu"):
        reproduce.check_parameters(nb_dir / "good.ipynb", {"valeu": 7}, "good.smoke.yaml")
    assert reproduce.discover(nb_dir) == ["bad", "good"]


def test_schedule_respects_reuse_order(monkeypatch):
    monkeypatch.setattr(reproduce, "AFTER", {"tab": ("fig",)})
    order = []
    out = reproduce.schedule(["tab", "fig", "x"], 2, lambda n: order.append(n) or reproduce.Outcome(n, ok=True))
    assert [o.name for o in out] == ["tab", "fig", "x"] and order.index("fig") < order.index("tab")
    out = reproduce.schedule(["tab"], 2, lambda n: reproduce.Outcome(n, ok=True))   # dependency not selected
    assert out[0].ok


def test_reproduce_keeps_going_reports_failures_and_writes_manifest(nb_dir, tmp_path, capsys):
    figs = tmp_path / "figs"
    rc = qafl_main(["reproduce", "--notebooks-dir", str(nb_dir), "--output-dir", str(figs), "--jobs", "2"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "1 ok, 1 failed" in out
    assert "RuntimeError: boom at value 7" in out                      # the failing cell's error, profile value used
    good_line = next(line for line in out.splitlines() if line.startswith("good "))
    assert "Toy" in good_line and "good.png" in good_line
    assert (nb_dir / "executed" / "good.smoke.ipynb").is_file() and (nb_dir / "executed" / "bad.smoke.ipynb").is_file()
    man = json.loads((figs / "MANIFEST.json").read_text())
    assert man["profile"] == "smoke" and "git_commit" in man
    assert man["figures"]["good"]["status"] == "ok" and man["figures"]["good"]["parameters"]["value"] == 7
    assert man["figures"]["bad"]["status"] == "failed" and "boom" in man["figures"]["bad"]["error"]
    # --only runs one notebook; success exits 0
    assert qafl_main(["reproduce", "--notebooks-dir", str(nb_dir), "--output-dir", str(figs), "--only", "good"]) == 0


def test_reproduce_user_errors_exit_2(nb_dir, capsys):
    assert qafl_main(["reproduce", "--notebooks-dir", str(nb_dir), "--only", "nope"]) == 2
    assert "unknown notebook(s) nope; available: bad, good" in capsys.readouterr().err
    assert qafl_main(["reproduce", "--notebooks-dir", str(nb_dir), "--profile", "paper"]) == 2
    assert "bad.paper.yaml" in capsys.readouterr().err
    assert qafl_main(["reproduce", "--notebooks-dir", str(nb_dir), "--list"]) == 0


def test_private_kernel_for_this_interpreter(tmp_path, monkeypatch, nb_dir):
    """Without a usable python3 kernelspec, reproduce writes its own for sys.executable and runs with it."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def missing(self, name):
        raise NoSuchKernel(name)

    monkeypatch.setenv("JUPYTER_PATH", "")
    monkeypatch.setenv("QAFL_CACHE_DIR", str(tmp_path / "cache"))
    with monkeypatch.context() as m:
        m.setattr(KernelSpecManager, "get_kernel_spec", missing)
        name = reproduce.kernel_name()
    assert name == "qafl-python3"
    spec = json.loads((tmp_path / "cache" / "jupyter" / "kernels" / "qafl-python3" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    out = reproduce.execute("good", nb_dir, tmp_path, {"value": 7, "output_dir": str(tmp_path), "profile": "t"}, name)
    assert out.ok, out.error


def test_git_commit_ignores_the_suites_own_figures(tmp_path):
    """A reproduce writes figures/ as it goes; that must not mark the commit of later notebooks dirty."""
    import shutil
    import subprocess

    from qafl_core.experiments.manifest import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    env = ["-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    subprocess.run(["git", *env, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    clean = git_commit(tmp_path)
    assert clean and not clean.endswith("+dirty")
    (tmp_path / "figures" / "a.json").write_text('{"new": 1}')
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "+dirty"


# ---------------------------------------------------------------------- outputs never clobber each other
def _subject_notebook(nb_dir: Path, name: str) -> None:
    """A tiny notebook named like a figure whose subject is FEMNIST, with the figure notebooks' data parameters."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "interactive"\noutput_dir = None\ndataset = "auto"\n'
                                       'fallback_dataset = "synthetic"\ndataset_options = {}')
    params.metadata["tags"] = ["parameters"]
    body = ("import json, pathlib\nfrom qafl_core import outputs\nfrom qafl_core.experiments import figure\n"
            "output_dir = outputs.output_folder(output_dir)\n"
            f"c = figure({name!r}).choices(dict(dataset=dataset, fallback_dataset=fallback_dataset))[0]\n"
            f"pathlib.Path(output_dir, '{name}.metrics.json').write_text(json.dumps({{'embedded_fallback': c.fallback, "
            "'datasets': [c.to_dict()], 'files': []}))")
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nb_dir / f"{name}.ipynb")
    (nb_dir / "params" / f"{name}.smoke.yaml").write_text("dataset: auto\nfallback_dataset: synthetic\n"
                                                           "dataset_options: {}\n")


def test_each_profile_and_data_choice_has_its_own_folder(tmp_path, monkeypatch, capsys):
    nb_dir = tmp_path / "repo" / "notebooks"
    (nb_dir / "params").mkdir(parents=True)
    _subject_notebook(nb_dir, "fig4_vs_fedavg")
    monkeypatch.delenv("QAFL_DATA_DIR", raising=False)
    argv = ["reproduce", "--notebooks-dir", str(nb_dir), "--executed-dir", str(tmp_path / "x")]
    assert qafl_main(argv + ["--list"]) == 0
    out = capsys.readouterr().out
    embedded = tmp_path / "repo" / "figures" / "smoke-embedded"
    assert f"figures -> {embedded} (embedded fallback data for fig4_vs_fedavg (QAFL_DATA_DIR is not set" in out
    assert qafl_main(argv) == 0
    capsys.readouterr()
    assert json.loads((embedded / "fig4_vs_fedavg.metrics.json").read_text())["embedded_fallback"] is True
    assert json.loads((embedded / "MANIFEST.json").read_text())["profile"] == "smoke"
    assert not (tmp_path / "repo" / "figures" / "smoke").exists()     # the real-data folder is untouched
    # with the subject data present, the same command writes figures/smoke
    sample = tmp_path / "data" / "femnist" / "slz-ai__leaf-torch"
    (sample / "train").mkdir(parents=True)
    (sample / "test").mkdir()
    monkeypatch.setenv("QAFL_DATA_DIR", str(tmp_path / "data"))
    assert qafl_main(argv + ["--list"]) == 0
    assert f"figures -> {tmp_path / 'repo' / 'figures' / 'smoke'}\n" in capsys.readouterr().out
    assert reproduce.plan_fallbacks({"fig4_vs_fedavg": {"dataset": "auto"}}) == {}
    assert outputs.profile_folder("paper", False) == "paper" and outputs.profile_folder("smoke", True) == "smoke-embedded"


def test_a_notebook_that_falls_back_while_running_fails_instead_of_writing_a_real_data_folder(tmp_path, monkeypatch,
                                                                                               capsys):
    nb_dir = tmp_path / "repo" / "notebooks"
    (nb_dir / "params").mkdir(parents=True)
    _subject_notebook(nb_dir, "fig4_vs_fedavg")
    monkeypatch.delenv("QAFL_DATA_DIR", raising=False)
    monkeypatch.setattr(reproduce, "plan_fallbacks", lambda profiles: {})   # as if the data were there when planned
    rc = qafl_main(["reproduce", "--notebooks-dir", str(nb_dir), "--executed-dir", str(tmp_path / "x")])
    assert rc == 1 and "used embedded fallback data, planned to use real data" in capsys.readouterr().out


def test_discovery_ignores_nbconvert_outputs_and_executed_copies(nb_dir, tmp_path, capsys):
    import shutil

    shutil.copy(nb_dir / "good.ipynb", nb_dir / "good.nbconvert.ipynb")    # left by `jupyter nbconvert --execute`
    shutil.copy(nb_dir / "good.ipynb", nb_dir / "good.smoke.ipynb")
    (nb_dir / "_draft.ipynb").write_text("{}")
    assert reproduce.discover(nb_dir) == ["bad", "good"]
    assert qafl_main(["reproduce", "--notebooks-dir", str(nb_dir), "--output-dir", str(tmp_path / "f"), "--only",
                      "good"]) == 0


def test_notebooks_write_to_the_git_ignored_folder_by_default_from_any_directory(tmp_path, monkeypatch):
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    assert outputs.output_folder(None) == str(repo / "notebooks" / "out")
    assert outputs.output_folder("elsewhere") == "elsewhere"
    if shutil.which("git") and (repo / ".git").exists():
        for path in ("notebooks/out/fig1_peers.png", "notebooks/fig1_peers.nbconvert.ipynb"):
            done = subprocess.run(["git", "check-ignore", "-q", path], cwd=repo)
            assert done.returncode == 0, f"{path} is not git-ignored"


@pytest.mark.parametrize("name", list(reproduce.ORDER))
def test_committed_notebooks_default_to_the_git_ignored_folder(name):
    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    k = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    assert "\noutput_dir = None  #" in code[k].source
    assert code[k + 1].source.startswith("output_dir = outputs.output_folder(output_dir)\n")
    # the data choice qafl reproduce plans (the figure module's choices) is the one the notebook's runs make
    assert f"{name}.runs(params" in code[k + 1].source and f"{name}.choices(params)" in "".join(c.source for c in code)


def test_run_settings_reach_the_notebooks_as_parameters(tmp_path, monkeypatch, capsys):
    """Backend, address and threads are notebook parameters, not environment variables; a notebook that cannot
    take a backend refuses a non-local one instead of running locally."""
    nb_dir = tmp_path / "notebooks"
    (nb_dir / "params").mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "interactive"\noutput_dir = "."\nbackend = "local"\n'
                                       'address = None\nnum_threads = None\nvalue = 1')
    params.metadata["tags"] = ["parameters"]
    body = ("import json, os, pathlib\npathlib.Path(output_dir, 'st.metrics.json').write_text(json.dumps("
            "{'settings': [backend, address, num_threads], 'env': sorted(k for k in os.environ if k in "
            "('QAFL_BACKEND', 'QAFL_RAY_ADDRESS', 'QAFL_NUM_THREADS')), 'datasets': [], 'files': []}))")
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nb_dir / "st.ipynb")
    (nb_dir / "params" / "st.smoke.yaml").write_text("value: 2\n")
    monkeypatch.setattr(reproduce.os, "cpu_count", lambda: 4)
    argv = ["reproduce", "--notebooks-dir", str(nb_dir), "--output-dir", str(tmp_path / "f"), "--jobs", "2"]
    assert qafl_main(argv) == 0
    rec = json.loads((tmp_path / "f" / "st.metrics.json").read_text())
    assert rec["settings"] == ["local", None, 2] and rec["env"] == []
    assert reproduce.run_settings(nb_dir / "st.ipynb", {"backend", "address", "num_threads"}, 1, "ray", "h:1") == \
        {"backend": "ray", "address": "h:1", "num_threads": 4}
    capsys.readouterr()
    _notebook(nb_dir / "plain.ipynb", "pass")
    (nb_dir / "params" / "plain.smoke.yaml").write_text("value: 2\n")
    assert qafl_main(argv[:-2] + ["--only", "plain", "--backend", "ray"]) == 2
    assert "plain.ipynb: no 'backend' parameter" in capsys.readouterr().err
