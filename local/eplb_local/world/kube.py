"""``LocalKube``: a started control plane, the project's CRDs, and kubectl/helm against it."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

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
            self.plane.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.plane is not None:
            self.plane.__exit__(kind, error, tb)

    def api_checked(self) -> Api:
        assert self.api is not None, "the cluster is not started"
        return self.api

    def kubectl(
        self, *args: str, timeout: float = 120, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", args, timeout, stdin)

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, timeout)

    def kubectl_checked(self, *args: str) -> str:
        done = self.kubectl(*args)
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
