"""FEMNIST loader: tiny generated LEAF samples, plus real-data checks when QAFL_DATA_DIR is set."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qafl_core.data.femnist import flags_from_file_names, load_femnist
from qafl_core.data.leaf import write_leaf_file

REAL = os.environ.get("QAFL_DATA_DIR")
needs_real = pytest.mark.skipif(not REAL, reason="real FEMNIST needs QAFL_DATA_DIR (e.g. QAFL_DATA_DIR=../shared/data)")


def writer(seed: int, n: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.ones(n, 784)
    x[:, :10] = torch.rand(n, 10, generator=g)  # mostly background (1.0), a little "ink"
    return {"x": x.tolist(), "y": torch.randint(0, 62, (n,), generator=g).tolist()}


def make_sample(root: Path, writers: dict[str, tuple[int, int]], seed: int = 0, shard: int = 0) -> None:
    """A LEAF sample dir: writers -> (n_train, n_test)."""
    tr = {u: writer(seed + 2 * i, a) for i, (u, (a, _)) in enumerate(writers.items())}
    te = {u: writer(seed + 2 * i + 1, b) for i, (u, (_, b)) in enumerate(writers.items())}
    for side, data in (("train", tr), ("test", te)):
        users = list(writers)
        write_leaf_file({"users": users, "num_samples": [len(data[u]["y"]) for u in users], "user_data": data},
                        root / side / f"all_data_{shard}_niid_05_keep_0_{side}_9.json.gz")


def test_single_sample_shapes_values_and_info(tmp_path):
    make_sample(tmp_path / "s1", {"f0002_1": (5, 2), "f0001_7": (3, 1)})
    unpaired = {"users": ["f9"], "num_samples": [1], "user_data": {"f9": writer(99, 1)}}
    write_leaf_file(unpaired, tmp_path / "s1/test_unpaired/all_data_9_niid_05_keep_0_test_9.json.gz")
    ds = load_femnist(tmp_path / "s1")
    assert ds.client_ids == ["f0001_7", "f0002_1"]  # sorted, test_unpaired ignored
    assert ds.x_train.shape == (8, 1, 28, 28) and ds.x_train.dtype == torch.float32
    assert ds.y_train.dtype == torch.int64 and ds.num_classes == 62
    assert ds.train_counts().tolist() == [3, 5] and ds.test_counts().tolist() == [1, 2]
    raw = writer(2, 3)  # f0001_7 is the 2nd writer -> train seed 0 + 2*1
    assert torch.equal(ds.client_train(0)[0].reshape(3, 784), torch.tensor(raw["x"], dtype=torch.float32))
    assert float(ds.x_train.max()) == 1.0  # stored values, no normalisation / inversion
    assert ds.info["leaf_flags"] == {"s": "niid", "sf": 0.05, "iu": None, "k": 0, "t": "sample", "tf": 0.9}
    assert ds.info["shards"] == [0]


def test_merge_keeps_each_writer_once_first_sorted_sample_wins(tmp_path):
    make_sample(tmp_path / "b_sample", {"w1": (4, 1), "w2": (2, 1)}, seed=10)
    make_sample(tmp_path / "a_sample", {"w2": (6, 2), "w3": (3, 1)}, seed=20)
    (tmp_path / "not_a_sample").mkdir()
    ds = load_femnist(tmp_path, merge=True)
    assert ds.client_ids == ["w1", "w2", "w3"]
    assert ds.info["writer_source"] == {"w2": "a_sample", "w3": "a_sample", "w1": "b_sample"}
    assert ds.info["duplicate_writers_dropped"] == 1
    assert [s["writers_kept"] for s in ds.info["merged_samples"]] == [2, 1]
    assert ds.train_counts().tolist() == [4, 6, 3]  # w2 from a_sample (6 train), not b_sample (2)
    listed = load_femnist([tmp_path / "b_sample", tmp_path / "a_sample"])
    assert torch.equal(listed.x_train, ds.x_train)


def test_missing_root_messages(tmp_path, monkeypatch):
    monkeypatch.delenv("QAFL_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"--root.*QAFL_DATA_DIR.*qafl data prepare femnist"):
        load_femnist()
    with pytest.raises(FileNotFoundError, match="train/ and test/"):
        load_femnist(tmp_path / "nothing")
    make_sample(tmp_path / "s", {"a": (2, 1)})
    with pytest.raises(FileNotFoundError, match="merge"):
        load_femnist(tmp_path)  # a parent of samples without merge=True
    monkeypatch.setenv("QAFL_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="slz-ai__leaf-torch"):
        load_femnist()


def test_bad_pixels_and_labels_name_the_user(tmp_path):
    make_sample(tmp_path, {"a": (2, 1), "b": (2, 1)})
    bad = {"users": ["a", "b"], "num_samples": [2, 2],
           "user_data": {"a": writer(0, 2), "b": {"x": [[1.0] * 783, [1.0] * 783], "y": [0, 1]}}}
    write_leaf_file(bad, tmp_path / "train/all_data_0_niid_05_keep_0_train_9.json.gz")
    with pytest.raises(ValueError, match="train data of user 'b'.*784"):
        load_femnist(tmp_path)
    bad["user_data"]["b"] = {"x": writer(1, 2)["x"], "y": [0, 62]}
    write_leaf_file(bad, tmp_path / "train/all_data_0_niid_05_keep_0_train_9.json.gz")
    with pytest.raises(ValueError, match="user 'b'.*0..61"):
        load_femnist(tmp_path)


def test_flags_from_file_names():
    out = flags_from_file_names(["a/all_data_3_niid_05_keep_0_train_9.json.gz", "all_data_12_niid_05_keep_0_train_9.json"])
    assert out == {"shards": [3, 12], "leaf_flags": {"s": "niid", "sf": 0.05, "iu": None, "k": 0, "t": "sample", "tf": 0.9}}
    assert flags_from_file_names(["all_data_0_niid_0_keep_100_train_8.json"])["leaf_flags"]["sf"] == 1.0
    assert "leaf_flags" not in flags_from_file_names(["all_data_0_niid_05_train_9.json", "all_data_1_niid_1_train_9.json"])


@needs_real
def test_real_femnist_default_sample():
    ds = load_femnist()
    assert (ds.num_clients, len(ds.y_train), len(ds.y_test), ds.num_classes) == (105, 14708, 1685, 62)
    assert int(torch.unique(ds.y_train).numel()) == 62
    assert ds.x_train.shape[1:] == (1, 28, 28)
    assert (ds.x_train == 1.0).float().mean() > 0.5  # background is 1.0 (docs/data.md#femnist)
    assert ds.info["root"] == str(Path(REAL) / "femnist" / "slz-ai__leaf-torch")


@needs_real
def test_real_femnist_merge_300_writers():
    ds = load_femnist(merge=True)
    assert ds.num_clients == 300 and len(set(ds.client_ids)) == 300
    assert ds.info["duplicate_writers_dropped"] == 20  # 9 + 3 + 8 pairwise overlaps (SOURCE.md)
    assert (len(ds.y_train), len(ds.y_test)) == (41202, 4730)
    assert sorted(s["writers"] for s in ds.info["merged_samples"]) == [105, 105, 110]
    assert sum(s["writers_kept"] for s in ds.info["merged_samples"]) == 300
