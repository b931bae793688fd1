"""``eplb demo`` end to end: the installed command, real processes, its summary asserted.

Small sizes keep each run under a minute on two cores.  Every run checks DESIGN.md §5
itself (one placement on every pod, exact weights, identical outputs) and says so in its
summary; these tests assert the summary and the files it leaves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from eplb_local.demo.options import DemoOptions, placement_manifest
from tests.console import eplb, eplb_command

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--pods", "4", "--layers", "4", "--experts", "12", "--redundant", "4", "--duration", "10"]


def run_demo(workdir: Path, *flags: str) -> dict[str, Any]:
    result = eplb("demo", "--json", "--workdir", workdir, *SMALL, *flags, timeout=480)
    assert result.returncode == 0, result.stderr[-4000:]
    summary: dict[str, Any] = json.loads(result.stdout)
    assert summary == json.loads((workdir / "summary.json").read_text())
    return summary


def assert_rebalanced_safely(summary: dict[str, Any]) -> None:
    assert summary["ok"], summary["problems"]
    assert summary["outputs_identical"] is True
    assert summary["consistent"] is True
    assert summary["rebalances"] >= 1
    assert summary["layers_committed"] >= 1 and summary["moves"] >= 1
    assert summary["imbalance_after"] < summary["imbalance_before"] - 0.1, summary["phases"]


# One of the demo's five faults, the one whose driver is the demo's own (the operator killed
# mid-rollout, resumed by its successor).  The operator's handling of all five is asserted on
# the same World in tests/operator/test_faults.py; a demo run costs two minutes of CI's 20.
def test_demo_survives_the_operator_restarted_mid_rollout(tmp_path: Path) -> None:
    """In pods of two ranks (``--ranks-per-pod``) of a LeaderWorkerSet group
    (``--workload``): two engines and one sidecar a pod, ranks from the worker index the LWS
    controller labels each pod with, experts moving between a pod's ranks and between pods.
    (tests/operator/test_multi_rank.py runs the StatefulSet shape.)"""
    workdir = tmp_path / "demo"
    summary = run_demo(workdir, "--pods", "2", "--ranks-per-pod", "2", "--no-shift",
                       "--workload", "LeaderWorkerSet",
                       "--fault", "restart-operator-mid-rollout")  # fmt: skip
    # The group's leader moe-0 and its worker moe-0-1, as the LWS controller names them.
    pods = sorted((workdir / "cluster" / "node" / "pods").glob("eplb-demo_moe-0*"))
    assert sorted(pod.name.split("_")[1] for pod in pods) == ["moe-0", "moe-0-1"], pods
    for pod in pods:
        logs = {log.name for log in (pod / "logs").iterdir()}
        assert logs == {"engine-0.log", "engine-1.log", "eplb-sidecar.log"}, logs
    assert json.loads((workdir / "recording.json").read_text())["ranks"] == 4
    assert_rebalanced_safely(summary)
    result = summary["fault"]
    assert result["name"] == "restart-operator-mid-rollout" and result["injected"], result
    assert result["operator_restarts"] == 1
    assert summary["aborted"] == 0
    assert [r["revision"] for r in summary["rollouts"]] == ["sandbox-1"], summary["rollouts"]
    assert "resumed" in result["outcome"]


def test_bad_flags_are_one_line_and_start_nothing(tmp_path: Path) -> None:
    cases = [
        (["--pods", "3"], "must be a multiple of the ranks (3: --pods x --ranks-per-pod)"),
        (["--ranks-per-pod", "3"], "must be a multiple of the ranks (12: --pods x"),
        (["--ranks-per-pod", "0"], "--ranks-per-pod must be 1..8"),
        (["--duration", "5"], "--duration must be 10..600"),
        (["--fault", "prometheus-down", "--prometheus", "off"], "needs the real Prometheus"),
        (
            ["--workload", "LeaderWorkerSet", "--engine", "transformers", "--model", "mixtral"],
            "--workload LeaderWorkerSet runs the reference engine only",
        ),
    ]
    for flags, message in cases:
        workdir = tmp_path / "w"
        result = eplb("demo", "--workdir", workdir, *flags)
        assert result.returncode == 2, result
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (workdir / "cluster").exists()
    no_prometheus = dict(os.environ, PATH=str(Path(eplb_command()[0]).parent) + ":/usr/bin:/bin")
    no_prometheus["PATH"] = ":".join(
        d for d in no_prometheus["PATH"].split(":") if not (Path(d) / "prometheus").exists()
    )
    result = eplb("demo", "--workdir", tmp_path / "w", "--prometheus", "on", env=no_prometheus)
    assert result.returncode == 2 and "no 'prometheus' binary on PATH" in result.stderr


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line or environment contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(proc.name))
    return found


def pod_namespaces(owner: int) -> set[str]:
    """Network namespaces (eplb<subnet>-<host>) of the pods of the local cluster that
    process ``owner`` started: its subnet's claim file holds its pid.  Other clusters (the
    session's, another pytest worker's) are not counted."""
    claims, netns = Path("/run/eplb-local/subnets"), Path("/run/netns")
    subnets = {
        claim.name
        for claim in claims.glob("*")
        if claim.name.isdigit() and claim.read_text().strip() == str(owner)
    }
    if not netns.is_dir():
        return set()
    return {p.name for p in netns.iterdir() if p.name.split("-")[0][4:] in subnets}


def test_ctrl_c_stops_every_process_it_started(tmp_path: Path) -> None:
    workdir, output = tmp_path / "demo", tmp_path / "output.txt"
    with open(output, "wb") as out:
        demo = subprocess.Popen(
            [*eplb_command(), "demo", "--workdir", str(workdir), *SMALL],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 300  # two clusters of the test workers share the machine
    # Mid-run: every process is up and the placement applied (recording.json is written at
    # the end, too late now that the demo's end takes a second).
    while "applied ExpertPlacement" not in output.read_text(errors="replace"):
        assert demo.poll() is None and time.monotonic() < deadline, output.read_text()
        time.sleep(0.2)
    children = [pid for pid in processes_mentioning(str(workdir)) if pid != demo.pid]
    assert len(children) >= 4, children  # etcd, kube-apiserver, controller-manager, node, …
    pods = pod_namespaces(demo.pid)
    assert len(pods) >= 4 + 1, pods  # the serving pods and the operator's
    demo.send_signal(signal.SIGINT)
    assert demo.wait(90) == 130
    assert "interrupted: every process the demo started is stopped" in output.read_text()
    assert processes_mentioning(str(workdir)) == []
    assert not pods & {p.name for p in Path("/run/netns").iterdir()}  # and their processes


def test_the_sandbox_example_is_what_the_demo_applies() -> None:
    import yaml

    example = yaml.safe_load((REPO / "examples" / "sandbox.yaml").read_text())
    assert example == placement_manifest(DemoOptions(), prometheus_url=None)
