"""The FederatedDataset type: pooling into one node and subsets keep every sample exactly once."""
import torch

from qafl_core.config import RunConfig
from qafl_core.data.federated import FederatedDataset
from qafl_core.runner import build_dataset


def _ds():
    tr = [(torch.full((n, 2), float(i)), torch.full((n,), i)) for i, n in enumerate([3, 1, 2])]
    te = [(torch.full((1, 2), float(i)), torch.full((1,), i)) for i in range(3)]
    return FederatedDataset.from_clients("toy", ["a", "b", "c"], tr, te, num_classes=3)


def test_pooled_holds_every_sample_once():
    p = _ds().pooled()
    assert p.num_clients == 1 and p.train_counts().tolist() == [6] and p.test_counts().tolist() == [3]
    assert sorted(p.y_train.tolist()) == [0, 0, 0, 1, 2, 2] and p.info["pooled_clients"] == 3


def test_subset_order_and_contents():
    s = _ds().subset([2, 0])
    assert s.client_ids == ["c", "a"] and s.client_train(0)[1].tolist() == [2, 2]


def test_pool_option_through_the_runner():
    cfg = RunConfig(dataset="synthetic", num_clients=10, clients_per_round=1,
                    dataset_options={"num_tasks": 30, "pool": True})
    ds = build_dataset(cfg)
    full = build_dataset(cfg.replace(dataset_options={"num_tasks": 30}))
    assert ds.num_clients == 1 and len(ds.y_train) == len(full.y_train)
