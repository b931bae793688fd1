"""``eplb cluster`` runs a real control plane for kubectl until it is stopped."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from eplb_local.kube.binaries import binary

REPO = Path(__file__).resolve().parents[2]


def test_eplb_cluster_serves_kubectl_until_sigterm(tmp_path: Path) -> None:
    """A second cluster beside the session's: it takes a pod network of its own."""
    script = Path(sys.executable).parent / "eplb"
    command = [str(script) if script.exists() else shutil.which("eplb") or "eplb"]
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [*command, "cluster", "--workdir", str(tmp_path / "cluster")],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "export KUBECONFIG=" not in log.read_text():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.2)
        kubeconfig = log.read_text().split("export KUBECONFIG=")[1].split()[0]
        kubectl = [str(binary("kubectl")), "--kubeconfig", kubeconfig]
        subprocess.run([*kubectl, "create", "namespace", "eplb-demo"], check=True, timeout=60,
                       capture_output=True)  # fmt: skip
        applied = subprocess.run(
            [*kubectl, "apply", "-f", str(REPO / "examples" / "sandbox.yaml")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert applied.returncode == 0, applied.stderr
        listed = subprocess.run(
            [*kubectl, "get", "xpl", "-A", "-o", "name"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert listed.stdout.strip() == "expertplacement.eplb.io/sandbox"
        version = subprocess.run(
            [*kubectl, "version", "-o", "json"], capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert '"gitVersion": "v1.37.2"' in version.stdout, version.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    output = log.read_text()
    assert server.returncode == 0, output
    assert "stopped" in output
