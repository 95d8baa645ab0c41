"""LEAF JSON reader/writer and LEAF pipeline semantics (docs/data.md#leaf-file-format, #leaf-pipeline, #leaf-quirks)."""
from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from qafl_core.data import leaf
from qafl_core.data.leaf import (leaf_file_name, leaf_to_federated, read_leaf_dir, read_leaf_file, read_leaf_split,
                                 remove_users, run_pipeline, sample_iid, sample_niid, split_sample, split_user,
                                 write_leaf_file)

FIX = Path(__file__).parent / "fixtures"


def make_obj(sizes: dict[str, int], hier: bool = False, start: int = 0) -> dict:
    """A LEAF object whose samples are unique ints ``x = k``, ``y = k % 3`` (easy to track)."""
    users, data, k = list(sizes), {}, start
    for u, n in sizes.items():
        data[u] = {"x": list(range(k, k + n)), "y": [v % 3 for v in range(k, k + n)]}
        k += n
    obj = {"users": users, "num_samples": [sizes[u] for u in users], "user_data": data}
    if hier:
        obj["hierarchies"] = [f"g_{u}" for u in users]
    return obj


# ---------------------------------------------------------------------------------------------- reading
def test_read_json_and_gz_give_the_same_object(tmp_path):
    src = FIX / "leaf_two_files/train/part_0.json"
    gz = tmp_path / "f.json.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    a, b = read_leaf_file(src), read_leaf_file(gz)
    assert a == b
    assert a["users"] == ["w2", "w0"] and a["num_samples"] == [3, 2]
    assert a["user_data"]["w0"]["y"] == [0, 2]


def test_read_dir_merges_files_in_sorted_order():
    obj = read_leaf_dir(FIX / "leaf_two_files/train")
    assert obj["users"] == ["w2", "w0", "w1"]  # file order, users as listed inside each file
    assert obj["num_samples"] == [3, 2, 4]
    assert set(obj["user_data"]) == {"w0", "w1", "w2"}
    assert "hierarchies" not in obj


def test_read_dir_keeps_hierarchies():
    obj = read_leaf_dir(FIX / "leaf_hierarchies")
    assert obj["users"] == ["HAMLET_HAMLET", "HAMLET_OPHELIA", "MACBETH_MACBETH"]
    assert obj["hierarchies"] == ["HAMLET", "HAMLET", "MACBETH"]


def test_read_dir_rejects_mixed_hierarchies_and_duplicate_users(tmp_path):
    shutil.copy(FIX / "leaf_hierarchies/part_0.json", tmp_path / "a.json")
    write_leaf_file(make_obj({"u": 2}), tmp_path / "b.json")
    with pytest.raises(ValueError, match="hierarchies.*a.json.*b.json"):
        read_leaf_dir(tmp_path)
    d = tmp_path / "dup"
    write_leaf_file(make_obj({"u": 2, "v": 1}), d / "one.json")
    write_leaf_file(make_obj({"v": 3}), d / "two.json.gz")
    with pytest.raises(ValueError, match=r"'v'.*one\.json.*two\.json\.gz"):
        read_leaf_dir(d)


def test_read_split_sorts_users_and_recounts_shakespeare_test():
    train, test = read_leaf_split(FIX / "leaf_shakespeare_split")
    assert train["users"] == test["users"] == ["PLAY_A", "PLAY_B"]
    assert test["num_samples"] == [1, 2]  # len(y), not the listed 80 / 81
    assert test["num_samples_mismatch"] == 2 and train["num_samples_mismatch"] == 0


def test_read_split_user_mismatch_names_both_dirs_and_users(tmp_path):
    write_leaf_file(make_obj({"a": 2, "b": 2}), tmp_path / "train/x.json")
    write_leaf_file(make_obj({"a": 1, "c": 1}), tmp_path / "test/x.json")
    with pytest.raises(ValueError) as err:
        read_leaf_split(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "train") in msg and str(tmp_path / "test") in msg
    assert "['b']" in msg and "['c']" in msg


def test_empty_and_missing_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_leaf_dir(tmp_path)  # exists, no json
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_leaf_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train"):
        read_leaf_split(tmp_path)


@pytest.mark.parametrize("name, pattern", [
    ("truncated.json", r"truncated\.json: invalid JSON"),
    ("missing_user_data.json", r"missing_user_data\.json: missing key 'user_data'"),
    ("user_without_data.json", r"user_without_data\.json: user 'b' has no entry in 'user_data'"),
    ("xy_mismatch.json", r"xy_mismatch\.json: user_data\['a'\] has 2 x but 1 y"),
    ("wrong_types.json", r"wrong_types\.json: key 'users' must be a list"),
    ("int_user.json", r"int_user\.json: user ids must be strings"),
])
def test_bad_files_name_file_and_field(name, pattern):
    with pytest.raises(ValueError, match=pattern):
        read_leaf_file(FIX / "bad" / name)


