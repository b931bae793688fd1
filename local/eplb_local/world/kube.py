"""``LocalKube``: a started control plane, the project's CRDs, kubectl/helm against it, and
the LeaderWorkerSet controller once a world asks for it (``ensure_lws``)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import yaml

from eplb_local.kube import lws
from eplb_local.kube.api import Api
from eplb_local.kube.binaries import binary
from eplb_local.kube.control_plane import ControlPlane

REPOSITORY = Path(__file__).resolve().parents[3]
CRDS = REPOSITORY / "crds"


@dataclass
class LocalKube:
    """``with LocalKube(workdir) as kube:`` — everything stops again on exit."""

    workdir: Path
    plane: ControlPlane | None = None
    api: Api | None = None
    lws_installed: bool = False

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def node_root(self) -> Path:
        return self.workdir / "node"

    def __enter__(self) -> LocalKube:
        self.plane = ControlPlane(self.workdir)
        self.plane.__enter__()
        try:
            self.api = Api(self.kubeconfig)
            self.kubectl_checked("apply", "--server-side", "-f", str(CRDS))
            self.kubectl_checked(
                "wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS)
            )
            # Pods of the `default` namespace need its ServiceAccount (the controller's).
            self.wait_for(lambda: self.api_checked().get(
                "/api/v1/namespaces/default/serviceaccounts/default").code == 200, 60,
                "the default ServiceAccount")  # fmt: skip
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.api is not None:
            self.api.close()
        if self.plane is not None:
            self.plane.__exit__(kind, error, tb)

    def ensure_lws(self) -> None:
        """The LeaderWorkerSet CRD and RBAC, its controller, then its webhooks (once, when a
        world first needs them); returns once a LeaderWorkerSet passes them (they fail
        closed: until then none is admitted).  Only on demand: seconds of a cluster's start
        that most worlds would not use."""
        if self.lws_installed:
            return
        plane = self.plane
        assert plane is not None and plane.pki is not None
        config = plane.lws_config
        release = yaml.safe_dump_all([lws.crd(config), *lws.rbac(config)])
        self.kubectl_checked("apply", "--server-side", "-f", "-", stdin=release)
        crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/" + lws.CRD_NAME

        def established() -> bool:  # (kubectl wait errs on a CRD with no conditions yet)
            conditions = (self.api_checked().get(crd).body.get("status") or {}).get("conditions")
            return any(c.get("type") == "Established" and c.get("status") == "True"
                       for c in conditions or [])  # fmt: skip

        self.wait_for(established, 60, "the LeaderWorkerSet CRD")
        url = plane.start_lws()
        hooks = lws.webhooks(config, url, plane.pki.ca.cert.read_bytes())
        self.kubectl_checked("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(hooks))
        probe = lws.probe("default")
        path = "/apis/leaderworkerset.x-k8s.io/v1/namespaces/default/leaderworkersets?dryRun=All"
        self.wait_for(lambda: self.api_checked().post(path, probe).code == 201, 60,
                      "the LeaderWorkerSet webhooks")  # fmt: skip
        self.lws_installed = True

    def api_checked(self) -> Api:
        assert self.api is not None, "the cluster is not started"
        return self.api

    def kubectl(
        self, *args: str, timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", args, timeout, stdin)

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, timeout)

    def kubectl_checked(self, *args: str, stdin: str | None = None) -> str:
        done = self.kubectl(*args, stdin=stdin)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def helm_checked(self, *args: str) -> str:
        done = self.helm(*args)
        if done.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def _run(
        self, tool: str, args: tuple[str, ...], timeout: float, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary(tool)), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    @staticmethod
    def wait_for(check: object, timeout: float, what: str) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.2)
