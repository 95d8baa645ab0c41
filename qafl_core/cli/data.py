"""``qafl data ...`` sub-commands: ``describe`` (here) and ``prepare`` (from :mod:`qafl_core.data.prepare`).

``qafl data describe NAME [--root DIR] [--set key=value ...] [--partition iid|dirichlet ...] [--json]``
loads a dataset through :func:`qafl_core.data.registry.load_dataset`, optionally re-partitions it
(:mod:`qafl_core.data.partition`, as a run with ``partition:`` would), and prints its statistics (LEAF
``stats.sh`` style: clients, samples, mean/std samples per client), how heterogeneous its partition is
(per-client label entropy and total variation distance to the pooled label mix: mean, p10, p50, p90)
plus provenance (source, LEAF flags, seeds).  Errors are raised as
ValueError/FileNotFoundError; the ``qafl`` dispatcher prints them as one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from qafl_core.data.partition import PARTITIONS, label_heterogeneity, repartition
from qafl_core.data.registry import DATASETS, load_dataset

_MAX_INFO_ITEMS = 25  # per-writer maps (e.g. 300 writers of a FEMNIST merge) are summarised, not printed


def _parse_value(text: str) -> Any:
    # JSON first so that numbers, booleans, lists and null keep their types; anything else is a string.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; a pair without ``=`` is a ValueError."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set/--option expects key=value, got {pair!r}")
        out[key.strip().replace("-", "_")] = _parse_value(value)
    return out


def _summarise(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) > _MAX_INFO_ITEMS:
            return f"<{len(value)} entries omitted>"
        return {str(k): _summarise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) > _MAX_INFO_ITEMS:
            return f"<{len(value)} entries omitted>"
        return [_summarise(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def describe(args: argparse.Namespace) -> int:
    """Load the dataset and print its statistics (table, or one JSON object with ``--json``)."""
    options = parse_options(args.option)
    for flag, key in (("merge", "merge"), ("num_clients", "num_clients"), ("seed", "seed"), ("validation", "validation")):
        value = getattr(args, flag, None)
        if value not in (None, False):
            options[key] = value
    ds = _load(args, options)
    report = {**ds.stats(), **label_heterogeneity(ds), "dataset": args.name,
              "default_model": DATASETS[args.name]["model"],
              "description": DATASETS[args.name]["description"], "root": args.root, "options": options,
              # the top level of info is always kept as a mapping (only nested entries are summarised)
              "info": {str(k): _summarise(v) for k, v in ds.info.items()}}
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    width = max(len(k) for k in report)
    for key, value in report.items():
        if key == "info":
            continue
        if isinstance(value, float):
            value = f"{value:.3f}" if key.startswith(("label_", "majority_")) else f"{value:.2f}"
        print(f"{key:<{width}}  {value}")
    print("info:")
    for key, value in report["info"].items():
        print(f"  {key}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
    return 0


def _load(args: argparse.Namespace, options: dict[str, Any]):
    """Load, then re-partition as ``qafl_core.data.build.build_dataset`` does (vision: one shard, re-dealt)."""
    scheme = args.partition
    vision = DATASETS.get(args.name, {}).get("partition", "natural") == "iid"  # loaded as shards, re-dealt
    if args.dirichlet_alpha is not None and scheme != "dirichlet":
        raise ValueError("--dirichlet-alpha: only used with --partition dirichlet")
    if vision and scheme == "natural":
        raise ValueError(f"--partition: {args.name} has no natural client partition; use iid or dirichlet")
    if scheme in (None, "natural") or (vision and scheme == "iid"):
        return load_dataset(args.name, args.root, **options)
    n = int(options.get("num_clients", 10)) if vision else None  # 10 = the vision loader's default
    ds = load_dataset(args.name, args.root, **({**options, "num_clients": 1} if vision else options))
    return repartition(ds, scheme, n, args.dirichlet_alpha, args.partition_seed)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data describe`` and the ``data prepare`` group to the ``qafl`` parser."""
    data = subparsers.add_parser("data", help="describe or prepare datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_sub.required = True

    d = data_sub.add_parser("describe", help="print statistics of a dataset (clients, samples per client, ...)")
    d.add_argument("name", help=f"dataset name: {', '.join(DATASETS)}")
    d.add_argument("--root", default=None, help="data directory (default: see each dataset; uses $QAFL_DATA_DIR)")
    d.add_argument("--set", "--option", action="append", dest="option", metavar="KEY=VALUE",
                   help="loader option, repeatable (e.g. --set sf=0.5); values parsed as JSON when possible")
    d.add_argument("--merge", action="store_true", help="femnist: merge every LEAF sample under --root")
    d.add_argument("--num-clients", type=int, default=None,
                   help="mnist/fmnist/cifar10: number of clients (i.i.d. shards, or those of --partition)")
    d.add_argument("--seed", type=int, default=None, help="shuffle seed (vision) or generator seed (synthetic)")
    d.add_argument("--validation", type=int, default=None, help="vision: hold out this many train samples for evaluation")
    d.add_argument("--partition", choices=PARTITIONS, default=None,
                   help="re-deal the samples: iid shards or Dirichlet label skew (default: the dataset's own)")
    d.add_argument("--dirichlet-alpha", type=float, default=None, help="alpha of --partition dirichlet")
    d.add_argument("--partition-seed", type=int, default=0, help="seed of the --partition stream (default 0)")
    d.add_argument("--json", action="store_true", help="print exactly one JSON object")
    d.set_defaults(func=describe)

    # ---- `qafl data prepare ...`: the sub-commands are defined beside the pipelines they drive
    prepare = data_sub.add_parser("prepare", help="build LEAF data (run LEAF's pipeline) from raw sources")
    prepare_sub = prepare.add_subparsers(dest="prepare_command", metavar="DATASET")
    prepare_sub.required = True
    from qafl_core.data.prepare import add_pipeline_args, register_prepare
    from qafl_core.data.prepare_femnist import register_femnist

    register_femnist(prepare_sub, add_pipeline_args)
    register_prepare(prepare_sub)