def test_corrupt_and_truncated_gzip(tmp_path):
    good = gzip.compress((FIX / "leaf_hierarchies/part_1.json").read_bytes())
    (tmp_path / "trunc.json.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.json.gz").write_bytes(b"this is not gzip at all")
    for f in ("trunc.json.gz", "garbage.json.gz"):
        with pytest.raises(ValueError, match=f):
            read_leaf_file(tmp_path / f)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_leaf_file(tmp_path / "absent.json")


def test_write_round_trip_strips_extra_keys(tmp_path):
    obj = read_leaf_dir(FIX / "leaf_hierarchies")
    assert "source_files" in obj
    for name in ("out.json", "out.json.gz"):
        write_leaf_file(obj, tmp_path / name)
        back = read_leaf_file(tmp_path / name)
        assert set(back) == {"users", "hierarchies", "num_samples", "user_data"}
        assert back["users"] == obj["users"] and back["user_data"] == obj["user_data"]


# ---------------------------------------------------------------------------------------------- pipeline
def test_niid_takes_whole_users_and_cuts_the_last():
    obj = make_obj({f"u{i}": n for i, n in enumerate([10, 20, 30, 40, 50])}, hier=True)
    (out,) = sample_niid([obj], 0.5, seed=3)
    assert sum(out["num_samples"]) == int(0.5 * 150)
    whole = [u for u in out["users"][:-1]]
    assert all(out["user_data"][u] == obj["user_data"][u] for u in whole)
    last = out["users"][-1]
    n_last = len(out["user_data"][last]["y"])
    assert n_last <= len(obj["user_data"][last]["y"])
    assert out["user_data"][last]["x"] == obj["user_data"][last]["x"][:n_last]  # first samples, original order
    assert out["hierarchies"] == [f"g_{u}" for u in out["users"]]
    assert sample_niid([obj], 0.5, 3) == [out]
    orders = {tuple(sample_niid([obj], 0.5, s)[0]["users"]) for s in range(8)}
    assert len(orders) > 1


def test_niid_full_fraction_keeps_everything_shuffled():
    obj = make_obj({f"u{i}": 3 for i in range(20)})
    (out,) = sample_niid([obj], 1.0, seed=0)
    assert sorted(out["users"]) == sorted(obj["users"]) and out["users"] != obj["users"]
    assert sum(out["num_samples"]) == 60


def test_iid_deals_equal_users_numbered_across_files():
    a = make_obj({f"a{i}": 10 for i in range(30)}, hier=True)
    b = make_obj({f"b{i}": 5 for i in range(10)}, start=1000)
    out = sample_iid([a, b], sf=0.5, iu=0.1, seed=1)
    assert out[0]["users"] == ["0", "1", "2"] and out[1]["users"] == ["3"]  # round(0.1*30)=3, max(1, round(1.0))=1
    assert out[0]["num_samples"] == [50, 50, 50] and out[1]["num_samples"] == [25]
    assert all("hierarchies" not in o for o in out)
    pool_a = Counter(v for d in a["user_data"].values() for v in d["x"])
    got = Counter(v for d in out[0]["user_data"].values() for v in d["x"])
    assert all(got[v] <= pool_a[v] for v in got) and sum(got.values()) == 150  # drawn without replacement
    assert sample_iid([a, b], 0.5, 0.1, 1) == out and sample_iid([a, b], 0.5, 0.1, 2) != out


def test_remove_users_k():
    obj = make_obj({"a": 1, "b": 5, "c": 4}, hier=True)
    (out,) = remove_users([obj], 4)
    assert out["users"] == ["b", "c"] and out["hierarchies"] == ["g_b", "g_c"]
    assert remove_users([obj], 0)[0]["users"] == ["a", "b", "c"]


def test_split_sample_counts_and_partition():
    obj = make_obj({"one": 1, "two": 2, "ten": 10, "thirty": 30}, hier=True)
    (tr,), (te,) = split_sample([obj], 0.9, seed=5)
    assert tr["users"] == te["users"] == ["two", "ten", "thirty"]  # n=1 dropped
    assert tr["num_samples"] == [1, 9, 27] and te["num_samples"] == [1, 1, 3]
    for u in tr["users"]:
        both = tr["user_data"][u]["x"] + te["user_data"][u]["x"]
        assert sorted(both) == obj["user_data"][u]["x"]
    assert "hierarchies" not in tr and "hierarchies" not in te
    assert split_sample([obj], 0.9, 5) == ([tr], [te])
    assert split_sample([obj], 0.9, 6)[0][0]["user_data"]["thirty"] != tr["user_data"]["thirty"]


