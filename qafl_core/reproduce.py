"""``qafl reproduce``: execute the figure notebooks with papermill and collect figures + manifest.

``qafl reproduce --profile smoke|paper [--only NAME ...] [--jobs N] [--backend local|ray] [--address ADDR]
[--output-dir DIR]`` runs every notebook in ``notebooks/`` (docs/design.md#who-uses-it: the batch user)
with the parameters of ``notebooks/params/<notebook>.<profile>.yaml`` into the git-ignored
``notebooks/executed/``.  Figures go to ``figures/<profile>/`` when every selected notebook finds its subject
data, else to ``figures/<profile>-embedded/`` (decided before running; :mod:`qafl_core.outputs`), so no run
replaces the figures of another profile or data choice.  It keeps going when a notebook fails, prints a table
of what ran, how long it took, which dataset each figure used, what failed (the failing cell's ``ename:
evalue``) and where the figures are, updates the folder's ``MANIFEST.json``, and exits non-zero if anything
failed.  With ``--estimate [--json]`` it trains nothing and prints what each notebook would cost here: runs,
steps, messages, bits, evaluations and time (:mod:`qafl_core.experiments.estimate`).

Runs are shared between notebooks through the hash-keyed run cache (``$QAFL_CACHE_DIR``), so notebooks that
reuse another's runs (tab1 <- fig5, fig3 <- fig1) are scheduled after it; ``--jobs N`` executes up to N
notebooks at once (each in its own kernel).  How runs execute reaches each notebook as its run-setting
parameters (:data:`qafl_core.experiments.common.SETTINGS`): ``backend`` and ``address`` from ``--backend`` /
``--address``, ``num_threads`` = cores / N torch threads per kernel.

The module is longer than most (~430 lines): it is the whole batch driver (discovery, profiles, kernels,
scheduling, output folders, report), kept together so that the command reads top to bottom.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from qafl_core import environment, outputs
from qafl_core.experiments import manifest, planned_choices

#: Paper order; notebooks found in the folder but not listed here run after these, alphabetically.
ORDER = ("fig1_peers", "fig2_bits", "fig3_averaging", "fig4_vs_fedavg", "fig5_vs_fedbuff",
         "tab1_time_to_accuracy", "theory_quadratic")
#: notebook -> notebooks whose cached runs it reuses (run first when both are selected).
AFTER = {"fig3_averaging": ("fig1_peers",), "tab1_time_to_accuracy": ("fig5_vs_fedbuff",)}
PROFILES = ("smoke", "paper")


@dataclass
class Outcome:
    """What happened to one notebook."""

    name: str
    ok: bool = False
    seconds: float = 0.0
    error: str = ""
    executed: Path | None = None
    dataset: str = ""
    files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- locating things
def default_notebooks_dir() -> Path:
    """``notebooks/`` of the checkout this package lives in, else ``./notebooks``."""
    here = Path(__file__).resolve().parents[1] / "notebooks"
    return here if here.is_dir() else Path.cwd() / "notebooks"


#: a figure notebook's name: letters, digits, ``_`` and ``-``; so ``_make_notebooks``, ``x.nbconvert`` (left by
#: ``jupyter nbconvert --execute``) and ``x.smoke`` (an executed copy) are never taken for notebooks to run
_NOTEBOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def discover(notebooks_dir: Path) -> list[str]:
    """Notebook names in ``notebooks_dir`` (``_*``, executed copies and sub-folders excluded), paper order first."""
    if not notebooks_dir.is_dir():
        raise FileNotFoundError(f"{notebooks_dir}: no notebooks directory (use --notebooks-dir)")
    found = sorted(p.stem for p in notebooks_dir.glob("*.ipynb") if _NOTEBOOK_NAME.fullmatch(p.stem))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def load_profile(notebooks_dir: Path, name: str, profile: str) -> dict[str, Any]:
    """The parameters of ``params/<name>.<profile>.yaml`` (FileNotFoundError / ValueError name the file)."""
    path = notebooks_dir / "params" / f"{name}.{profile}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no '{profile}' profile for notebook {name}")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); save the profile as UTF-8") from None
    except yaml.YAMLError as exc:
        from qafl_core.config import yaml_problem

        raise ValueError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a profile (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of parameter names to values, got {type(data).__name__}")
    return data


def check_parameters(notebook: Path, params: dict[str, Any], source: Path | str) -> set[str]:
    """Every profile key must be a parameter of the notebook (papermill would silently add unknown ones);
    returns the notebook's parameter names."""
    import papermill

    known = set(papermill.inspect_notebook(str(notebook)))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{source}: unknown parameter(s) {', '.join(unknown)} for {notebook.name}; "
                         f"its parameters are: {', '.join(sorted(known))}")
    return known


