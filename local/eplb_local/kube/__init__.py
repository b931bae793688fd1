"""A real Kubernetes control plane on localhost: etcd, kube-apiserver, kube-controller-manager."""

from eplb_local.kube.control_plane import ControlPlane

__all__ = ["ControlPlane"]
