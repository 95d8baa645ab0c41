"""`qafl data prepare femnist|celeba|shakespeare` end to end on tiny generated raw data.

The SD19 tree and the CelebA miniature are synthetic (random rectangles / flat-colour placeholder
images); they only have the real layouts.  Nothing is downloaded.
"""
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qafl_core.cli import main
from qafl_core.data import prepare_femnist as pf
from qafl_core.data.leaf import read_leaf_file, read_leaf_split

CLASSES = {"30": 0, "39": 9, "41": 10, "4a": 19, "61": 36, "7a": 61}
# writer -> (hsf part, [(type folder, hex class), ...]) in by_write order
WRITERS = {"f0000_14": ("hsf_0", ["30", "41", "61", "4a", "7a"]),
           "f0001_41": ("hsf_0", ["39", "41", "41", "61"]),
           "f0500_03": ("hsf_1", ["30", "7a", "4a"])}


def _png(rng: np.random.Generator) -> tuple[bytes, tuple[int, int, int, int]]:
    """A 128x128 1-bit PNG: white background, one black rectangle (the "ink")."""
    img = Image.new("1", (128, 128), 1)
    x0, y0 = (int(v) for v in rng.integers(10, 60, size=2))
    box = (x0, y0, x0 + 50, y0 + 50)
    img.paste(0, box)
    buf = __import__("io").BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), box


def make_sd19(raw: Path) -> dict:
    """by_class/<cl>/hsf_k/*.png + by_write/hsf_k/<writer>/<type>/*.png (same bytes), plus decoys."""
    rng = np.random.default_rng(0)
    boxes = {}
    for w, (part, classes) in WRITERS.items():
        for j, cl in enumerate(classes):
            data, box = _png(rng)
            name = f"{w}_{j:05d}.png"
            t = raw / "by_write" / part / w / f"d{w[1:]}"
            t.mkdir(parents=True, exist_ok=True)
            (t / name).write_bytes(data)
            c = raw / "by_class" / cl / part
            c.mkdir(parents=True, exist_ok=True)
            (c / f"{part}_{w}_{j}.png").write_bytes(data)
            boxes[(w, j)] = box
            tr = raw / "by_class" / cl / f"train_{cl}"  # LEAF skips folders without "hsf"
            tr.mkdir(exist_ok=True)
            (tr / f"train_{w}_{j}.png").write_bytes(_png(rng)[0])
    (raw / "by_class" / "30" / "hsf_0.mit").write_text("skipped")
    mit = raw / "by_class" / "41" / "hsf_0_mit"  # "mit" folders are skipped too
    mit.mkdir()
    orphan, _ = _png(rng)
    (mit / "x.png").write_bytes(orphan)
    (raw / "by_write" / "hsf_1" / "f0500_03" / "d0500_03" / "zz_orphan.png").write_bytes(orphan)  # no class match
    return boxes


def run(*argv) -> int:
    return main(["data", "prepare", *[str(a) for a in argv]])


def test_relabel():
    assert {c: pf.relabel(c) for c in CLASSES} == CLASSES
    assert pf.relabel("5a") == 35 and pf.relabel("61") == 36
    with pytest.raises(ValueError, match="not a digit or letter"):
        pf.relabel("2f")