def run_settings(notebook: Path, known: set[str], jobs: int, backend: str, address: str | None) -> dict[str, Any]:
    """The run-setting parameters passed to ``notebook`` (those it declares): ``backend``, ``address`` and
    ``num_threads`` (cores / jobs).  A notebook without a ``backend`` parameter would run locally whatever
    ``--backend`` says, so asking for another backend then is an error naming it."""
    if backend != "local" and "backend" not in known:
        raise ValueError(f"{notebook}: no 'backend' parameter, so its runs cannot go to --backend {backend}")
    settings = {"backend": backend, "address": address, "num_threads": max(1, (os.cpu_count() or 1) // max(1, jobs))}
    return {k: v for k, v in settings.items() if k in known}


def kernel_name() -> str:
    """A kernel running *this* interpreter: ``python3`` when its spec does, else a private spec.

    The private ``qafl-python3`` spec is written under ``~/.cache/qafl/jupyter`` and put on JUPYTER_PATH
    (nothing is installed into the user's Jupyter), so a fresh machine without kernelspecs works too.
    """
    try:
        import ipykernel  # noqa: F401
    except ImportError:
        raise FileNotFoundError("ipykernel is not installed for this interpreter; pip install ipykernel") from None
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
        # jupyter_client itself substitutes sys.executable for a bare "python"/"python3"/"pythonX.Y"
        bare = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
        if argv0 in bare or _same_file(argv0, sys.executable):
            return "python3"
    except NoSuchKernel:
        pass
    return install_private_kernel()


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def install_private_kernel(root: Path | None = None) -> str:
    """Write a ``qafl-python3`` kernelspec for ``sys.executable`` and prepend its folder to JUPYTER_PATH."""
    import json

    from qafl_core.cache import cache_root

    base = root or cache_root() / "jupyter"
    spec = base / "kernels" / "qafl-python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python {sys.version_info[0]}.{sys.version_info[1]} (qafl)", "language": "python"}))
    paths = [p for p in (environment.get("JUPYTER_PATH") or "").split(os.pathsep) if p]
    if str(base) not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(base), *paths])
    return "qafl-python3"


