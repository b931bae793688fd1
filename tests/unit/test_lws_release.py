"""What the local cluster installs of the LeaderWorkerSet release (``eplb_local.kube.lws``),
built from the release's own files that ``scripts/setup-kube.sh`` copies beside the
controller: the webhooks as the release's kustomize patches leave them, sent to a URL."""

from __future__ import annotations

import base64

import pytest

from eplb_local.kube import lws
from eplb_local.kube.binaries import lws_dir

CONFIG = lws_dir() / "config"
URL = "https://127.0.0.1:9443"


def test_webhooks_are_the_releases_sent_to_the_url() -> None:
    made = lws.webhooks(CONFIG, URL, b"PEM")
    assert [c["kind"] for c in made] == [
        "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]  # fmt: skip
    assert [c["metadata"]["name"] for c in made] == [
        "lws-mutating-webhook-configuration", "lws-validating-webhook-configuration"]  # fmt: skip
    paths = set()
    for configuration in made:
        for webhook in configuration["webhooks"]:
            client = webhook["clientConfig"]
            assert set(client) == {"url", "caBundle"} and client["url"].startswith(URL + "/")
            assert base64.b64decode(client["caBundle"]) == b"PEM"
            assert webhook["failurePolicy"] == "Fail"
            paths.add(client["url"][len(URL) :])
            if webhook["rules"][0]["resources"] == ["pods"]:
                # The release's patch: only the pods of a LeaderWorkerSet go to the webhook.
                assert webhook["objectSelector"] == {"matchExpressions": [
                    {"key": "leaderworkerset.sigs.k8s.io/name", "operator": "Exists"}]}  # fmt: skip
    assert paths == {"/mutate--v1-pod", "/validate--v1-pod",
                     "/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
                     "/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset"}  # fmt: skip


def test_the_controller_runs_under_the_releases_cluster_role() -> None:
    role, binding = lws.rbac(CONFIG)
    assert role["metadata"]["name"] == binding["roleRef"]["name"] == lws.CLUSTER_ROLE
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": lws.CONTROLLER_USER}]  # fmt: skip
    granted = {(group, resource) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"]}  # fmt: skip
    assert {("", "pods"), ("apps", "statefulsets"),
            ("leaderworkerset.x-k8s.io", "leaderworkersets/status")} <= granted  # fmt: skip
    assert lws.crd(CONFIG)["metadata"]["name"] == lws.CRD_NAME


def test_an_unexpected_release_patch_is_refused() -> None:
    with pytest.raises(ValueError, match="unexpected patch op"):
        lws._patched({"webhooks": [{}]}, [{"op": "add", "path": "/webhooks/0", "value": {}}])
