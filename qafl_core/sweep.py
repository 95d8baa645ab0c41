"""Sweeps (``qafl sweep``, :mod:`qafl_core.cli.sweep`): one config file, several seeds (and optionally a grid
of values), on the local or Ray backend.

``qafl sweep --config FILE.yaml --seeds N [--set key=value ...] [--backend local|ray] [--address ADDR] --out DIR``

The YAML file holds :class:`qafl_core.config.RunConfig` keys and may hold a ``grid:`` mapping of keys to
lists of values (a list of mappings is a *bundle* axis whose keys are set together, e.g.
``compression: [{quantizer: identity, bits: 32}, {quantizer: lattice, bits: 12}]``); the sweep runs the
cartesian product of the grid (in file order) times seeds
``0..N-1``.  Runs go through :func:`qafl_core.backend.run_many` and are cached under ``DIR/runs`` by run
identity (``--cache-dir`` to share a cache; see :mod:`qafl_core.cache`), so rerunning an interrupted sweep
only computes what is missing; with ``--checkpoint-every T`` the runs it was in the middle of continue from
their checkpoints.  ``DIR`` is locked for the sweep (a second sweep on it is refused in one line); the
tables are written atomically.
Writes ``DIR/results.csv`` (every run's long table, with ``run`` and grid-key columns) and
``DIR/summary.csv`` (one row per run: status, final test metrics), and prints the summary.  A diverged run
is reported as such; failed runs are listed and make the exit status 1, after everything else is written.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from qafl_core.config import RunConfig

_ID_COLUMNS = ["algorithm", "dataset", "seed", "quantizer", "bits", "config_hash"]


def load_sweep_file(path: str) -> tuple[dict[str, Any], dict[str, list]]:
    """``(base keys, grid)`` from a sweep YAML file; ``grid`` maps config keys to non-empty value lists."""
    from qafl_core.config import load_config_file

    data = load_config_file(path)
    grid = data.pop("grid", None) or {}
    if not isinstance(grid, dict):
        raise ValueError(f"{path}: grid: expected a mapping of config keys to lists of values, got "
                         f"{type(grid).__name__}")
    known = {f for f in RunConfig.__dataclass_fields__}
    for key, values in grid.items():
        if isinstance(values, list) and values and all(isinstance(v, dict) for v in values):
            # a bundle axis: each value is a mapping of config keys set together (e.g. quantizer + bits)
            for v in values:
                bad = sorted(set(v) - known)
                if bad:
                    raise ValueError(f"{path}: grid.{key}: unknown config key(s) {', '.join(bad)}")
            continue
        if key not in known:
            raise ValueError(f"{path}: grid.{key}: unknown config key; known keys: {', '.join(sorted(known))}")
        if key == "seed":
            raise ValueError(f"{path}: grid.seed: give the number of seeds with --seeds instead")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: grid.{key}: expected a non-empty list of values, got {values!r}")
    return data, grid


def bundle_axes(grid: Mapping[str, list]) -> list[str]:
    """Grid axes whose values are mappings (several config keys set together), as opposed to ``key: [values]``."""
    return [k for k, vals in grid.items() if any(isinstance(v, dict) for v in vals)]


def expand(base: Mapping[str, Any], grid: Mapping[str, list], seeds: int,
           source: str = "sweep") -> list[tuple[dict[str, Any], RunConfig]]:
    """Every ``(grid labels, config)`` of the sweep: grid points in file order, seeds 0..seeds-1 within each."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds: expected a positive number of seeds, got {seeds!r}")
    if "seed" in base:
        raise ValueError(f"{source}: seed: a sweep runs seeds 0..N-1 (--seeds N); remove the 'seed' key")
    both = sorted(set(base) & set(grid))
    if both:
        raise ValueError(f"{source}: {', '.join(both)}: given both as a value and in grid")
    from qafl_core.runner import COLUMNS

    clash = sorted(k for k in bundle_axes(grid) if k in {"run", *COLUMNS})
    if clash:
        raise ValueError(f"{source}: grid: {', '.join(clash)}: a bundle axis (a list of mappings) needs a name that is "
                         f"not a column of the results table (e.g. variant)")
    out = []
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        labels = dict(zip(keys, combo))
        where = f"{source} ({', '.join(f'{k}={v}' for k, v in labels.items())})" if labels else source
        values: dict[str, Any] = {}
        for k, v in labels.items():
            values.update(v if isinstance(v, dict) else {k: v})
        labels = {k: (",".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else v) for k, v in labels.items()}
        for seed in range(seeds):
            try:
                cfg = RunConfig.from_dict({**base, **values, "seed": seed}, source=where)
                cfg.check_intervals()  # refused before the output folder is made or any run starts
            except ValueError as exc:  # field checks do not know the file: say which file and grid point
                msg = str(exc)
                raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None
            out.append((labels, cfg))
    return out


