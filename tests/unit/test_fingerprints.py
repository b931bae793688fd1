"""Fingerprints of expert payloads: what a receiver checks before staging a peer's experts."""

from __future__ import annotations

import pytest
import torch

from eplb_sidecar import transfer
from eplb_sidecar.transfer import fingerprints


def payload(experts: int, nbytes: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (experts * nbytes,), dtype=torch.uint8, generator=generator)


def test_any_flipped_bit_changes_its_experts_fingerprint_only() -> None:
    clean = payload(3, 100)  # 100 bytes: not a multiple of 8, padded
    reference = fingerprints(clean, 3)
    for position in (0, 7, 99, 100, 255, 299):
        for bit in (0, 7):
            corrupted = clean.clone()
            corrupted[position] ^= 1 << bit
            changed = fingerprints(corrupted, 3) != reference
            assert changed.tolist() == [e == position // 100 for e in range(3)], (position, bit)


def test_truncation_and_swapped_blocks_change_the_fingerprint() -> None:
    clean = payload(2, 3 * 4096)
    reference = fingerprints(clean, 2)
    short = torch.zeros_like(clean)
    short[:15000] = clean[:15000]  # what gloo leaves in a longer buffer after a short message
    assert fingerprints(short, 2)[0] == reference[0]  # the first expert arrived whole
    assert fingerprints(short, 2)[1] != reference[1]
    swapped = clean.clone()  # two 4 KiB blocks of the first expert trade places
    swapped[0:4096], swapped[4096:8192] = clean[4096:8192].clone(), clean[0:4096].clone()
    assert fingerprints(swapped, 2)[0] != reference[0]
    # The same bytes give the same fingerprints, wherever the piece sits in the payload.
    assert fingerprints(clean[3 * 4096 :], 1)[0] == reference[1]


def test_pieces_checked_a_few_at_a_time_give_the_same_fingerprints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clean = payload(5, 24)
    whole = fingerprints(clean, 5)
    monkeypatch.setattr(transfer, "_CHUNK_BYTES", 50)  # two pieces per chunk, padded
    assert torch.equal(fingerprints(clean, 5), whole)
