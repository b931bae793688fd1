"""What the sidecar finds of the local tooling: fault injection through its hooks and the
reference engine behind ``eplb-sidecar engine``, both entry points that ``eplb_local``
registers (the images install neither; the sidecar never imports ``eplb_local``)."""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import eplb_sidecar.cli
from eplb_local.engine.main import run_reference_engine
from eplb_local.faults import FAULT_ENV, FAULT_FILE_ENV, FaultInjection, die_of_fault
from eplb_sidecar.hooks import ControlHooks, installed_hooks


def test_with_the_local_tooling_installed_the_sidecar_finds_both() -> None:
    assert type(installed_hooks()) is FaultInjection
    engines = {point.name: point for point in entry_points(group="eplb.engines")}
    assert engines["reference"].load() is run_reference_engine


def test_the_sidecars_own_hooks_change_nothing() -> None:
    hooks = ControlHooks()
    payload = torch.arange(8, dtype=torch.uint8)
    assert hooks.outgoing(payload) is payload
    assert hooks.on_answered("prepare") is None
    assert asyncio.run(hooks.on_call("prepare")) is None


@pytest.fixture
def fault_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fault"
    monkeypatch.setenv(FAULT_FILE_ENV, str(path))
    return path


def test_a_corrupt_send_flips_one_bit_once(fault_file: Path) -> None:
    hooks = FaultInjection()
    payload = torch.arange(8, dtype=torch.uint8)
    fault_file.write_text("corrupt-send\n")
    sent = hooks.outgoing(payload)
    assert sent[0].item() == 1 and torch.equal(sent[1:], payload[1:])
    assert torch.equal(payload, torch.arange(8, dtype=torch.uint8))  # the original is intact
    assert not fault_file.exists()
    assert hooks.outgoing(payload) is payload  # it fired once


def test_a_truncated_send_drops_the_last_half(fault_file: Path) -> None:
    fault_file.write_text("truncate-send")
    sent = FaultInjection().outgoing(torch.arange(8, dtype=torch.uint8))
    assert sent.tolist() == [0, 1, 2, 3]


def test_a_delay_holds_only_its_phase_and_stays(fault_file: Path) -> None:
    hooks = FaultInjection()
    fault_file.write_text("delay-prepare=0.3")
    started = time.monotonic()
    asyncio.run(hooks.on_call("commit"))
    assert time.monotonic() - started < 0.3
    asyncio.run(hooks.on_call("prepare"))
    assert time.monotonic() - started >= 0.3
    assert fault_file.exists()  # a delay lasts until the test clears it


def test_exit_after_answering_is_asked_only_for_its_phase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FAULT_ENV, "exit-after-prepare")
    hooks = FaultInjection()
    assert hooks.on_answered("commit") is None
    assert hooks.on_answered("prepare") is die_of_fault


def test_without_the_reference_engine_the_command_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An image: the sidecar's package metadata names no `eplb.engines` entry point.
    monkeypatch.setattr(eplb_sidecar.cli, "entry_points", lambda group: [])
    result = CliRunner().invoke(eplb_sidecar.cli.app, ["engine", "--table-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "the reference engine is not installed here" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing published
