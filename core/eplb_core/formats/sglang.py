"""SGLang's files: the expert-distribution recorder's dump in, ``--init-expert-location`` out.

In: ``python/sglang/srt/eplb/expert_distribution.py`` (``--expert-distribution-recorder-mode
stat``) ``torch.save``s ``{"rank": 0, "logical_count": [T, H, E] int32, "average_utilization_
rate_over_window": ...}``: one row per *hidden* layer (``num_hidden_layers``; dense layers
never count a token), T steps of its buffer.  ``--init-expert-location`` also takes
``{"logical_count": [H][E] or [T][H][E]}`` as JSON, which is read the same way.

Out: ``{"physical_to_logical_map": [H][P]}`` (``expert_location.py``'s ``init_by_mapping``,
which takes no other key).  SGLang indexes it by layer id over all H hidden layers, so dense
layers get a row too: the start-up placement, slot p holding expert p mod E.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

from eplb_core.errors import InvalidInputError
from eplb_core.formats.counts import count_array, id_array, one_line
from eplb_core.formats.document import PlacementDocument
from eplb_core.formats.loadstats import RawStats
from eplb_core.placements import start_up_placement

MAP_KEY = "physical_to_logical_map"
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, or its legacy pickle


def is_torch_file(head: bytes) -> bool:
    return head.startswith(TORCH_MAGIC)


def read_sglang(path: Path) -> RawStats:
    """The recorder's dump (a torch file) or a ``{"logical_count": ...}`` JSON."""
    with path.open("rb") as file:
        head = file.read(4)
    if is_torch_file(head):
        try:
            with warnings.catch_warnings():  # a foreign pickle's warnings are not for the user
                warnings.simplefilter("ignore")
                import torch  # only for the recorder's torch files

                document = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch.load raises many types for corrupt or foreign files
            detail = (
                "it unpickles objects other than tensors and plain data"
                if isinstance(error, pickle.UnpicklingError)
                else f"{type(error).__name__}: {one_line(error)}"
            )
            raise InvalidInputError(f"not a torch file SGLang wrote ({detail})") from None
    else:
        document = json.loads(path.read_text())
    return _from_document(document)


def _from_document(document: Any) -> RawStats:
    if not isinstance(document, dict):
        raise InvalidInputError(
            f"SGLang's dump is a dict with logical_count, this holds a {type(document).__name__}"
        )
    if "logical_count" not in document:
        if "records" in document and "last_physical_to_logical_map" in document:
            raise InvalidInputError(
                "an SGLang per-token dump: record with --expert-distribution-recorder-mode stat"
            )
        if MAP_KEY in document:
            raise InvalidInputError(
                "this is a placement (SGLang's physical_to_logical_map), not load statistics: "
                "pass it as --previous"
            )
        raise InvalidInputError("no 'logical_count' in the SGLang stats")
    counts = count_array(document["logical_count"], "logical_count", ("step", "layer", "expert"))
    if counts.ndim == 2:
        counts = counts[None]
    if counts.ndim != 3:
        raise InvalidInputError(
            f"logical_count must be [layers][experts] or [steps][layers][experts], "
            f"got {counts.ndim} dimensions"
        )
    steps = tuple(range(counts.shape[0]))
    return RawStats(
        counts, steps, "sglang", hidden_layers=counts.shape[1], rows_are_hidden_layers=True
    )


def render_map(doc: PlacementDocument) -> str:
    """``{"physical_to_logical_map": [H][P]}``, one row per hidden layer, one per line."""
    num_slots = doc.phy2log.shape[1]
    hidden = doc.hidden_layers if doc.hidden_layers is not None else doc.layer_ids[-1] + 1
    table = start_up_placement(hidden, num_slots, doc.experts_named)
    table[doc.layer_ids] = doc.phy2log
    body = ",\n".join("    " + json.dumps(row, separators=(",", ":")) for row in table.tolist())
    return '{\n  "' + MAP_KEY + '": [\n' + body + "\n  ]\n}\n"


def parse_map(document: dict[str, Any]) -> PlacementDocument:
    """SGLang's map as a placement whose rows are every hidden layer."""
    extra = sorted(set(document) - {MAP_KEY})
    if extra:
        raise InvalidInputError(
            f"SGLang's --init-expert-location map takes only {MAP_KEY}; found also {extra}"
        )
    rows = id_array(document[MAP_KEY], MAP_KEY, dims=2)
    if rows.size == 0:
        raise InvalidInputError(f"{MAP_KEY} is empty")
    return PlacementDocument(
        rows,
        list(range(rows.shape[0])),
        hidden_layers=rows.shape[0],
        rows_are_hidden_layers=True,
    )
