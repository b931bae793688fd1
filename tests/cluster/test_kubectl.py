"""The real kubectl 1.37 against the local cluster: apply, get, describe, invalid input."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.cluster.conftest import XPL, Api

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_apply_every_example_twice(kubectl, api: Api) -> None:  # type: ignore[no-untyped-def]
    kubectl("create", "namespace", "inference")
    for example in EXAMPLES:
        first = kubectl("apply", "-f", str(example))
        assert first.returncode == 0, first.stderr
        again = kubectl("apply", "-f", str(example))
        assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout + again.stderr
    names = kubectl("get", "xpl", "-A", "-o", "name")
    assert set(names.stdout.split()) == {
        "expertplacement.eplb.io/tiny-moe",
        "expertplacement.eplb.io/sandbox",
        "expertplacement.eplb.io/deepseek-v3",
    }
    mapping = kubectl(
        "get", "configmap", "tiny-moe-mapping", "-o", "jsonpath={.data.placement\\.json}"
    )
    assert '"phy2log"' in mapping.stdout


def test_get_shows_the_printer_columns(kubectl, api: Api) -> None:  # type: ignore[no-untyped-def]
    assert kubectl("apply", "-f", str(REPO / "examples" / "sandbox.yaml")).returncode == 0
    status = {
        "status": {
            "observedGeneration": 1,
            "phase": "Ready",
            "balancedness": 0.97,
            "currentRevision": "sandbox-3",
            "layersCommitted": 8,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "RolloutComplete",
                    "lastTransitionTime": "2026-11-23T00:00:00Z",
                    "observedGeneration": 1,
                }
            ],
        }
    }
    assert api.merge(f"{XPL}/sandbox/status", status).code == 200
    table = kubectl("get", "xpl")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "PHASE", "BALANCEDNESS", "REVISION", "LAYERS", "AGE"]
    assert row.split()[:6] == ["sandbox", "True", "Ready", "0.97", "sandbox-3", "8"]


def test_invalid_manifest_fails_with_the_crds_message(kubectl, api: Api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest = yaml.safe_load((REPO / "examples" / "sandbox.yaml").read_text())
    manifest["spec"]["topology"] = {"ranks": 4, "slotsPerRank": 5, "redundantExperts": 4}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = kubectl("apply", "-f", str(path))
    assert result.returncode != 0
    assert "set exactly one of topology.slotsPerRank and topology.redundantExperts" in result.stderr
    assert api.get(XPL).body["items"] == []


def test_explain_shows_the_models_descriptions(kubectl) -> None:  # type: ignore[no-untyped-def]
    result = kubectl("explain", "xpl.spec.topology")
    assert result.returncode == 0, result.stderr
    assert "EP ranks (GPUs) in one serving replica." in result.stdout
    assert "redundantExperts" in result.stdout
