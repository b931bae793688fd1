"""The LeaderWorkerSet controller (``sigs.k8s.io/lws``) in the local cluster.

Installed as its release manifests install it, less what only a cluster network needs: the
CRD, the ClusterRole its controller runs under (bound here to the user of its client
certificate), and its admission webhooks — the pod webhook is what gives each pod its
``leaderworkerset.sigs.k8s.io/{group-index,worker-index}`` labels, so without it no rank
could be read off the workload. The release reaches the webhooks through a Service
(``lws-webhook-service``); with no Service routing on this node they are registered by URL
on 127.0.0.1, with the local CA's bundle, the same paths, rules and object selectors (the
release's kustomize patches applied). Its certificates come from the local CA instead of its
internal rotator, so that rotator is off; leader election is off (one replica).

Pure building of manifests; :class:`~eplb_local.world.kube.LocalKube` applies them and
starts the process (``scripts/setup-kube.sh`` builds it and copies these files).
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

CRD_NAME = "leaderworkersets.leaderworkerset.x-k8s.io"
CONTROLLER_USER = "lws-controller-manager"  # the CN of its client certificate
CLUSTER_ROLE = "lws-manager-role"  # the release's name for config/rbac/role.yaml
WEBHOOK_PREFIX = "lws-"  # the release names its webhook configurations lws-…


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def crd(config: Path) -> dict[str, Any]:
    """The ``leaderworkersets.leaderworkerset.x-k8s.io`` CRD of the release."""
    (found,) = _load(config / "crd.yaml")
    return found


def rbac(config: Path) -> list[dict[str, Any]]:
    """Its ClusterRole and the binding to the controller's user."""
    (role,) = _load(config / "role.yaml")
    role = copy.deepcopy(role)
    role["metadata"] = {"name": CLUSTER_ROLE}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": CLUSTER_ROLE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": CLUSTER_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": CONTROLLER_USER}],
    }  # fmt: skip
    return [role, binding]


def _patched(configuration: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """``configuration`` with the release's JSON patch applied (its ops are all ``replace`` of
    ``/webhooks/<n>``)."""
    webhooks = list(configuration["webhooks"])
    for op in patch:
        parts = op["path"].strip("/").split("/")
        if op["op"] != "replace" or len(parts) != 2 or parts[0] != "webhooks":
            raise ValueError(f"unexpected patch op in the LWS release: {op}")
        webhooks[int(parts[1])] = op["value"]
    return {**configuration, "webhooks": webhooks}


def webhooks(config: Path, url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """The mutating and validating webhook configurations, each webhook sent to ``url`` +
    its path (``url`` is ``https://127.0.0.1:<port>``), trusting ``ca_bundle`` (PEM)."""
    patches = {
        kind: yaml.safe_load((config / f"{prefix}-patch.yaml").read_text())
        for kind, prefix in (("MutatingWebhookConfiguration", "mutating"),
                             ("ValidatingWebhookConfiguration", "validating"))
    }  # fmt: skip
    bundle = base64.b64encode(ca_bundle).decode()
    made = []
    for released in _load(config / "webhooks.yaml"):
        configuration = _patched(copy.deepcopy(released), patches[released["kind"]])
        configuration["metadata"] = {"name": WEBHOOK_PREFIX + configuration["metadata"]["name"]}
        for webhook in configuration["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": url + path, "caBundle": bundle}
        made.append(configuration)
    return made


def controller_config(port: int, cert_dir: Path, health_port: int) -> dict[str, Any]:
    """Its ``--config`` file: webhooks on 127.0.0.1:``port`` with the certificates in
    ``cert_dir`` (``tls.crt``, ``tls.key``), no metrics server, no leader election."""
    return {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": port, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": "0"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
    }


def probe(namespace: str) -> dict[str, Any]:
    """A LeaderWorkerSet to create with ``dryRun=All``: accepted only once the controller's
    webhooks answer (they fail closed)."""
    container = {"name": "probe", "image": "probe"}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "webhook-probe", "namespace": namespace},
        "spec": {"leaderWorkerTemplate": {"size": 1,
                                          "workerTemplate": {"spec": {"containers": [container]}}}},
    }  # fmt: skip
