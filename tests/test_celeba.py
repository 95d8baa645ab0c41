"""CelebA reader on GENERATED placeholder images (flat colours, a gradient): the real CelebA images are not
available offline, so these tests check the LEAF JSON + image-folder mechanics, not real data."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qafl_core.data.celeba import celeba_all_data, load_celeba


def write_split(root: Path, train: dict, test: dict) -> None:
    for side, data in (("train", train), ("test", test)):
        users = sorted(data)
        obj = {"users": users, "num_samples": [len(data[u][1]) for u in users],
               "user_data": {u: {"x": data[u][0], "y": data[u][1]} for u in users}}
        (root / side).mkdir(parents=True)
        (root / side / f"all_data_niid_0_keep_5_{side}_9.json").write_text(json.dumps(obj))


@pytest.fixture()
def celeba_dir(tmp_path):
    img = tmp_path / "raw" / "img_align_celeba"
    img.mkdir(parents=True)
    for i in range(1, 9):
        Image.new("RGB", (178, 218), (10 * i, 100, 250)).save(img / f"{i:06d}.jpg", quality=100)
    grad = np.tile((np.arange(178) * 255 // 177).astype(np.uint8), (218, 1))
    Image.fromarray(np.stack([grad, grad, grad], -1)).save(img / "000009.png")  # wide value range
    write_split(tmp_path,
                {"7": (["000001.jpg", "000002.jpg", "000009.png"], [1.0, 0.0, 1.0]),  # floats, as LEAF's script
                 "3": (["000004.jpg", "000005.jpg"], [0, 1])},                        # ints, as real files
                {"7": (["000003.jpg"], [0.0]), "3": (["000006.jpg"], [1])})
    return tmp_path


def test_load_celeba(celeba_dir):
    ds = load_celeba(str(celeba_dir))
    assert ds.client_ids == ["3", "7"] and ds.num_classes == 2
    assert ds.x_train.shape == (5, 3, 84, 84) and str(ds.x_train.dtype) == "torch.uint8"
    assert ds.y_train.tolist() == [0, 1, 1, 0, 1] and ds.y_test.tolist() == [1, 0]
    first = ds.client_train(1)[0][0].numpy()  # user "7", image 000001.jpg: (10, 100, 250)
    assert abs(int(first[0].mean()) - 10) <= 2 and abs(int(first[2].mean()) - 250) <= 2  # RGB order, raw 0-255
    grad = ds.client_train(1)[0][2].numpy()
    assert grad.max() > 240 and grad.min() < 10  # not scaled to [0, 1]
    assert ds.info["pixel_range"].startswith("raw 0-255")
    small = load_celeba(str(celeba_dir), max_clients=1, image_size=32)
    assert small.client_ids == ["3"] and small.x_train.shape == (2, 3, 32, 32)


def test_errors(celeba_dir, tmp_path, monkeypatch):
    (celeba_dir / "raw" / "img_align_celeba" / "000005.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000005.jpg"):
        load_celeba(str(celeba_dir))
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_celeba(str(celeba_dir), image_dir=str(tmp_path / "nope"))
    monkeypatch.delenv("QAFL_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="QAFL_DATA_DIR"):
        load_celeba()
    bad = tmp_path / "bad"
    img = bad / "imgs"
    img.mkdir(parents=True)
    Image.new("RGB", (10, 10)).save(img / "a.jpg")
    write_split(bad, {"1": (["a.jpg"], [2])}, {"1": (["a.jpg"], [0])})
    with pytest.raises(ValueError, match="labels must be 0/1"):
        load_celeba(str(bad), image_dir=str(img))


def test_all_data_from_metadata(tmp_path):
    (tmp_path / "identity_CelebA.txt").write_text("1.jpg 5\n2.jpg 9\n3.jpg 5\n4.jpg 5\n")
    (tmp_path / "list_attr_celeba.txt").write_text("4\nA Smiling\n1.jpg -1 1\n2.jpg 1 -1\n3.jpg 1 -1\n4.jpg -1 1\n")
    obj = celeba_all_data(tmp_path, min_images=2)
    assert obj["users"] == ["5"] and obj["user_data"]["5"] == {"x": ["1.jpg", "3.jpg", "4.jpg"], "y": [1, 0, 1]}
    assert celeba_all_data(tmp_path, attribute="A", min_images=1)["user_data"]["9"]["y"] == [1]
    with pytest.raises(ValueError, match="unknown attribute 'Nope'"):
        celeba_all_data(tmp_path, attribute="Nope")
    (tmp_path / "identity_CelebA.txt").write_text("1.jpg 5\n7.jpg 5\n")
    with pytest.raises(ValueError, match="7.jpg"):
        celeba_all_data(tmp_path, min_images=1)
    with pytest.raises(FileNotFoundError, match="identity_CelebA.txt"):
        celeba_all_data(tmp_path / "missing")
