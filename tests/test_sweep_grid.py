"""Bundle axes in sweep grids: keys that must change together (quantizer + bits)."""
import pytest

from qafl_core.sweep import expand, load_sweep_file


def test_bundle_axis_sets_keys_together(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("dataset: quadratic\nnum_clients: 4\nclients_per_round: 2\ngrid:\n  algorithm: [quafl, fedavg]\n"
                 "  compression:\n    - {quantizer: identity, bits: 32}\n    - {quantizer: lattice, bits: 12}\n")
    base, grid = load_sweep_file(str(f))
    runs = expand(base, grid, seeds=2)
    assert len(runs) == 8
    pairs = {(c.algorithm, c.quantizer, c.bits) for _, c in runs}
    assert pairs == {(a, q, b) for a in ("quafl", "fedavg") for q, b in (("identity", 32), ("lattice", 12))}
    assert runs[0][0]["compression"] == "quantizer=identity,bits=32"


def test_bundle_axis_unknown_key_names_file(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("grid:\n  compression:\n    - {quantiser: lattice}\n")
    with pytest.raises(ValueError, match=r"s\.yaml: grid\.compression: unknown config key\(s\) quantiser"):
        load_sweep_file(str(f))
