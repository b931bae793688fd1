"""The tooling's synchronous facade (``eplb_local.kube.api.Api``) over the one Kubernetes
client, against a plain HTTP server: what it sends, and every reply coming back as one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from eplb_local.kube import api as kube_api
from eplb_local.kube.api import Api, ApiError
from eplb_local.processes import free_port

seen: list[dict[str, Any]] = []


class Server(BaseHTTPRequestHandler):
    def reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen.append({"method": self.command, "path": self.path, "body": body,
                     "headers": dict(self.headers)})  # fmt: skip
        if self.path.startswith("/slow"):
            threading.Event().wait(3)
        code, payload, kind = {
            "/log": (200, b"line one\nline two\n", "text/plain"),
            "/missing": (404, b'{"kind": "Status", "message": "not found"}', "application/json"),
        }.get(self.path, (200, json.dumps({"path": self.path}).encode(), "application/json"))
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.reply()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815 (http.server's names)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Server)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    seen.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def kubeconfig(tmp_path: Path, server: str, token: str = "s3cret") -> Path:
    """A kubeconfig whose user has a ``tokenFile`` holding ``token``."""
    (tmp_path / "token").write_text(token)
    user = {"tokenFile": str(tmp_path / "token")}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))  # fmt: skip
    return path


def test_requests_carry_the_token_the_content_type_and_the_query(
    server: str, tmp_path: Path
) -> None:
    with Api(kubeconfig(tmp_path, server)) as api:
        assert api.get("/api/v1/pods", labelSelector="eplb.io/sidecar=true").body == {
            "path": "/api/v1/pods?labelSelector=eplb.io/sidecar%3Dtrue"}  # fmt: skip
        api.merge("/x", {"spec": {"paused": True}})
        api.json_patch("/x", [{"op": "remove", "path": "/a"}])
        api.delete("/x")
    get, merge, patch, delete = seen
    assert get["headers"]["authorization"] == "Bearer s3cret"
    assert get["headers"]["User-Agent"].startswith("eplb-local/")
    assert (merge["method"], merge["headers"]["Content-Type"]) == (
        "PATCH", "application/merge-patch+json")  # fmt: skip
    assert json.loads(merge["body"]) == {"spec": {"paused": True}}
    assert patch["headers"]["Content-Type"] == "application/json-patch+json"
    assert (delete["method"], delete["body"]) == ("DELETE", b"")


def test_a_token_file_ending_in_a_newline_is_sent_trimmed_as_client_go_sends_it(
    server: str, tmp_path: Path
) -> None:
    with Api(kubeconfig(tmp_path, server, token="s3cret\n")) as api:
        assert api.get("/version").code == 200
    assert seen[0]["headers"]["authorization"] == "Bearer s3cret"


def test_any_reply_comes_back_a_non_2xx_one_too_and_text_as_text(
    server: str, tmp_path: Path
) -> None:
    with Api(kubeconfig(tmp_path, server)) as api:
        missing = api.get("/missing")
        assert (missing.code, missing.body["message"]) == (404, "not found")
        assert api.get("/log").body == "line one\nline two\n"
        with pytest.raises(ApiError, match="GET /missing: 404 not found"):
            api.checked("GET", "/missing")
        # Threads share the one client.
        with ThreadPoolExecutor(8) as pool:
            paths = list(pool.map(lambda i: api.get(f"/p{i}").body["path"], range(32)))
        assert paths == [f"/p{i}" for i in range(32)]


def test_no_reply_is_an_os_error(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_api, "TIMEOUT", 0.5)
    with Api(kubeconfig(tmp_path, server)) as api, pytest.raises(TimeoutError):
        api.get("/slow")
    nobody = f"http://127.0.0.1:{free_port()}"
    with Api(kubeconfig(tmp_path, nobody)) as api, pytest.raises(OSError):
        api.get("/nobody-listens")


def test_close_stops_the_clients_thread(server: str, tmp_path: Path) -> None:
    before = threading.active_count()
    api = Api(kubeconfig(tmp_path, server))
    assert threading.active_count() == before + 1
    api.close()
    api.close()  # a second close is a no-op
    assert threading.active_count() == before
