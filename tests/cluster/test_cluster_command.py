"""``eplb cluster`` serves the local API to kubectl until it is stopped."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_eplb_cluster_serves_kubectl_until_sigterm(tmp_path: Path, kubectl_binary: Path) -> None:
    script = Path(sys.executable).parent / "eplb"
    command = [str(script) if script.exists() else shutil.which("eplb") or "eplb"]
    server = subprocess.Popen(
        [*command, "cluster", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        kubeconfig = tmp_path / "kubeconfig"
        deadline = time.monotonic() + 60
        while not kubeconfig.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert kubeconfig.exists(), "no kubeconfig written"
        kubectl = [str(kubectl_binary), "--kubeconfig", str(kubeconfig)]
        applied = subprocess.run(
            [*kubectl, "apply", "-f", str(REPO / "examples" / "sandbox.yaml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert applied.returncode == 0, applied.stderr
        listed = subprocess.run(
            [*kubectl, "get", "xpl", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.stdout.strip() == "expertplacement.eplb.io/sandbox"
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert "export KUBECONFIG=" in output and "stopped" in output