def summarize(runs: list[tuple[dict[str, Any], RunConfig]], frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per run: grid labels, identity, status, final counters and final test metrics."""
    from qafl_core.backend import run_status

    rows = []
    for k, ((labels, cfg), df) in enumerate(zip(runs, frames)):
        row: dict[str, Any] = {"run": k, **labels, **{c: getattr(cfg, c, None) for c in _ID_COLUMNS[:-1]},
                               "config_hash": cfg.config_hash(), "status": run_status(df)}
        test = df[df.split == "test"]
        if not test.empty:
            last = test[test.time == test.time.max()]
            row.update({c: last.iloc[0][c] for c in ("time", "server_steps", "local_steps", "bits_up", "bits_down")})
            row.update({f"final_{m}": v for m, v in zip(last.metric, last.value)})
        div = df[(df.split == "status") & (df.metric == "diverged")]
        row["diverged_at"] = float(div.time.iloc[0]) if not div.empty else float("nan")
        row["error"] = df.attrs.get("error", "")
        rows.append(row)
    return pd.DataFrame(rows)


def sweep(base: Mapping[str, Any], grid: Mapping[str, list], seeds: int, out: str | Path, backend: str = "local",
          address: str | None = None, cache_dir: str | Path | None = None, max_parallel: int | None = None,
          source: str = "sweep", echo: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the sweep and write ``out/results.csv`` and ``out/summary.csv``; returns ``(results, summary)``."""
    from qafl_core import store

    runs = expand({**base, "progress": False}, grid, seeds, source)
    out = Path(out)
    with store.DirLock(out).acquire(wait=0):
        return _sweep_locked(runs, grid, out, backend, address, cache_dir, max_parallel, echo)


def _sweep_locked(runs: list[tuple[dict[str, Any], RunConfig]], grid: Mapping[str, list], out: Path, backend: str,
                  address: str | None, cache_dir: str | Path | None, max_parallel: int | None,
                  echo: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    from qafl_core import store
    from qafl_core.backend import init_ray, import_ray, run_many, run_status

    cache = Path(cache_dir) if cache_dir is not None else out / "runs"

    def report(k: int, df: pd.DataFrame) -> None:
        if echo:
            labels = " ".join(f"{key}={v}" for key, v in runs[k][0].items())
            print(f"[{k + 1}/{len(runs)}] {labels + ' ' if labels else ''}seed={runs[k][1].seed}: {run_status(df)}",
                  file=sys.stderr, flush=True)

    started = init_ray(address) if backend == "ray" else False
    try:
        frames = run_many([c for _, c in runs], backend=backend, address=address, cache_dir=cache,
                          max_parallel=max_parallel, on_result=report)
    finally:
        if started:
            import_ray().shutdown()
    tables = []
    for k, ((labels, _), df) in enumerate(zip(runs, frames)):
        tables.append(df.assign(**{"run": k, **{key: [v] * len(df) for key, v in labels.items()}}))
    results = pd.concat(tables, ignore_index=True)
    front = ["run", *grid]
    results = results[front + [c for c in results.columns if c not in front]]
    summary = summarize(runs, frames)
    store.atomic_write(out / "results.csv", results.to_csv(index=False).encode())
    store.atomic_write(out / "summary.csv", summary.to_csv(index=False).encode())
    return results, summary


def format_summary(summary: pd.DataFrame, grid_keys: list[str]) -> str:
    """The per-run table, plus mean +- std over seeds per grid point when there are several seeds."""
    show = [c for c in dict.fromkeys(["run", *grid_keys, "algorithm", "seed", "status", "time", "server_steps"])
            if c in summary]
    metrics = [c for c in summary.columns if c.startswith("final_")]
    text = summary[show + metrics].to_string(index=False, float_format=lambda v: f"{v:.4g}")
    if summary.seed.nunique() > 1 and metrics:
        keys = grid_keys or ["algorithm"]
        agg = summary.groupby(keys, sort=False)[metrics].agg(["mean", "std"])
        agg.columns = [f"{m}_{s}" for m, s in agg.columns]
        text += "\n\nover seeds:\n" + agg.reset_index().to_string(index=False, float_format=lambda v: f"{v:.4g}")
    return text


def plot_sweep(results: pd.DataFrame, grid: Mapping[str, list], out: str | Path) -> list[Path]:
    """Test accuracy and loss (suboptimality / gradient norm for quadratics) of every grid point against
    simulated time and against bits sent (up + down), mean over seeds with a +-1 std band; saved as
    ``out/curves.png`` and ``.pdf``."""
    from qafl_core.experiments import plotting
    from qafl_core.data.registry import label

    # curve labels: the algorithm/compression columns and plain grid axes that vary (a bundle axis shows up
    # through the columns it sets)
    plain = [k for k in grid if k not in bundle_axes(grid)]
    keys = [c for c in dict.fromkeys(["algorithm", "quantizer", "bits", *plain]) if results[c].nunique() > 1]
    table = results.assign(label=results[keys or ["algorithm"]].astype(str).agg(" ".join, axis=1))
    order = list(dict.fromkeys(table.label))
    have = set(results.loc[results.split == "test", "metric"])
    metrics = [m for m in ("accuracy", "loss", "suboptimality", "grad_sq") if m in have][:2]
    if not metrics:
        raise ValueError(f"--plot: no test metrics to plot in the results (have {sorted(have)})")
    fig, axes = plotting.subplots(ncols=2, nrows=len(metrics), width=5.6, height=3.8)
    palette = dict(zip(order, plotting.sns.color_palette("colorblind", len(order))))
    for k, (row, metric) in enumerate(zip(axes.reshape(len(metrics), 2), metrics)):
        for ax, x in zip(row, ("time", "bits")):
            plotting.metric_panel(ax, table, metric, x=x, hue="label", hue_order=order, palette=palette,
                                  legend_title="", logy="auto" if metric in ("suboptimality", "grad_sq") else False)
            if not (k == 0 and x == "time") and ax.get_legend() is not None:
                ax.get_legend().remove()
    names = ", ".join(label(d) for d in sorted(results.dataset.unique()))
    plotting.suptitle(fig, f"{names}: server model on the test set", plotting.band_note(int(results.seed.nunique())))
    return plotting.save(fig, out, "curves", close=True)
