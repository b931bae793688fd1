"""Write placements where serving and GitOps read them, and read them back.

Formats (each engine's own module says exactly what it reads and writes):
- ``expertplacement``: an ExpertPlacement manifest and, beside it in the same multi-document
  YAML, the ConfigMap holding the mapping (``formats.expertplacement``);
- ``sglang``: ``{"physical_to_logical_map": [H][P]}`` for ``--init-expert-location``, a row
  per hidden layer (``formats.sglang``);
- ``trtllm``: TensorRT-LLM's load-balancer YAML keyed by layer id (``formats.trtllm``);
- ``vllm``: vLLM reads statistics, not a mapping: the load the placement was planned from,
  as a ``read_stats_path`` JSONL (``formats.vllm``; written only, not a ``--previous``).
Output is deterministic: the same placement always gives the same bytes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml

from eplb_core.errors import InvalidInputError
from eplb_core.formats import sglang, trtllm, vllm
from eplb_core.formats.counts import one_line
from eplb_core.formats.document import PlacementDocument
from eplb_operator.formats import expertplacement
from eplb_operator.formats.expertplacement import MAPPING_KEY, MAPPING_SCHEMA
from eplb_operator.placement.topology import Topology

__all__ = [
    "MAPPING_KEY",
    "MAPPING_SCHEMA",
    "OutputFormat",
    "PlacementDocument",
    "parse_placement",
    "read_placement",
    "render",
    "topology_matches",
    "write_atomically",
]

OutputFormat = Literal["expertplacement", "sglang", "trtllm", "vllm"]


def render(doc: PlacementDocument, fmt: OutputFormat, name: str) -> str:
    """The file's text in ``fmt``; ``name`` names the ExpertPlacement and its ConfigMap."""
    if fmt == "sglang":
        return sglang.render_map(doc)
    if fmt == "trtllm":
        return trtllm.render_balancer(doc)
    if fmt == "vllm":
        return vllm.render_stats(doc)
    return expertplacement.render(doc, name)


def read_placement(path: Path) -> PlacementDocument:
    """Read any placement format ``render`` writes; raise InvalidInputError naming the problem."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{path}: cannot read ({one_line(error)})") from None
    return parse_placement(text, str(path))


def parse_placement(text: str, origin: str) -> PlacementDocument:
    """Parse any placement format (``origin`` names the source in errors)."""
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    if vllm.is_stats_jsonl(first_line) and len(text.splitlines()) > 1:
        raise InvalidInputError(
            f"{origin}: vLLM load statistics, not a placement (vLLM plans its own from them)"
        )
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise InvalidInputError(f"{origin}: neither JSON nor YAML ({one_line(error)})") from None
    try:
        doc = _from_documents(documents)
    except InvalidInputError as error:
        raise InvalidInputError(f"{origin}: {error}") from None
    return doc


def _from_documents(documents: list[Any]) -> PlacementDocument:
    if len(documents) == 1 and isinstance(documents[0], dict):
        only = documents[0]
        if sglang.MAP_KEY in only:
            return sglang.parse_map(only)
        if expertplacement.is_mapping(only):  # the mapping itself (a ConfigMap's value)
            return expertplacement.parse_mapping(only)
        if trtllm.is_balancer(only):
            return trtllm.parse_balancer(only)
    mapping = expertplacement.mapping_of(documents)
    if mapping is not None:
        return expertplacement.parse_mapping(mapping)
    raise InvalidInputError(
        "not a placement: expected an ExpertPlacement ConfigMap, SGLang "
        "physical_to_logical_map, or TensorRT-LLM initial_global_assignments"
    )


def document_on(
    phy2log: Any, layer_ids: list[int], model: str | None, topology: Topology, **context: Any
) -> PlacementDocument:
    """``phy2log`` ``[L, P]`` as a document that carries ``topology``'s shape (and
    ``context``: hidden_layers, windows, steps…)."""
    return PlacementDocument(
        phy2log, layer_ids, model, topology.num_experts, topology.num_ranks,
        topology.slots_per_rank, topology.num_groups, topology.num_nodes, **context,
    )  # fmt: skip


def topology_matches(doc: PlacementDocument, topology: Topology) -> None:
    """Raise InvalidInputError if ``doc`` was written for another shape than ``topology``."""
    problems = []
    if doc.num_experts is not None and doc.num_experts != topology.num_experts:
        problems.append(f"{doc.num_experts} experts, not {topology.num_experts}")
    if doc.num_ranks is not None and doc.num_ranks != topology.num_ranks:
        problems.append(f"{doc.num_ranks} ranks, not {topology.num_ranks}")
    if doc.phy2log.shape[1] != topology.num_slots:
        problems.append(f"{doc.phy2log.shape[1]} slots per layer, not {topology.num_slots}")
    if problems:
        raise InvalidInputError("previous placement has " + "; ".join(problems))


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it: readers never see half
    a file, and a failure leaves ``path`` as it was."""
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise InvalidInputError(f"cannot write {path} ({one_line(error)})") from None
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise InvalidInputError(f"cannot write {path} ({one_line(error)})") from None
