"""``qafl data prepare femnist``: LEAF's FEMNIST preprocessing from NIST Special Database 19.

Follows LEAF (Caldas et al., 2018; ``data/femnist/preprocess/{get_file_dirs,get_hashes,match_hashes,
group_by_writer,data_to_json}.py``) as documented in docs/data.md#femnist and #leaf-quirks:

1. class of every image from ``by_class/<2-hex class>/<folder>/*.png`` where the folder name contains
   ``hsf`` and not ``mit`` (so ``train_<cl>/`` and ``*.mit`` are skipped);
2. writer of every image from ``by_write/<hsf_k>/<writer>/<type>/*.png``;
3. the two are joined by the MD5 of the image file (the first class image with a given hash wins);
4. images are grouped by writer in ``by_write`` order.  LEAF's grouping starts every writer's list
   except the first with that writer's first image and then appends it again, so each later writer holds
   its first image twice; ``--leaf-duplicate-quirk`` (default on, for faithfulness) reproduces this;
5. each image: greyscale, ``thumbnail((28, 28))`` with antialiasing (Lanczos, one pass as in the Pillow
   of LEAF's time: ``reducing_gap=None``), row-major, divided by 255: **1.0 = white background**, ink
   near 0, no inversion;
6. labels: hex class code -> 0-9 digits, 10-35 'A'-'Z', 36-61 'a'-'z';
7. ``all_data_<i>.json`` with 100 writers each, then LEAF's sample / remove-users / split pipeline.

Both layouts are read in place: extracted folders (``RAW/by_class``, ``RAW/by_write``) or the archives
(``RAW/by_class.zip``, ``RAW/by_write.zip``).  LEAF lists folders with ``os.listdir`` (file-system
order); we sort every level so the result is the same on every machine.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from qafl_core.data.leaf import LeafObj

URLS = {"by_class": "https://s3.amazonaws.com/nist-srd/SD19/by_class.zip",
        "by_write": "https://s3.amazonaws.com/nist-srd/SD19/by_write.zip"}
WRITERS_PER_FILE = 100
SIZE = 28


def relabel(hex_class: str) -> int:
    """SD19 hex class folder (``"30"``, ``"4a"``, ``"7a"``) -> LEAF label 0..61."""
    try:
        code = int(hex_class, 16)
    except ValueError:
        raise ValueError(f"FEMNIST: class folder {hex_class!r} is not a hex character code") from None
    for lo, hi, base in ((0x30, 0x39, 0), (0x41, 0x5A, 10), (0x61, 0x7A, 36)):
        if lo <= code <= hi:
            return code - lo + base
    raise ValueError(f"FEMNIST: class folder {hex_class!r} is not a digit or letter code")


def _tree(raw: Path, name: str) -> tuple[list[tuple[str, ...]], Callable[[tuple[str, ...]], bytes]]:
    """Sorted relative paths (components below ``name``) of every file of ``name``, and a reader."""
    folder, archive = raw / name, raw / f"{name}.zip"
    if folder.is_dir():
        paths = [tuple(Path(dp, f).relative_to(folder).parts) for dp, _, fs in os.walk(folder) for f in fs]
        return sorted(paths), lambda parts: folder.joinpath(*parts).read_bytes()
    if archive.is_file():
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            raise ValueError(f"{archive}: not a readable zip archive ({exc}); download it again "
                             f"({URLS[name]}) or extract it into {folder}/") from None
        index = {}
        for n in zf.namelist():
            comps = n.rstrip("/").split("/")
            if n.endswith("/") or name not in comps:
                continue
            index[tuple(comps[comps.index(name) + 1:])] = n
        return sorted(index), lambda parts: _read_member(zf, archive, index[parts])
    raise FileNotFoundError(f"FEMNIST: neither {folder}/ nor {archive} exists (NIST SD19; pass --download to fetch "
                            f"{URLS[name]})")


#: largest image read from an SD19 archive: its PNGs are a few hundred bytes; a bigger member is not one
_MAX_MEMBER_BYTES = 16 * 2 ** 20


def _read_member(zf: zipfile.ZipFile, archive: Path, member: str) -> bytes:
    """One archive member, refusing an oversized (zip bomb) or corrupt one with a ValueError naming it."""
    info = zf.getinfo(member)
    if info.file_size > _MAX_MEMBER_BYTES:
        raise ValueError(f"{archive}: member {member} claims {info.file_size:,} bytes; SD19 images are small "
                         f"(refused above {_MAX_MEMBER_BYTES:,})")
    try:
        with zf.open(info) as fh:
            data = fh.read(_MAX_MEMBER_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise ValueError(f"{archive}: member {member} is corrupt ({exc})") from None
    if len(data) > _MAX_MEMBER_BYTES:
        raise ValueError(f"{archive}: member {member} decompresses to more than {_MAX_MEMBER_BYTES:,} bytes; refused")
    return data


def class_by_hash(raw: Path) -> tuple[dict[str, str], int]:
    """MD5 of each ``by_class`` hsf image -> its hex class (first occurrence wins); also the image count."""
    paths, read = _tree(raw, "by_class")
    out: dict[str, str] = {}
    n = 0
    for p in paths:
        if len(p) != 3 or not p[2].lower().endswith(".png") or "hsf" not in p[1] or "mit" in p[1]:
            continue
        out.setdefault(hashlib.md5(read(p)).hexdigest(), p[0])
        n += 1
    if not out:
        raise ValueError(f"FEMNIST: no by_class/<class>/hsf_*/*.png images under {raw}")
    return out, n


def to_pixels(png: bytes, where: str) -> np.ndarray:
    """LEAF's 28×28 conversion, as uint8 (value / 255 is what LEAF stores)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        gray = img.convert("L")
    gray.thumbnail((SIZE, SIZE), Image.LANCZOS, reducing_gap=None)
    arr = np.asarray(gray, dtype=np.uint8)
    if arr.shape != (SIZE, SIZE):
        raise ValueError(f"FEMNIST: {where} gives a {arr.shape[1]}x{arr.shape[0]} thumbnail, expected 28x28 "
                         "(SD19 images are square 128x128)")
    return arr.reshape(-1)


