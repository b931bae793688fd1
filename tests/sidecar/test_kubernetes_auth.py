"""``--auth kubernetes`` when the API server gives no answer: a 503 with a reason, never a
401 (the caller's token may be fine) nor a 500.  Reviews against the real API server:
tests/operator/test_sidecar_auth.py."""

from __future__ import annotations

import socket
from pathlib import Path

import certifi
import pytest
from typer.testing import CliRunner

from eplb_sidecar.auth import ApiServer, AuthError, KubernetesAuth
from eplb_sidecar.cli import app


def closed_port() -> int:
    with socket.socket() as probe:  # bound, never listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_api_server_is_503_auth_unavailable(tmp_path: Path) -> None:
    own = tmp_path / "token"
    own.write_text("the-sidecars-own-token")
    url = f"https://127.0.0.1:{closed_port()}"
    auth = KubernetesAuth(ApiServer(url, Path(certifi.where()), own), "serving")
    try:
        with pytest.raises(AuthError) as refused:
            await auth.authenticate("the-operators-token")
    finally:
        await auth.close()
    assert (refused.value.status, refused.value.reason) == (503, "AuthUnavailable")
    assert url in refused.value.message and "retry" in refused.value.message


async def test_a_sidecar_without_its_own_token_is_503(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{closed_port()}"
    auth = KubernetesAuth(ApiServer(url, Path(certifi.where()), tmp_path / "absent"), "ns")
    with pytest.raises(AuthError) as refused:
        await auth.authenticate("the-operators-token")
    assert refused.value.status == 503


def test_in_cluster_needs_the_service_environment() -> None:
    with pytest.raises(ValueError, match="token-file"):
        ApiServer.in_cluster({})
    server = ApiServer.in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1",
                                   "KUBERNETES_SERVICE_PORT": "443"})  # fmt: skip
    assert server.url == "https://[fd00::1]:443"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth=secret"], "--auth must be kubernetes or token-file"),
        (["--auth=token-file"], "--auth token-file needs --token-file"),
        (["--auth=kubernetes"], "KUBERNETES_SERVICE_HOST/PORT are unset"),
    ],
)
def test_bad_auth_options_are_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    done = CliRunner().invoke(app, ["serve", f"--table-dir={tmp_path}", *args])
    assert done.exit_code == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"eplb-sidecar serve: {message}"), done.stderr
