"""The control API's bearer token: read from a file, rotated without a restart."""

from __future__ import annotations

import os
from pathlib import Path

from eplb_sidecar.auth import TokenFile


def test_the_token_file_is_re_read_when_the_secret_rotates(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    token = TokenFile(path)
    assert token.matches(b"first") and not token.matches(b"second")
    path.write_text("second")
    os.utime(path, (1, 1))  # a new mtime, as the kubelet's atomic Secret update gives
    assert token.matches(b"second") and not token.matches(b"first")


def test_an_empty_token_file_opens_nothing(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("\n")
    assert not TokenFile(path).matches(b"")
