"""The sidecars' control API on the real API server: the operator's projected ServiceAccount
token is accepted (TokenReview for the sidecars' audience, then a SubjectAccessReview), any
other identity is 403, a token for another audience 401, and no answer from the API server
a 503 with a reason — all with no Secret anywhere."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from eplb_local.kube.audit import requests
from eplb_local.world import World
from eplb_local.world.world import OPERATOR_ACCOUNT, SIDECAR_CONTROL_PORT

from .conftest import apply_offline, new_target, rolled_out, serves

pytestmark = pytest.mark.slow
SIDECAR_ACCOUNT = "moe-eplb-sidecar"  # the serving release's ServiceAccount (eplb-sidecar.rbac)


@pytest.fixture(scope="module")
def world(package_world: World) -> World:
    """The package's world: only the first test rolls out, and the one that takes the
    sidecars' review binding away puts it back."""
    return package_world


def info(world: World, token: str | None) -> tuple[int, dict[str, Any]]:
    """``GET /v1/info`` of rank 0's sidecar with ``token``: (status, JSON body)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(
        f"http://{world.pod(0).ip}:{SIDECAR_CONTROL_PORT}/v1/info", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(json.loads(response.read()))
    except urllib.error.HTTPError as error:
        return error.code, dict(json.loads(error.read()))


def test_the_operators_own_token_rolls_out_and_nothing_reads_a_secret(
    reused_world: World,
) -> None:
    world = reused_world
    target = new_target(world, 5)
    apply_offline(world, target)
    world.wait(lambda: rolled_out(world), 120, "the rollout")
    assert serves(world, target)
    status, body = info(world, world.sidecar_token())
    assert status == 200 and body["pod"] == world.pod(0).name
    assert world.kube.plane is not None
    secrets = [
        line
        for line in world.kube.plane.audit_log.read_text().splitlines()
        if '"resource":"secrets"' in line.replace(" ", "")
        and f":{world.namespace}:" in json.loads(line)["user"]["username"]
    ]
    assert secrets == [], secrets[:3]


def test_another_service_account_is_forbidden(world: World) -> None:
    # The serving pods' own account: a valid token for the right audience, but no right to
    # roll out placements (a tenant's workload that found the sidecar's port).
    status, body = info(world, world.service_account_token(SIDECAR_ACCOUNT))
    assert status == 403 and body["reason"] == "Forbidden", body
    assert SIDECAR_ACCOUNT in body["message"] and "expertplacements/rollout" in body["message"]


def test_a_token_for_another_audience_or_none_is_unauthorized(world: World) -> None:
    # The operator's identity, but minted for the API server (what a stolen default token is).
    other = world.service_account_token(OPERATOR_ACCOUNT, audience="https://kubernetes.default")
    for token in (other, "not-a-jwt", None):
        status, body = info(world, token)
        assert status == 401 and body["reason"] == "Unauthorized", (token, body)


def test_a_sidecar_that_may_not_ask_answers_503_until_it_may(world: World) -> None:
    api = world.kube.api_checked()
    path = (
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/"
        f"moe-{world.namespace}-eplb-sidecar-auth"
    )
    binding = api.checked("GET", path)
    api.checked("DELETE", path)
    try:
        # A fresh token each time: a positive review is cached for a few seconds.
        def refused() -> bool:
            status, body = info(world, world.sidecar_token())
            return status == 503 and body["reason"] == "AuthUnavailable"

        world.wait(refused, 60, "503 AuthUnavailable without the binding")
        _, body = info(world, world.sidecar_token())
        assert "403" in body["message"] and "tokenreviews" in body["message"], body
    finally:
        meta = {k: binding["metadata"][k] for k in ("name", "labels")}
        api.checked("POST", path.rsplit("/", 1)[0], dict(binding, metadata=meta))
    world.wait(lambda: info(world, world.sidecar_token())[0] == 200, 60, "200 with it back")


def test_a_rollouts_calls_cost_one_review_while_the_answer_is_cached(world: World) -> None:
    assert world.kube.plane is not None
    username = f"system:serviceaccount:{world.namespace}:{SIDECAR_ACCOUNT}"

    def reviews() -> int:
        assert world.kube.plane is not None
        return sum(
            1
            for access, _ in requests(world.kube.plane.audit_log, username)
            if access.resource == "tokenreviews"
        )

    token = world.sidecar_token()
    before = reviews()
    calls = 10
    for _ in range(calls):
        assert info(world, token)[0] == 200
    # The cache holds an answer 10 s; even slow calls on a loaded machine stay far below one
    # review per call (each call would otherwise cost a TokenReview and a SAR).
    assert 1 <= reviews() - before <= 3