def test_prepare_femnist_end_to_end(tmp_path, monkeypatch, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    boxes = make_sd19(raw)
    monkeypatch.setattr(pf, "WRITERS_PER_FILE", 2)  # 3 writers -> two all_data shards
    assert run("femnist", "--raw", raw, "--out", out, "--sf", "1.0", "--smplseed", 7, "--spltseed", 8) == 0
    assert sorted(p.name for p in (out / "all_data").iterdir()) == ["all_data_0.json", "all_data_1.json"]
    a0, a1 = read_leaf_file(out / "all_data" / "all_data_0.json"), read_leaf_file(out / "all_data" / "all_data_1.json")
    assert a0["users"] == ["f0000_14", "f0001_41"] and a1["users"] == ["f0500_03"]
    y = {u: d["y"] for a in (a0, a1) for u, d in a["user_data"].items()}
    # LEAF's quirk: every writer but the first starts with its first image twice
    assert y["f0000_14"] == [CLASSES[c] for c in WRITERS["f0000_14"][1]]
    for w in ("f0001_41", "f0500_03"):
        assert y[w] == [CLASSES[WRITERS[w][1][0]]] + [CLASSES[c] for c in WRITERS[w][1]]
    x = np.asarray(a0["user_data"]["f0000_14"]["x"][0]).reshape(28, 28)
    assert x.shape == (28, 28) and x.max() == 1.0 and x.min() >= 0.0
    vals, counts = np.unique(x, return_counts=True)
    assert vals[counts.argmax()] == 1.0  # background white = 1.0, no inversion
    x0, y0, x1, y1 = (v * 28 / 128 for v in boxes[("f0000_14", 0)])
    assert x[int(y0) + 2:int(y1) - 2, int(x0) + 2:int(x1) - 2].max() < 0.1  # ink near 0
    rows, cols = np.indices((28, 28))
    far = (rows < y0 - 4) | (rows > y1 + 4) | (cols < x0 - 4) | (cols > x1 + 4)  # beyond the Lanczos support
    assert far.any() and (x[far] == 1.0).all()
    # pipeline output: LEAF names, same users on both sides, every sample accounted for (sf=1, k=0)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["all_data_0_niid_0_keep_0_train_9.json",
                                                                 "all_data_1_niid_0_keep_0_train_9.json"]
    tr, te = read_leaf_split(out)
    assert tr["users"] == te["users"] == sorted(WRITERS)
    for u in tr["users"]:
        assert len(tr["user_data"][u]["y"]) + len(te["user_data"][u]["y"]) == len(y[u])
        assert len(tr["user_data"][u]["y"]) == int(0.9 * len(y[u]))
    meta = json.loads((out / "meta" / "prepare.json").read_text())
    assert meta["flags"]["smplseed"] == 7 and meta["flags"]["spltseed"] == 8 and meta["leaf_duplicate_quirk"] is True
    assert meta["source"]["unmatched_writer_images"] == 1 and meta["source"]["writers"] == 3
    assert meta["counts"]["all_data"] == {"users": 3, "samples": 14}
    assert (out / "meta" / "sampling_seed.txt").read_text().split()[-1] == "7"
    assert (out / "meta" / "split_seed.txt").read_text().split()[-1] == "8"
    md5 = dict(line.split(" *")[::-1] for line in (out / "meta" / "dir-checksum.md5").read_text().split("\n") if line)
    assert len(md5) == 6 and md5["train/all_data_0_niid_0_keep_0_train_9.json"] == \
        hashlib.md5((out / "train" / "all_data_0_niid_0_keep_0_train_9.json").read_bytes()).hexdigest()
    # FEMNIST loader reads the result
    from qafl_core.data.femnist import load_femnist
    ds = load_femnist(root=str(out))
    assert ds.num_clients == 3 and ds.x_train.shape[1:] == (1, 28, 28) and float(ds.x_train.max()) == 1.0

    # same data from the .zip archives -> byte-identical outputs
    zraw = tmp_path / "zraw"
    zraw.mkdir()
    for name in ("by_class", "by_write"):
        with zipfile.ZipFile(zraw / f"{name}.zip", "w") as zf:
            for f in sorted((raw / name).rglob("*")):
                zf.write(f, f.relative_to(raw).as_posix())
    zout = tmp_path / "zout"
    assert run("femnist", "--raw", zraw, "--out", zout, "--sf", "1.0", "--smplseed", 7, "--spltseed", 8) == 0
    assert (zout / "meta" / "dir-checksum.md5").read_text() == (out / "meta" / "dir-checksum.md5").read_text()

    # quirk off; refusing to overwrite; --force
    assert run("femnist", "--raw", raw, "--out", out, "--sf", "1.0") == 2
    assert "already holds LEAF data" in capsys.readouterr().err
    assert run("femnist", "--raw", raw, "--out", out, "--sf", "1.0", "--no-leaf-duplicate-quirk", "--force") == 0
    assert json.loads((out / "meta" / "prepare.json").read_text())["counts"]["all_data"]["samples"] == 12