def writer_images(raw: Path, classes: dict[str, str]) -> Iterator[tuple[str, bytes, str, str]]:
    """``(writer, png bytes, hex class, path)`` for every ``by_write`` image whose hash has a class."""
    paths, read = _tree(raw, "by_write")
    for p in paths:
        if len(p) != 4 or not p[3].lower().endswith(".png"):
            continue
        data = read(p)
        c = classes.get(hashlib.md5(data).hexdigest())
        yield p[1], data, (c or ""), "/".join(("by_write",) + p)


def build_all_data(raw: str | os.PathLike, duplicate_quirk: bool = True) -> tuple[list[LeafObj], np.ndarray, dict]:
    """FEMNIST ``all_data`` shards whose ``x`` are row indices into the returned ``(M, 784)`` uint8 pixels.

    Returns ``(shards, pixels, counts)``; ``counts`` has images seen/unmatched and writers.
    """
    r = Path(raw)
    classes, n_class_images = class_by_hash(r)
    pixels: list[np.ndarray] = []
    groups: list[tuple[str, list[tuple[int, int]]]] = []
    unmatched = 0
    for writer, data, cls, where in writer_images(r, classes):
        if not cls:  # LEAF would stop with a KeyError; we count and skip such images
            unmatched += 1
            continue
        item = (len(pixels), relabel(cls))
        pixels.append(to_pixels(data, where))
        if not groups or groups[-1][0] != writer:
            groups.append((writer, [item] if (duplicate_quirk and groups) else []))
        groups[-1][1].append(item)
    if not groups:
        raise ValueError(f"FEMNIST: no by_write image of {r} matches a by_class image (MD5 join)")
    shards = []
    for s in range(0, len(groups), WRITERS_PER_FILE):
        chunk = groups[s:s + WRITERS_PER_FILE]
        shards.append({"users": [w for w, _ in chunk], "num_samples": [len(items) for _, items in chunk],
                       "user_data": {w: {"x": [i for i, _ in items], "y": [c for _, c in items]} for w, items in chunk}})
    counts = {"class_images": n_class_images, "writer_images": len(pixels), "unmatched_writer_images": unmatched,
              "writers": len(groups), "shards": len(shards),
              "duplicated_first_images": (len(groups) - 1) if duplicate_quirk else 0}
    return shards, np.stack(pixels), counts


