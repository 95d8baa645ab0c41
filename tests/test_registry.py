"""The one dataset table (:mod:`qafl_core.data.registry`): what reads it, and what it answers."""
from __future__ import annotations

import pytest

from qafl_core.config import RunConfig
from qafl_core.data import registry
from qafl_core.models import default_model


@pytest.fixture
def ghost():
    registry.register_dataset("ghost", "qafl_core.data.ghost_loader:load", "mlp", "Ghost data", subdir="ghost",
                              partition="iid")
    yield
    del registry.DATASETS["ghost"]


def test_config_model_and_labels_read_the_table(ghost, monkeypatch, tmp_path):
    assert RunConfig(dataset="ghost").dataset == "ghost"
    with pytest.raises(ValueError, match="partition: ghost has no natural client partition"):
        RunConfig(dataset="ghost", partition="natural")
    assert default_model("ghost") == "mlp" and registry.label("ghost") == "Ghost data"
    assert registry.data_available("ghost") == (False, "this version has no Ghost data loader (qafl_core.data.ghost_loader)")
    with pytest.raises(ValueError, match="partition: the quadratic problem has no samples to partition"):
        RunConfig(dataset="quadratic", partition="iid", num_clients=4)


def test_availability_reasons(monkeypatch, tmp_path):
    monkeypatch.delenv("QAFL_DATA_DIR", raising=False)
    assert registry.data_available("synthetic") == (True, "")  # embedded
    assert registry.data_available("celeba") == (False, "QAFL_DATA_DIR is not set, so there is no CelebA data")
    assert registry.data_available("nope") == (False, "unknown dataset 'nope'")
    monkeypatch.setenv("QAFL_DATA_DIR", str(tmp_path))
    assert registry.data_available("celeba") == (False, f"no CelebA data under {tmp_path / 'celeba'}")
    (tmp_path / "celeba").mkdir()
    (tmp_path / "celeba" / "x").write_text("")
    assert registry.data_available("celeba") == (True, "")


def test_the_figures_read_the_table():
    """The experiments' dataset names, labels and availability are the table's own objects, not copies."""
    from qafl_core.experiments import common

    assert common.PRETTY is registry.PRETTY and common.EMBEDDED is registry.EMBEDDED
    assert common.data_available is registry.data_available
