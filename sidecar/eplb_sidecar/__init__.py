"""Data plane of EPLB on Kubernetes: runs beside the engine in every GPU pod.

It never imports the operator; the operator imports only its published contract.
"""

__version__ = "0.1.0"
