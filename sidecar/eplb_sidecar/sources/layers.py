"""Engine layer ids given on the command line: ``3-60``, ``0,2,4`` or a mix (``0-2,5``)."""

from __future__ import annotations

from eplb_core.errors import InvalidInputError
from eplb_core.formats.counts import check_layer_ids


def parse_layer_ids(text: str) -> list[int]:
    """Strictly increasing engine layer ids from ``A-B`` ranges (inclusive) and single ids."""
    ids: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise InvalidInputError(
                f"layer ids {text!r}: {part.strip()!r} is neither an id nor a range A-B"
            )
        stop = int(last) if dash else int(first)
        if stop < int(first):
            raise InvalidInputError(f"layer ids {text!r}: the range {part.strip()} is empty")
        ids += range(int(first), stop + 1)
    check_layer_ids(ids, f"layer ids {text!r}")
    return ids