# ---------------------------------------------------------------------- running
def kernel_environment(repo_root: Path) -> dict[str, str]:
    """Environment variables the kernels inherit: the import path of this checkout (run settings are notebook
    parameters, :func:`run_settings`)."""
    return {"PYTHONPATH": os.pathsep.join([str(repo_root), *filter(None, [environment.get("PYTHONPATH")])]),
            "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


def execute(name: str, notebooks_dir: Path, executed_dir: Path, params: dict[str, Any], kernel: str,
            timeout: float | None = None, log_output: bool = False, settings: dict[str, Any] | None = None) -> Outcome:
    """Run one notebook with papermill, with ``params`` and the run ``settings`` (:func:`run_settings`); never
    raises (the error is in the outcome)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out = Outcome(name, executed=executed_dir / f"{name}.{params.get('profile', 'run')}.ipynb")
    params = {**params, **(settings or {})}
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(notebooks_dir / f"{name}.ipynb"), str(out.executed), parameters=params,
                                   kernel_name=kernel, cwd=str(notebooks_dir), progress_bar=False,
                                   log_output=log_output, execution_timeout=timeout)
        out.ok = True
    except PapermillExecutionError as exc:
        out.error = f"cell {exc.exec_count or exc.cell_index}: {exc.ename}: {_first_line(exc.evalue)}"
    except Exception as exc:  # noqa: BLE001 - kernel death, timeouts, missing kernels: report and go on
        out.error = f"{type(exc).__name__}: {_first_line(str(exc))}"
    out.seconds = time.perf_counter() - start
    return out


def _first_line(text: str, limit: int = 300) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def schedule(names: Sequence[str], jobs: int, run: Callable[[str], Outcome],
             on_done: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
    """Run ``names`` on ``jobs`` threads, each notebook after those of :data:`AFTER` that are selected."""
    pending = list(names)
    done: dict[str, Outcome] = {}
    running: dict[Any, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while pending or running:
            for n in list(pending):
                if len(running) >= max(1, jobs):
                    break
                if all(d in done or d not in names for d in AFTER.get(n, ())):
                    pending.remove(n)
                    running[pool.submit(run, n)] = n
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                outcome = fut.result()
                done[running.pop(fut)] = outcome
                on_done(outcome)
    return [done[n] for n in names]


# ---------------------------------------------------------------------- report
def _read_metrics(output_dir: Path, name: str, since: float) -> tuple[str, list[str]]:
    import json

    path = output_dir / f"{name}.metrics.json"
    if not path.is_file() or path.stat().st_mtime < since:
        return "", []
    data = json.loads(path.read_text())
    labels = [d.get("label", d.get("dataset", "")) for d in data.get("datasets", [])]
    return "; ".join(labels), data.get("files", [])


def _fell_back(output_dir: Path, name: str) -> bool:
    import json

    path = output_dir / f"{name}.metrics.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("embedded_fallback"))


def format_table(outcomes: Sequence[Outcome]) -> str:
    """The closing table: notebook, status, wall time, dataset used, and the figure files or the error."""
    rows = [("notebook", "status", "time", "dataset", "figures / error")]
    for o in outcomes:
        rows.append((o.name, "ok" if o.ok else "FAILED", f"{o.seconds:6.1f} s", o.dataset or "-",
                     ", ".join(o.files) if o.ok else o.error))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
        if k == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 15)
    return "\n".join(lines)


def reproduce(args: argparse.Namespace) -> int:
    """The ``qafl reproduce`` command; returns the exit status (1 if any notebook failed)."""
    nb_dir = Path(args.notebooks_dir).resolve() if args.notebooks_dir else default_notebooks_dir()
    available = discover(nb_dir)
    names = list(dict.fromkeys(args.only)) if args.only else available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"--only: unknown notebook(s) {', '.join(unknown)}; available: {', '.join(available)}")
    repo_root = nb_dir.parent
    executed_dir = Path(args.executed_dir).resolve() if args.executed_dir else nb_dir / "executed"
    profiles, settings = {}, {}
    for n in names:  # validate every profile before running anything
        path = nb_dir / "params" / f"{n}.{args.profile}.yaml"
        params = load_profile(nb_dir, n, args.profile)
        known = check_parameters(nb_dir / f"{n}.ipynb", params, path)
        profiles[n] = params
        settings[n] = run_settings(nb_dir / f"{n}.ipynb", known, args.jobs, args.backend, args.address)
    fallbacks = plan_fallbacks(profiles)
    if args.output_dir:
        output_dir = Path(args.output_dir).resolve()
    else:
        output_dir = repo_root / "figures" / outputs.profile_folder(args.profile, bool(fallbacks))
    for n in names:
        profiles[n] = {**profiles[n], "profile": args.profile, "output_dir": str(output_dir)}
    if args.estimate:
        return _estimate(args, names, profiles, repo_root)
    for flag in ("json", "remeasure"):
        if getattr(args, flag):
            raise ValueError(f"--{flag}: only with --estimate")
    if args.list:
        for n in names:
            print(f"{n}: notebooks/{n}.ipynb, params/{n}.{args.profile}.yaml")
        print(f"figures -> {output_dir}" + (f" ({_fallback_note(fallbacks)})" if fallbacks else ""))
        return 0
    output_dir.mkdir(parents=True, exist_ok=True)
    executed_dir.mkdir(parents=True, exist_ok=True)
    if fallbacks and not args.output_dir:
        print(f"qafl reproduce: {_fallback_note(fallbacks)}", flush=True)
    with environment.children_environment(kernel_environment(repo_root)):   # kernels inherit it
        return _run_all(args, names, profiles, settings, nb_dir, output_dir, executed_dir, repo_root)


def _estimate(args: argparse.Namespace, names: list[str], profiles: dict, repo_root: Path) -> int:
    """``--estimate``: runs, steps, messages, bits, evaluations and the time each notebook would take here
    (:mod:`qafl_core.experiments.estimate`); nothing is trained or written but the cost cache."""
    from qafl_core.experiments import estimate

    archive = [p for p in [repo_root / "results" / args.profile] if p.is_dir()]
    order = [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]   # shared runs count once, first
    costs = estimate.CostCache(estimate.default_cost_path(), remeasure=args.remeasure)
    found = estimate.estimate({n: profiles[n] for n in order}, archive=archive, costs=costs)
    print(estimate.to_json(found) if args.json else estimate.format_table(found))
    if not args.json:
        print(f"\nprofile '{args.profile}': counts simulated exactly for runs that reach their limit; times are "
              f"counts x costs measured here ({costs.path}; {costs.note() or 'none needed'}), without averaging, "
              "Python and start-up overheads. Runs in the run cache or the results archive count 0.")
    return 0


def plan_fallbacks(profiles: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{notebook: why}`` for every notebook whose profile would make it fall back to embedded data."""
    out = {}
    for name, params in profiles.items():
        fell = [c for c in planned_choices(name, params) if c.fallback]
        if fell:
            out[name] = "; ".join(dict.fromkeys(r for c in fell for r in c.reason.split("; ")))
    return out


def _fallback_note(fallbacks: dict[str, str]) -> str:
    """One line: which notebooks fall back, and why (each reason once)."""
    reasons = "; ".join(dict.fromkeys(r for why in fallbacks.values() for r in why.split("; ")))
    return f"embedded fallback data for {', '.join(fallbacks)} ({reasons})"


def _run_all(args: argparse.Namespace, names: list[str], profiles: dict, settings: dict, nb_dir: Path,
             output_dir: Path, executed_dir: Path, repo_root: Path) -> int:
    from tqdm import tqdm

    kernel = kernel_name()
    commit = manifest.git_commit(repo_root)
    top = {"git_commit": commit, "profile": args.profile, "python": sys.version.split()[0], "backend": args.backend,
           "jobs": args.jobs, "data_dir": environment.data_dir(),
           "command": "qafl reproduce " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["reproduce"] else [])}
    started = time.time()
    print(f"qafl reproduce: {len(names)} notebook(s), profile '{args.profile}', {args.jobs} job(s), kernel {kernel}, "
          f"backend {args.backend}; figures -> {output_dir}", flush=True)
    bar = tqdm(total=len(names), desc="notebooks", unit="nb", file=sys.stderr, dynamic_ncols=True)

    def run_one(name: str) -> Outcome:
        bar.set_postfix_str(name, refresh=True)
        return execute(name, nb_dir, executed_dir, profiles[name], kernel, args.timeout, args.log_output,
                       settings[name])

    def finished(o: Outcome) -> None:
        o.dataset, o.files = _read_metrics(output_dir, o.name, started)
        if o.ok and not args.output_dir and _fell_back(output_dir, o.name) and not output_dir.name.endswith("-embedded"):
            # the data went away while running: these figures do not belong in a real-data folder
            o.ok, o.error = False, (f"{o.name} used embedded fallback data, planned to use real data; its figures in "
                                    f"{output_dir} are not from real data: rerun")
        params = {**profiles[o.name], "output_dir": _relative(Path(profiles[o.name]["output_dir"]), repo_root)}
        entry = {"status": "ok" if o.ok else "failed", "wall_time_s": round(o.seconds, 1), "profile": args.profile,
                 "executed_notebook": _relative(o.executed, repo_root), "parameters": params,
                 "profile_file": f"notebooks/params/{o.name}.{args.profile}.yaml"}
        if not o.ok:
            entry.update(error=o.error, files=[], config_hashes=[], metrics=None)
        manifest.update_manifest(output_dir, o.name, entry, top)
        bar.update(1)
        bar.write(f"{'ok    ' if o.ok else 'FAILED'} {o.name} ({o.seconds:.1f} s){'' if o.ok else ': ' + o.error}")

    outcomes = schedule(names, args.jobs, run_one, finished)
    bar.close()
    total = time.time() - started
    failed = [o for o in outcomes if not o.ok]
    print()
    print(format_table(outcomes))
    print(f"\n{len(outcomes) - len(failed)} ok, {len(failed)} failed, total {total:.1f} s (wall)")
    print(f"figures:            {output_dir}")
    print(f"manifest:           {output_dir / manifest.MANIFEST}")
    print(f"executed notebooks: {executed_dir}")
    return 1 if failed else 0


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the checkout when inside it (the manifest is committed), else absolute."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def register(subparsers) -> None:
    """Add ``qafl reproduce`` to the ``qafl`` command line."""
    p = subparsers.add_parser("reproduce", help="regenerate the paper's figures (papermill over the notebooks)",
                              description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="smoke", help="parameter profile: smoke (minutes, default) or paper "
                   "(the paper's settings; hours) — any notebooks/params/<nb>.<profile>.yaml")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks (e.g. fig1_peers)")
    p.add_argument("--jobs", type=_positive_int, default=min(2, os.cpu_count() or 1),
                   help="notebooks executed in parallel, each in its own kernel (default: 2, or 1 on one core)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where each notebook's runs execute (ray: qafl_core.backend.run_many)")
    p.add_argument("--address", help="Ray cluster address for --backend ray (default: a local Ray)")
    p.add_argument("--output-dir", help="figures, metrics and MANIFEST.json (default: <repo>/figures/<profile>, or "
                   "<repo>/figures/<profile>-embedded when a notebook falls back to embedded data)")
    p.add_argument("--executed-dir", help="executed notebooks (default: notebooks/executed, git-ignored)")
    p.add_argument("--notebooks-dir", help="folder with the notebooks and params/ (default: the checkout's)")
    p.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds (default: none)")
    p.add_argument("--log-output", action="store_true", help="stream the notebooks' cell output to the terminal")
    p.add_argument("--list", action="store_true", help="list the selected notebooks and profiles, run nothing")
    p.add_argument("--estimate", action="store_true",
                   help="per notebook: runs, local SGD steps, messages, bits, evaluations and the estimated time on "
                        "this machine, from a simulation of each run's clock without training and measured step "
                        "costs; runs in the cache or results/<profile> count 0 (qafl_core.experiments.estimate)")
    p.add_argument("--json", action="store_true", help="with --estimate: print the estimate as JSON")
    p.add_argument("--remeasure", action="store_true",
                   help="with --estimate: measure the step costs again instead of reusing the cached ones (e.g. "
                        "when they were measured while other jobs were running)")
    p.set_defaults(func=reproduce)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
