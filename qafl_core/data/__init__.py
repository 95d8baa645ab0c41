"""Federated datasets (LEAF and i.i.d. vision shards); every loader returns a FederatedDataset."""
from qafl_core.data.federated import FederatedDataset

__all__ = ["FederatedDataset"]
