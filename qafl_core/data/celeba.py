"""CelebA (LEAF): smiling / not smiling, one client per celebrity.

LEAF (Caldas et al., 2018; ``data/celeba/preprocess/metadata_to_json.py``, ``models/celeba/cnn.py``) as
documented in docs/data.md#celeba: users are celebrities with >= 5 images in ``identity_CelebA.txt``; ``x`` is
an image file name, ``y`` an attribute of ``list_attr_celeba.txt`` (Smiling) mapped -1/1 -> 0/1 (LEAF's
script writes floats 0.0/1.0 under Python 3, real files found store ints; both are accepted).  Images
are read from ``img_align_celeba/`` at load time exactly as LEAF's model does: ``resize((84, 84))`` then
``convert("RGB")``, raw 0-255 values, **no scaling or normalisation**.  LEAF leaves the resampling filter
to Pillow's default (bicubic since Pillow 7); we name it explicitly so results do not depend on the
installed Pillow.  Stored as ``uint8`` ``(N, 3, 84, 84)`` (channels first, for PyTorch).

The images are not available offline; the tests use generated placeholder images.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from qafl_core import environment
from qafl_core.data.federated import FederatedDataset
from qafl_core.data.leaf import LeafObj, read_leaf_split

NUM_CLASSES = 2
IMAGE_DIR_NAME = "img_align_celeba"


def _resolve_root(root: str | None) -> Path:
    if root is None:
        base = environment.data_dir()
        if not base:
            raise FileNotFoundError("CelebA: no data root; pass root (a LEAF CelebA directory with train/, test/ and "
                                    "raw/img_align_celeba/) or set QAFL_DATA_DIR (expects $QAFL_DATA_DIR/celeba); "
                                    "build one with `qafl data prepare celeba`")
        root = str(Path(base) / "celeba")
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"CelebA: data directory not found: {r}")
    return r


def find_image_dir(root: Path, image_dir: str | None = None) -> Path:
    """``image_dir``, else ``root/raw/img_align_celeba``, else the folder recorded by
    ``qafl data prepare celeba`` in ``root/meta/image_dir.txt``."""
    candidates = [Path(image_dir)] if image_dir is not None else [root / "raw" / IMAGE_DIR_NAME]
    recorded = root / "meta" / "image_dir.txt"
    if image_dir is None and recorded.is_file():
        candidates.append(Path(recorded.read_text().strip()))
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"CelebA: image folder not found (looked in {', '.join(map(str, candidates))}); "
                            "pass image_dir=.../img_align_celeba")


def load_image(path: Path, image_size: int = 84) -> np.ndarray:
    """One image as LEAF reads it: resized (bicubic) to ``image_size``², RGB, ``uint8`` ``(3, H, W)``."""
    from PIL import Image  # Pillow is needed only for CelebA and FEMNIST preparation

    if not path.is_file():
        raise FileNotFoundError(f"CelebA: image not found: {path}")
    with Image.open(path) as img:
        arr = np.asarray(img.resize((image_size, image_size), Image.BICUBIC).convert("RGB"), dtype=np.uint8)
    return arr.transpose(2, 0, 1)


def _labels(ys: list, where: str) -> torch.Tensor:
    a = np.asarray(ys, dtype=np.float64)
    if a.size and not np.isin(a, (0.0, 1.0)).all():
        raise ValueError(f"{where}: labels must be 0/1 (int or float), got values {sorted(set(a.tolist()))[:5]}")
    return torch.from_numpy(a.astype(np.int64))


def _images(names: list, image_dir: Path, size: int, where: str) -> torch.Tensor:
    out = np.empty((len(names), 3, size, size), dtype=np.uint8)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"{where}: x[{i}] must be an image file name, got {name!r}")
        out[i] = load_image(image_dir / name, size)
    return torch.from_numpy(out)


def load_celeba(root: str | None = None, image_dir: str | None = None, image_size: int = 84,
                max_clients: int | None = None) -> FederatedDataset:
    """Load a LEAF CelebA split (``root/train``, ``root/test``) and its images.

    Args:
        root: LEAF CelebA directory (default ``$QAFL_DATA_DIR/celeba``).
        image_dir: folder of the ``.jpg`` files (default ``root/raw/img_align_celeba``).
        image_size: side of the square images (LEAF: 84).
        max_clients: keep only the first ``max_clients`` celebrities in sorted id order (smoke runs).

    Raises:
        FileNotFoundError: root, image folder or an image file is missing (named in the message).
        ValueError: labels other than 0/1, non-string image names, bad ``max_clients``.
    """
    r = _resolve_root(root)
    if int(image_size) < 1:
        raise ValueError(f"CelebA: image_size must be >= 1, got {image_size}")
    train, test = read_leaf_split(r)
    imgs = find_image_dir(r, image_dir)
    users = list(train["users"])
    if max_clients is not None:
        if int(max_clients) < 1:
            raise ValueError(f"CelebA: max_clients must be >= 1, got {max_clients}")
        users = users[:int(max_clients)]
    parts: dict[str, list] = {"train": [], "test": []}
    for side, obj in (("train", train), ("test", test)):
        for u in users:
            d, where = obj["user_data"][u], f"{r / side}: user '{u}'"
            parts[side].append((_images(d["x"], imgs, int(image_size), where), _labels(d["y"], where)))
    info = {"source": "leaf_dir", "root": str(r), "image_dir": str(imgs), "image_size": int(image_size),
            "pixel_range": "raw 0-255 uint8, no normalisation (LEAF)", "resample": "bicubic",
            "max_clients": max_clients, "leaf_meta": _prepare_meta(r)}
    return FederatedDataset.from_clients("celeba", users, parts["train"], parts["test"], NUM_CLASSES, None, info)


def _prepare_meta(root: Path) -> dict:
    f = root / "meta" / "prepare.json"
    if not f.is_file():
        return {}
    meta = json.loads(f.read_text())
    return {k: meta[k] for k in ("flags", "attribute") if k in meta}


# ---------------------------------------------------------------------------------------------- all_data
def celeba_all_data(raw: str | os.PathLike, attribute: str = "Smiling", min_images: int = 5) -> LeafObj:
    """LEAF CelebA ``all_data`` from ``raw/identity_CelebA.txt`` and ``raw/list_attr_celeba.txt``.

    Celebrities (users, in order of first appearance) with >= ``min_images`` images; ``x`` their images
    in file order, ``y`` the attribute ``attribute`` as int 0/1.

    Raises:
        FileNotFoundError: a metadata file is missing.  ValueError: unknown attribute, malformed line,
        image without attribute row.
    """
    r = Path(raw)
    ident, attrs = r / "identity_CelebA.txt", r / "list_attr_celeba.txt"
    for f in (ident, attrs):
        if not f.is_file():
            raise FileNotFoundError(f"CelebA: {f} not found (expected identity_CelebA.txt, list_attr_celeba.txt "
                                    f"and {IMAGE_DIR_NAME}/ in {r})")
    celebs: OrderedDict[str, list[str]] = OrderedDict()
    for n, line in enumerate(ident.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{ident}:{n}: expected '<image> <celebrity id>', got {line!r}")
        celebs.setdefault(parts[1], []).append(parts[0])
    lines = attrs.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{attrs}: expected a count line and a header line of attribute names")
    names = lines[1].split()
    if attribute not in names:
        raise ValueError(f"CelebA: unknown attribute {attribute!r}; {attrs} has: {', '.join(names)}")
    col = names.index(attribute)
    value: dict[str, int] = {}
    for n, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1 or parts[col + 1] not in ("-1", "1"):
            raise ValueError(f"{attrs}:{n}: expected an image name and {len(names)} values of -1/1")
        value[parts[0]] = (int(parts[col + 1]) + 1) // 2
    users = [c for c, ims in celebs.items() if len(ims) >= int(min_images)]
    data = {}
    for c in users:
        missing = [im for im in celebs[c] if im not in value]
        if missing:
            raise ValueError(f"CelebA: image {missing[0]} (celebrity {c}) has no row in {attrs}")
        data[c] = {"x": list(celebs[c]), "y": [value[im] for im in celebs[c]]}
    return {"users": users, "num_samples": [len(data[c]["y"]) for c in users], "user_data": data}