def test_prepare_femnist_missing_raw(tmp_path, capsys):
    assert run("femnist", "--raw", tmp_path / "nothing", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "qafl: error:" in err and "--download" in err and "by_class" in err


def make_celeba(raw: Path, n_celebs: int = 4, per: int = 6) -> dict:
    """identity_CelebA.txt, list_attr_celeba.txt (3 attributes) and flat-colour placeholder JPEGs."""
    img_dir = raw / "img_align_celeba"
    img_dir.mkdir(parents=True)
    ident, attrs, smile = [], [], {}
    k = 0
    for c in range(n_celebs):
        for _ in range(per if c else 3):  # celebrity 0 has only 3 images -> dropped (< 5)
            k += 1
            name = f"{k:06d}.jpg"
            Image.new("RGB", (178, 218), (k * 7 % 256, 40, 200)).save(img_dir / name)
            ident.append(f"{name} {100 + c}")
            smile[name] = 1 if k % 3 else -1
            attrs.append(f"{name}  1 {smile[name]:2d} -1")
    (raw / "identity_CelebA.txt").write_text("\n".join(ident) + "\n")
    (raw / "list_attr_celeba.txt").write_text(f"{k}\nYoung Smiling Bald\n" + "\n".join(attrs) + "\n")
    return smile


def test_prepare_celeba_and_load(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    smile = make_celeba(raw)
    assert run("celeba", "--raw", raw, "--out", out, "--spltseed", 3) == 0
    a = read_leaf_file(out / "all_data" / "all_data.json")
    assert a["users"] == ["101", "102", "103"]  # >= 5 images, first-appearance order
    d = a["user_data"]["101"]
    assert d["y"] == [(smile[x] + 1) // 2 for x in d["x"]] and set(d["y"]) <= {0, 1}
    tr, te = read_leaf_split(out)
    assert [p.name for p in (out / "train").iterdir()] == ["all_data_niid_0_keep_5_train_9.json"]
    assert all(len(tr["user_data"][u]["y"]) == 5 and len(te["user_data"][u]["y"]) == 1 for u in tr["users"])
    assert (out / "raw" / "img_align_celeba").is_dir()
    from qafl_core.data.celeba import load_celeba
    ds = load_celeba(str(out))
    assert ds.x_train.shape == (15, 3, 84, 84) and ds.x_train.dtype.is_floating_point is False
    assert ds.num_classes == 2 and ds.info["leaf_meta"]["attribute"] == "Smiling"
    # another attribute by name; an unknown one is a clean error
    assert run("celeba", "--raw", raw, "--out", tmp_path / "o2", "--attribute", "Bald") == 0
    assert set(read_leaf_file(tmp_path / "o2" / "all_data" / "all_data.json")["user_data"]["102"]["y"]) == {0}
    assert run("celeba", "--raw", raw, "--out", tmp_path / "o3", "--attribute", "Grumpy") == 2
    # no symlink: the recorded meta/image_dir.txt is used
    shutil.rmtree(out / "raw")
    assert load_celeba(str(out)).num_clients == 3


def test_prepare_shakespeare_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("QAFL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert run("shakespeare", "--out", out, "--plays", "macbeth", "the-tempest") == 0
    a = read_leaf_file(out / "all_data" / "all_data.json")
    assert set(a["hierarchies"]) == {"MACBETH", "THE TEMPEST"}
    assert all(len(x) == 80 for x in a["user_data"]["MACBETH_MACBETH"]["x"][:50])
    tr, te = read_leaf_split(out)
    assert "hierarchies" not in tr  # LEAF's split drops them
    from qafl_core.data.shakespeare import decode, load_shakespeare
    ds = load_shakespeare(plays=["macbeth", "the-tempest"])
    assert tr["users"] == ds.client_ids
    assert sum(map(len, (d["y"] for d in tr["user_data"].values()))) == len(ds.y_train)
    assert sum(map(len, (d["y"] for d in te["user_data"].values()))) == len(ds.y_test)
    i = ds.client_ids.index("MACBETH_MACBETH")
    assert tr["user_data"]["MACBETH_MACBETH"]["x"][3] == decode(ds.client_train(i)[0][3].numpy())
    assert te["user_data"]["MACBETH_MACBETH"]["y"][-1] == decode(ds.client_test(i)[1][-1:].numpy())
    back = load_shakespeare(root=str(out))  # our LEAF-dir reader gives the same tensors
    assert back.client_ids == ds.client_ids and bool((back.x_test == ds.x_test).all())
    meta = json.loads((out / "meta" / "prepare.json").read_text())
    assert meta["flags"]["ordered_gap"] == 79 and meta["flags"]["sf"] == 1.0 and meta["source"]["num_plays"] == 2
