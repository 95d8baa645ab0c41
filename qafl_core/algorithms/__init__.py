"""QuAFL and the baselines it is compared with, on one simulated clock."""
from qafl_core.algorithms.base import Simulation
from qafl_core.algorithms.fedasync import FedAsync
from qafl_core.algorithms.fedavg import FedAvg
from qafl_core.algorithms.fedbuff import FedBuff
from qafl_core.algorithms.qafel import QAFeL
from qafl_core.algorithms.quafl import QuAFL

ALGORITHMS = {"quafl": QuAFL, "fedavg": FedAvg, "fedbuff": FedBuff, "fedasync": FedAsync, "qafel": QAFeL}

__all__ = ["ALGORITHMS", "Simulation", "QuAFL", "FedAvg", "FedBuff", "FedAsync", "QAFeL"]
