"""Each gap the harness closes, shown against the emulator over real HTTP."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

from eplb_operator.cluster import LocalCluster
from tests.cluster.conftest import XPL, Api, placement


def test_writes_stamp_identity_and_versions(api: Api) -> None:
    created = api.post(XPL, placement()).body
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["generation"] == 1
    first = int(meta["resourceVersion"])
    patched = api.merge(f"{XPL}/ds", {"metadata": {"labels": {"a": "b"}}}).body
    assert int(patched["metadata"]["resourceVersion"]) > first
    assert patched["metadata"]["uid"] == meta["uid"]


def test_generation_moves_with_spec_only(api: Api) -> None:
    api.post(XPL, placement())
    labelled = api.merge(f"{XPL}/ds", {"metadata": {"labels": {"x": "y"}}}).body
    assert labelled["metadata"]["generation"] == 1
    status = api.merge(f"{XPL}/ds/status", {"status": {"phase": "Idle"}}).body
    assert status["metadata"]["generation"] == 1
    changed = api.merge(f"{XPL}/ds", {"spec": {"rollout": {"layersPerStep": 2}}}).body
    assert changed["metadata"]["generation"] == 2


def test_stale_resource_version_is_a_conflict(api: Api) -> None:
    stale = api.post(XPL, placement()).body
    api.merge(f"{XPL}/ds", {"spec": {"rollout": {"paused": True}}})
    reply = api.merge(
        f"{XPL}/ds",
        {
            "metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]},
            "spec": {"rollout": {"paused": False}},
        },
    )
    assert reply.code == 409 and reply.body["reason"] == "Conflict"
    put = api.put(f"{XPL}/ds", stale)
    assert put.code == 409
    assert api.get(f"{XPL}/ds").body["spec"]["rollout"]["paused"] is True


def test_failed_json_patch_test_is_422_and_changes_nothing(api: Api) -> None:
    created = api.post(XPL, placement()).body
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "not-it"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    reply = api.json_patch(f"{XPL}/ds", ops)
    assert reply.code == 422 and reply.body["kind"] == "Status"
    ops[0]["value"] = created["metadata"]["resourceVersion"]
    assert api.json_patch(f"{XPL}/ds", ops).code == 200
    assert api.get(f"{XPL}/ds").body["metadata"]["finalizers"] == ["x"]


def test_generate_name(api: Api) -> None:
    body = {"metadata": {"generateName": "probe."}, "type": "Normal", "reason": "R", "message": "m"}
    names = {
        api.post("/api/v1/namespaces/default/events", body).body["metadata"]["name"]
        for _ in range(3)
    }
    assert len(names) == 3 and all(name.startswith("probe.") for name in names)


def test_status_subresource_is_isolated_both_ways(api: Api) -> None:
    obj = placement()
    obj["status"] = {"phase": "Sneaky"}
    created = api.post(XPL, obj).body
    assert "status" not in created  # status is not set on create
    api.merge(
        f"{XPL}/ds/status", {"status": {"phase": "Rolling"}, "spec": {"rollout": {"paused": True}}}
    )
    after_status = api.get(f"{XPL}/ds").body
    assert after_status["status"]["phase"] == "Rolling"
    assert after_status["spec"]["rollout"]["paused"] is False  # spec untouched via /status
    api.merge(f"{XPL}/ds", {"status": {"phase": "Hacked"}, "spec": {"rollout": {"paused": True}}})
    after_main = api.get(f"{XPL}/ds").body
    assert after_main["status"]["phase"] == "Rolling"  # status untouched via the main resource
    assert after_main["spec"]["rollout"]["paused"] is True


def test_label_selectors_on_list(api: Api) -> None:
    for name, group in [("a", "g1"), ("b", "g1"), ("c", "g2")]:
        pod = {
            "metadata": {"name": name, "labels": {"app": "moe", "eplb.io/group": group}},
            "spec": {},
        }
        api.post("/api/v1/namespaces/default/pods", pod)

    def names(selector: str) -> list[str]:
        reply = api.get(f"/api/v1/namespaces/default/pods?labelSelector={selector}")
        return [item["metadata"]["name"] for item in reply.body["items"]]

    assert names("eplb.io/group%3Dg1") == ["a", "b"]
    assert names("app%3Dmoe,eplb.io/group!%3Dg1") == ["c"]
    assert names("eplb.io/group%20in%20(g2,g3)") == ["c"]
    assert names("!eplb.io/group") == []
    assert api.get("/api/v1/namespaces/default/pods?labelSelector=%3D%3D%3D").code == 400


def test_label_selectors_on_watch(cluster: LocalCluster, api: Api) -> None:
    seen: list[str] = []
    url = cluster.url + "/api/v1/namespaces/default/pods?watch=true&labelSelector=keep%3Dyes"

    def watch() -> None:
        with urllib.request.urlopen(url, timeout=10) as stream:
            for line in stream:
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    seen.append(event["object"]["metadata"]["name"])
                    if len(seen) == 2:
                        return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    api.post(
        "/api/v1/namespaces/default/pods", {"metadata": {"name": "p1", "labels": {"keep": "yes"}}}
    )
    api.post(
        "/api/v1/namespaces/default/pods", {"metadata": {"name": "p2", "labels": {"keep": "no"}}}
    )
    api.post(
        "/api/v1/namespaces/default/pods", {"metadata": {"name": "p3", "labels": {"keep": "yes"}}}
    )
    watcher.join(timeout=15)
    assert seen == ["p1", "p3"]


def test_crds_are_discovered(api: Api) -> None:
    groups = {g["name"] for g in api.get("/apis").body["groups"]}
    assert "eplb.io" in groups
    listing = api.get("/apis/eplb.io/v1alpha1").body
    main = next(r for r in listing["resources"] if r["name"] == "expertplacements")
    assert (
        main["kind"] == "ExpertPlacement" and main["shortNames"] == ["xpl"] and main["namespaced"]
    )
    assert any(
        r["name"] == "expertplacements/status" and not r["shortNames"] for r in listing["resources"]
    )
    assert api.get("/api/v1").body["groupVersion"] == "v1"


def test_invalid_objects_are_rejected_with_the_crds_message(api: Api) -> None:
    reply = api.post(XPL, placement(topology={"ranks": 4, "slotsPerRank": 3}))
    assert reply.code == 422 and reply.body["reason"] == "Invalid"
    assert "must be at least model.experts" in reply.body["message"]
    assert reply.body["details"]["causes"][0]["field"] == "spec"
    bad_field = api.post(XPL, placement(model={"layers": 0, "experts": 16}))
    assert (
        bad_field.code == 422
        and bad_field.body["details"]["causes"][0]["field"] == "spec.model.layers"
    )
    assert api.get(f"{XPL}").body["items"] == []
    api.post(XPL, placement())
    update = api.merge(f"{XPL}/ds", {"spec": {"model": {"groups": 3}}})
    assert update.code == 422 and "model.groups must divide model.experts" in update.body["message"]
    assert api.get(f"{XPL}/ds").body["spec"]["model"].get("groups") == 1  # defaulted, unchanged


def test_defaults_are_applied_on_create(api: Api) -> None:
    created = api.post(XPL, placement()).body
    assert created["spec"]["rollout"]["layersPerStep"] == 4
    assert created["spec"]["pods"]["rankLabel"] == "eplb.io/rank"


def test_lists_have_a_kind(api: Api) -> None:
    api.post(XPL, placement())
    listing = api.get(XPL).body
    assert listing["kind"] == "ExpertPlacementList" and listing["apiVersion"] == "eplb.io/v1alpha1"
    assert int(listing["metadata"]["resourceVersion"]) >= 1


def test_put_replaces_and_finalizers_hold_deletion(api: Api) -> None:
    current = api.post(XPL, placement()).body
    current["metadata"]["finalizers"] = ["eplb.io/rollout"]
    current["spec"]["rollout"]["paused"] = True
    replaced = api.put(f"{XPL}/ds", current)
    assert replaced.code == 200 and replaced.body["metadata"]["finalizers"] == ["eplb.io/rollout"]
    deleting = api.delete(f"{XPL}/ds").body
    assert deleting["metadata"]["deletionTimestamp"]
    assert api.get(f"{XPL}/ds").code == 200  # held by the finalizer
    api.merge(f"{XPL}/ds", {"metadata": {"finalizers": None}})
    assert api.get(f"{XPL}/ds").code == 404