def materializer(pixels: np.ndarray) -> Callable[[LeafObj], LeafObj]:
    """Index lists -> LEAF's 784-float lists (``uint8 / 255`` in float64, exactly LEAF's values)."""
    def run(obj: LeafObj) -> LeafObj:
        data = {u: {"x": (pixels[np.asarray(d["x"], dtype=np.int64)].astype(np.float64) / 255).tolist(),
                    "y": [int(v) for v in d["y"]]} for u, d in obj["user_data"].items()}
        return {**{k: v for k, v in obj.items() if k != "user_data"}, "user_data": data}
    return run


def download(raw: Path) -> None:
    """Fetch the two SD19 archives from NIST into ``raw`` (only the missing ones; ~1 GB each)."""
    raw.mkdir(parents=True, exist_ok=True)
    for name, url in URLS.items():
        if (raw / name).is_dir() or (raw / f"{name}.zip").is_file():
            continue
        print(f"femnist: downloading {url} -> {raw / (name + '.zip')}")
        tmp = raw / f".{name}.zip.part"
        urllib.request.urlretrieve(url, tmp)  # noqa: S310 (fixed https URL)
        os.replace(tmp, raw / f"{name}.zip")


def cmd_femnist(args: argparse.Namespace) -> int:
    """``qafl data prepare femnist``."""
    from qafl_core.data.prepare import _print_report, check_out, pipeline_kwargs, staged_output, write_leaf_dataset

    raw = Path(args.raw)
    check_out(args.out, args.force)  # refuse before downloading or reading anything
    if args.download:
        download(raw)
    shards, pixels, counts = build_all_data(raw, args.leaf_duplicate_quirk)
    with staged_output(args.out, args.force) as stage:
        report = write_leaf_dataset(stage, "femnist", [f"all_data_{i}" for i in range(len(shards))], shards,
                                    materializer(pixels), pipeline_kwargs(args),
                                    {"source": {"raw": str(raw.resolve()), **counts},
                                     "leaf_duplicate_quirk": bool(args.leaf_duplicate_quirk),
                                     "pixels": "28x28 row-major, value/255, 1.0 = background (LEAF)"})
    _print_report(Path(args.out), report)
    return 0


def register_femnist(sub: argparse._SubParsersAction, add_pipeline_args: Callable) -> None:
    f = sub.add_parser("femnist", help="LEAF FEMNIST from NIST SD19 (by_class + by_write, folders or .zip)")
    f.add_argument("--raw", required=True, help="folder with by_class/ and by_write/ (or by_class.zip, by_write.zip)")
    f.add_argument("--download", action="store_true", help="fetch the SD19 archives from NIST into --raw first")
    f.add_argument("--leaf-duplicate-quirk", action=argparse.BooleanOptionalAction, default=True,
                   help="repeat each writer's first image as LEAF does (default: on)")
    # LEAF's small FEMNIST configuration and its paper seeds (paper_experiments/femnist.sh).
    add_pipeline_args(f, sf=0.05, k=0, smplseed=1549786595, spltseed=1549786796)
    f.set_defaults(func=cmd_femnist)