def test_split_sample_ordered_gap():
    obj = make_obj({"long": 1000, "short": 100})
    (tr,), (te,) = split_sample([obj], 0.9, seed=0, ordered_gap=79)
    assert tr["users"] == ["long"]  # short: 90 train, test would start at 169 > 100 -> dropped
    x = obj["user_data"]["long"]["x"]
    assert tr["user_data"]["long"]["x"] == x[:900]
    assert te["user_data"]["long"]["x"] == x[979:] and te["num_samples"] == [21]


def test_split_user_disjoint():
    obj = make_obj({f"u{i}": 2 for i in range(10)})
    (tr,), (te,) = split_user([obj], 0.7, seed=4)
    assert len(tr["users"]) == 7 and len(te["users"]) == 3
    assert set(tr["users"]).isdisjoint(te["users"]) and set(tr["users"]) | set(te["users"]) == set(obj["users"])


def test_run_pipeline_composes_and_records_meta():
    objs = [make_obj({f"u{i}": 5 + 3 * i for i in range(12)}), make_obj({f"v{i}": 2 + i for i in range(6)}, start=500)]
    tr, te, meta = run_pipeline(objs, "niid", sf=0.6, k=6, split="sample", tf=0.8, smplseed=11, spltseed=12)
    assert meta == {"s": "niid", "sf": 0.6, "iu": None, "k": 6, "t": "sample", "tf": 0.8, "smplseed": 11,
                    "spltseed": 12, "ordered_gap": None}
    expect = split_sample(remove_users(sample_niid(objs, 0.6, 11), 6), 0.8, 12)
    assert (tr, te) == expect and len(tr) == 2
    assert all(min(o["num_samples"], default=6) >= 1 for o in te)
    tr2, te2, meta2 = run_pipeline(objs, None, split=None)
    assert tr2 == objs and te2 == [] and meta2["smplseed"] is None
    with pytest.raises(ValueError, match="sampling"):
        run_pipeline(objs, "random")


def test_leaf_file_name_grammar():
    assert leaf_file_name("all_data_3", "niid", 0.05, k=0, split_side="train", tf=0.9) == \
        "all_data_3_niid_05_keep_0_train_9.json"
    assert leaf_file_name("all_data.json", "niid", 1.0) == "all_data_niid_0.json"
    assert leaf_file_name("all_data", "niid", 0.023, k=5, split_side="test", tf=0.6) == \
        "all_data_niid_023_keep_5_test_6.json"
    assert leaf_file_name("all_data_0", "iid", 0.1, iu=0.01) == "all_data_0_iid_01_1.json"
    with pytest.raises(ValueError, match="split_side"):
        leaf_file_name("x", split_side="dev")


def test_leaf_to_federated_and_bad_conversion():
    train, test = read_leaf_split(FIX / "leaf_two_files")
    to_x = lambda xs: torch.tensor(xs, dtype=torch.float32)  # noqa: E731
    to_y = lambda ys: torch.tensor(ys, dtype=torch.int64)  # noqa: E731
    ds = leaf_to_federated(train, test, "toy", to_x, to_y, 3, {"k": 1})
    assert ds.client_ids == ["w0", "w1", "w2"] and ds.train_counts().tolist() == [2, 4, 3]
    assert ds.test_counts().tolist() == [1, 1, 1] and ds.x_train.shape == (9, 2)
    assert torch.equal(ds.client_train(1)[1], torch.tensor([2, 2, 1, 0]))
    assert ds.info["k"] == 1 and ds.info["num_samples_mismatch"] == {"train": 0, "test": 0}
    train["user_data"]["w1"]["x"][0] = [1.0]  # ragged
    with pytest.raises(ValueError, match="user 'w1'"):
        leaf_to_federated(train, test, "toy", to_x, to_y, 3)


def test_pipeline_uses_no_global_random_state():
    import random

    import numpy as np
    random.seed(1)
    np.random.seed(1)
    r0, n0 = random.random(), np.random.rand()
    random.seed(1)
    np.random.seed(1)
    run_pipeline([make_obj({f"u{i}": 20 for i in range(10)})], "iid", sf=0.5, iu=0.2, k=2, split="sample")
    assert (random.random(), np.random.rand()) == (r0, n0)
    assert leaf.__name__ == "qafl_core.data.leaf"
