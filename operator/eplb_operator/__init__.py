"""Control plane of Kubernetes-native expert-parallel load balancing (EPLB).

Layers, lowest first: ``placement`` (pure policy on tensors), ``formats`` (files in and
out), ``cli`` (the ``eplb`` command).  A layer imports only the ones below it.
"""

__version__ = "0.1.0"
