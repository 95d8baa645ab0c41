"""``qafl data describe`` and the dataset registry."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from qafl_core.cli import main
from qafl_core.data.leaf import write_leaf_file
from qafl_core.data.registry import DATASETS, default_data_root, load_dataset

FIX = Path(__file__).parent / "fixtures"
REAL = os.environ.get("QAFL_DATA_DIR")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_registry_models_and_names():
    assert {k: v["model"] for k, v in DATASETS.items()} == {
        "femnist": "femnist_cnn", "shakespeare": "shakespeare_lstm", "celeba": "celeba_cnn", "synthetic": "logreg",
        "mnist": "mlp", "fmnist": "fmnist_cnn", "cifar10": "resnet20", "quadratic": None}  # generated, no model
    assert all(v["description"] for v in DATASETS.values())
    with pytest.raises(ValueError, match="quadratic: is a generated problem without samples"):
        load_dataset("quadratic")
    with pytest.raises(ValueError, match="known datasets: femnist, shakespeare"):
        load_dataset("emnist")
    with pytest.raises(ValueError, match="synthetic: unknown option 'sff'.*sf"):
        load_dataset("synthetic", sff=1.0)


def test_missing_loader_module_is_a_clean_error(monkeypatch):
    import qafl_core.data.registry as reg
    monkeypatch.setitem(reg.DATASETS, "ghost", {"model": "x", "loader": "qafl_core.data.ghost_loader:load",
                                                "subdir": None, "description": "test only"})
    with pytest.raises(ValueError, match="ghost: its loader qafl_core.data.ghost_loader is not available"):
        load_dataset("ghost")


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("QAFL_DATA_DIR", str(tmp_path))
    assert default_data_root("mnist") == str(tmp_path / "mnist")
    assert default_data_root("synthetic") is None
    assert default_data_root("fmnist") == "/usr/share/datasets/fashion-mnist"  # no $QAFL_DATA_DIR/fmnist
    (tmp_path / "fmnist").mkdir()
    assert default_data_root("fmnist") == str(tmp_path / "fmnist")
    monkeypatch.delenv("QAFL_DATA_DIR")
    assert default_data_root("cifar10") is None


def test_describe_synthetic_json(capsys):
    rc, out, err = run(capsys, "data", "describe", "synthetic", "--option", "num_tasks=25", "--seed", "3", "--json")
    assert rc == 0 and err == ""
    report = json.loads(out)  # exactly one JSON object
    for key in ("num_clients", "num_train_samples", "num_test_samples", "num_classes", "samples_per_client_mean",
                "samples_per_client_std"):
        assert key in report
    assert report["num_clients"] == 25 and report["num_classes"] == 5
    assert report["options"] == {"num_tasks": 25, "seed": 3}
    assert report["info"]["leaf_flags"]["smplseed"] == 3 and report["default_model"] == "logreg"


def test_describe_femnist_table(capsys, tmp_path):
    for side, n in (("train", 3), ("test", 1)):
        data = {u: {"x": [[1.0] * 784] * n, "y": [7] * n} for u in ("f1", "f2")}
        write_leaf_file({"users": ["f1", "f2"], "num_samples": [n, n], "user_data": data},
                        tmp_path / side / f"all_data_0_niid_05_keep_0_{side}_9.json")
    rc, out, err = run(capsys, "data", "describe", "femnist", "--root", str(tmp_path))
    assert rc == 0, err
    assert "num_clients" in out and " 2\n" in out and "femnist_cnn" in out and "leaf_flags" in out


@pytest.mark.parametrize("argv, needle", [
    (["data", "describe", "emnist"], "unknown dataset 'emnist'"),
    (["data", "describe", "synthetic", "--option", "nonsense=1"], "unknown option 'nonsense'"),
    (["data", "describe", "synthetic", "--option", "novalue"], "key=value"),
    (["data", "describe", "synthetic", "--root", "/tmp"], "takes no root"),
    (["data", "describe", "femnist", "--root", "/definitely/not/here"], "/definitely/not/here"),
    (["data", "describe", "mnist", "--root", "/definitely/not/here"], "/definitely/not/here"),
])
def test_describe_errors_exit_2_without_traceback(capsys, argv, needle):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and "Traceback" not in err and out == ""
    assert err.startswith("qafl: error:") and needle in err


def test_describe_corrupt_leaf_file(capsys, tmp_path):
    shutil.copytree(FIX / "leaf_two_files", tmp_path, dirs_exist_ok=True)
    bad = tmp_path / "test/part_1.json"
    bad.write_text(bad.read_text()[:40])
    rc, _, err = run(capsys, "data", "describe", "femnist", "--root", str(tmp_path))
    assert rc == 2 and "Traceback" not in err and "part_1.json: invalid JSON" in err


def test_prepare_group_exists(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--help"])
    assert exc.value.code == 0 and "prepare" in capsys.readouterr().out


@pytest.mark.skipif(not REAL, reason="real FEMNIST needs QAFL_DATA_DIR (e.g. QAFL_DATA_DIR=../shared/data)")
def test_describe_real_femnist_json(capsys):
    rc, out, _ = run(capsys, "data", "describe", "femnist", "--json")
    report = json.loads(out)
    assert rc == 0 and (report["num_clients"], report["num_train_samples"], report["num_test_samples"],
                        report["num_classes"]) == (105, 14708, 1685, 62)


def test_describe_reports_label_heterogeneity(capsys):
    rc, out, err = run(capsys, "data", "describe", "synthetic", "--option", "num_tasks=20", "--json")
    natural = json.loads(out)
    assert rc == 0 and err == ""
    for key in ("label_entropy_bits_mean", "label_entropy_bits_p10", "label_entropy_bits_p50", "label_entropy_bits_p90",
                "label_tv_mean", "label_tv_p10", "label_tv_p50", "label_tv_p90", "majority_class_test_rate"):
        assert isinstance(natural[key], float)
    assert natural["label_tv_p10"] <= natural["label_tv_p50"] <= natural["label_tv_p90"]
    rc, out, _ = run(capsys, "data", "describe", "synthetic", "--option", "num_tasks=20", "--partition", "iid", "--json")
    iid = json.loads(out)
    assert rc == 0 and iid["num_clients"] == 20 and iid["num_train_samples"] == natural["num_train_samples"]
    assert iid["info"]["partition"] == "iid" and iid["label_tv_mean"] < natural["label_tv_mean"]
    rc, out, _ = run(capsys, "data", "describe", "synthetic", "--option", "num_tasks=20", "--partition", "dirichlet",
                     "--dirichlet-alpha", "0.05")
    assert rc == 0 and "label_tv_p50" in out and "dirichlet_alpha: 0.05" in out


@pytest.mark.parametrize("argv, needle", [
    (["--partition", "iid", "--dirichlet-alpha", "1"], "--dirichlet-alpha: only used with --partition dirichlet"),
    (["--partition", "dirichlet"], "dirichlet_alpha: must be a finite number > 0"),
])
def test_describe_partition_errors(capsys, argv, needle):
    rc, out, err = run(capsys, "data", "describe", "synthetic", "--option", "num_tasks=5", *argv)
    assert rc == 2 and out == "" and "Traceback" not in err and needle in err


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs the Debian Fashion-MNIST")
def test_describe_fmnist_dirichlet_keeps_every_sample(capsys):
    rc, out, _ = run(capsys, "data", "describe", "fmnist", "--num-clients", "20", "--partition", "dirichlet",
                     "--dirichlet-alpha", "0.1", "--json")
    r = json.loads(out)
    assert rc == 0 and (r["num_clients"], r["num_train_samples"], r["num_test_samples"]) == (20, 60000, 10000)
    assert r["label_tv_mean"] > 0.5 and r["majority_class_test_rate"] == pytest.approx(0.1)
    rc, out, err = run(capsys, "data", "describe", "fmnist", "--partition", "natural")
    assert rc == 2 and "fmnist has no natural client partition" in err
