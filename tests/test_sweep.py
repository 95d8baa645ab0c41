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


def test_bundle_axis_named_like_a_results_column_is_refused(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("dataset: quadratic\ngrid:\n  run:\n    - {algorithm: quafl}\n    - {algorithm: fedavg}\n")
    base, grid = load_sweep_file(str(f))
    with pytest.raises(ValueError, match=r"s\.yaml: grid: run: a bundle axis .* not a column of the results table"):
        expand(base, grid, seeds=1, source=str(f))


@pytest.mark.slow
def test_sweep_plot_draws_accuracy_and_loss_against_time_and_bits(tmp_path, capsys):
    from qafl_core.cli import main

    f = tmp_path / "s.yaml"
    f.write_text("dataset: quadratic\nnum_clients: 4\nclients_per_round: 2\ntime_limit: 60\neval_every: 20\n"
                 "grid:\n  variant:\n    - {algorithm: quafl, quantizer: lattice, bits: 12, lattice_eps: 0.01}\n"
                 "    - {algorithm: fedavg, time_limit: 40}\n")
    assert main(["sweep", "--config", str(f), "--seeds", "2", "--plot", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "curves.png" in out
    png = tmp_path / "o" / "curves.png"
    assert png.stat().st_size > 10_000 and (tmp_path / "o" / "curves.pdf").is_file()
    import pandas as pd

    res = pd.read_csv(tmp_path / "o" / "results.csv")
    assert set(res.variant) == {"algorithm=quafl,quantizer=lattice,bits=12,lattice_eps=0.01",
                                "algorithm=fedavg,time_limit=40"}
    assert res[res.algorithm == "quafl"].time.max() >= 60 and set(res.seed) == {0, 1}
