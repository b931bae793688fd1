"""A local Kubernetes API for tests and the sandbox: KMock's emulator, with its gaps closed.

``LocalCluster`` serves it over real HTTP on localhost and writes a kubeconfig that kopf,
the Kubernetes Python client and the real ``kubectl`` can use.
"""

from eplb_operator.cluster.emulator import ClusterEmulator
from eplb_operator.cluster.server import LocalCluster

__all__ = ["ClusterEmulator", "LocalCluster"]
