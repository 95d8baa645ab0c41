"""QuAFL and the baselines it is compared with, on one simulated clock."""
from qafl_core.algorithms.base import Simulation
from qafl_core.algorithms.fedavg import FedAvg
from qafl_core.algorithms.fedbuff import FedBuff
from qafl_core.algorithms.quafl import QuAFL

ALGORITHMS = {"quafl": QuAFL, "fedavg": FedAvg, "fedbuff": FedBuff}

__all__ = ["ALGORITHMS", "Simulation", "QuAFL", "FedAvg", "FedBuff"]
