"""Write placements where serving and GitOps read them, and read them back.

Formats:
- ``expertplacement``: an ExpertPlacement manifest and, beside it in the same multi-document
  YAML, the ConfigMap holding the mapping (``data["placement.json"]``, one layer per line so
  Git diffs show exactly the layers that changed);
- ``sglang``: ``{"physical_to_logical_map": [L][P]}`` for ``--init-expert-location``;
- ``trtllm``: TensorRT-LLM's load-balancer YAML (``num_slots``,
  ``initial_global_assignments: {layer: [P]}``, ``layer_updates_per_iter: 0``).
Output is deterministic: the same placement always gives the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from eplb_operator.errors import InvalidInputError
from eplb_operator.placement.topology import Topology

OutputFormat = Literal["expertplacement", "sglang", "trtllm"]

API_VERSION = "eplb.io/v1alpha1"
MAPPING_KEY = "placement.json"
MAPPING_SCHEMA = "eplb.io/placement-v1"


@dataclass(frozen=True)
class PlacementDocument:
    """A model's placement ``phy2log`` ``[L, P]`` and what is known about where it came from."""

    phy2log: torch.Tensor
    layer_ids: list[int]
    model: str | None = None
    num_experts: int | None = None
    num_ranks: int | None = None
    slots_per_rank: int | None = None
    num_groups: int | None = None
    num_nodes: int | None = None


def render(doc: PlacementDocument, fmt: OutputFormat, name: str) -> str:
    """The file's text in ``fmt``; ``name`` names the ExpertPlacement and its ConfigMap."""
    rows = doc.phy2log.tolist()
    if fmt == "sglang":
        body = ",\n".join("    " + json.dumps(row, separators=(",", ":")) for row in rows)
        return '{\n  "physical_to_logical_map": [\n' + body + "\n  ]\n}\n"
    if fmt == "trtllm":
        lines = [f"num_slots: {doc.phy2log.shape[1]}", "initial_global_assignments:"]
        lines += [
            f"  {layer}: [{', '.join(map(str, row))}]"
            for layer, row in zip(doc.layer_ids, rows, strict=True)
        ]
        lines.append("layer_updates_per_iter: 0")
        return "\n".join(lines) + "\n"
    return _render_expertplacement(doc, name)


def _mapping_json(doc: PlacementDocument) -> str:
    header = {
        "schema": MAPPING_SCHEMA,
        "model": doc.model,
        "layers": int(doc.phy2log.shape[0]),
        "experts": doc.num_experts,
        "ranks": doc.num_ranks,
        "slotsPerRank": doc.slots_per_rank,
        "layerIds": doc.layer_ids,
    }
    head = json.dumps(header, separators=(", ", ": "))[:-1]
    rows = ",\n".join("  " + json.dumps(row, separators=(",", ":")) for row in doc.phy2log.tolist())
    return head + ', "phy2log": [\n' + rows + "\n]}\n"


class _LiteralDumper(yaml.SafeDumper):
    pass


def _literal_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Multi-line strings (the mapping JSON) as YAML literal blocks, readable in Git."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _literal_str)


def _render_expertplacement(doc: PlacementDocument, name: str) -> str:
    if doc.num_experts is None or doc.num_ranks is None or doc.slots_per_rank is None:
        raise InvalidInputError("an ExpertPlacement needs experts, ranks and slots per rank")
    mapping_name = f"{name}-mapping"
    labels = {"app.kubernetes.io/managed-by": "eplb", "eplb.io/placement": name}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": mapping_name, "labels": labels},
        "data": {MAPPING_KEY: _mapping_json(doc)},
    }
    model: dict[str, Any] = {"layers": int(doc.phy2log.shape[0]), "experts": doc.num_experts}
    if doc.model:
        model = {"name": doc.model, **model}
    if doc.num_groups:
        model["groups"] = doc.num_groups
    placement = {
        "apiVersion": API_VERSION,
        "kind": "ExpertPlacement",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"eplb.io/placement": name}},
            "model": model,
            "topology": {
                "ranks": doc.num_ranks,
                "slotsPerRank": doc.slots_per_rank,
                "nodes": doc.num_nodes or 1,
            },
            "offline": {"configMapRef": {"name": mapping_name, "key": MAPPING_KEY}},
        },
    }
    return "---\n" + _dump(config_map) + "---\n" + _dump(placement)


def _dump(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=100)


def read_placement(path: Path) -> PlacementDocument:
    """Read any format ``render`` writes; raise InvalidInputError naming the problem."""
    try:
        text = path.read_text()
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot read ({error.strerror})") from None
    return parse_placement(text, str(path))


def parse_placement(text: str, origin: str) -> PlacementDocument:
    """Parse any format ``render`` writes (``origin`` names the source in errors)."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise InvalidInputError(f"{origin}: neither JSON nor YAML ({error})") from None
    try:
        doc = _from_documents(documents)
    except InvalidInputError as error:
        raise InvalidInputError(f"{origin}: {error}") from None
    if doc.phy2log.dim() != 2 or doc.phy2log.shape[0] == 0 or doc.phy2log.shape[1] == 0:
        raise InvalidInputError(f"{origin}: placement must be a non-empty [layers][slots] array")
    return doc


def _from_documents(documents: list[Any]) -> PlacementDocument:
    if len(documents) == 1 and isinstance(documents[0], dict):
        only = documents[0]
        if "physical_to_logical_map" in only:
            rows = _matrix(only["physical_to_logical_map"], "physical_to_logical_map")
            return PlacementDocument(rows, list(range(rows.shape[0])))
        if "schema" in only and "phy2log" in only:  # the mapping itself (a ConfigMap's value)
            return _from_mapping(only)
        if "initial_global_assignments" in only:
            assignments = only["initial_global_assignments"]
            if not isinstance(assignments, dict) or not assignments:
                raise InvalidInputError("initial_global_assignments must map layer → slots")
            layer_ids = sorted(int(k) for k in assignments)
            rows = _matrix(
                [assignments[k] for k in sorted(assignments, key=int)], "initial_global_assignments"
            )
            return PlacementDocument(rows, layer_ids)
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "ConfigMap":
            mapping = (document.get("data") or {}).get(MAPPING_KEY)
            if mapping is not None:
                return _from_mapping(json.loads(mapping))
    raise InvalidInputError(
        "not a placement: expected an ExpertPlacement ConfigMap, SGLang "
        "physical_to_logical_map, or TensorRT-LLM initial_global_assignments"
    )


def _from_mapping(mapping: dict[str, Any]) -> PlacementDocument:
    if mapping.get("schema") != MAPPING_SCHEMA:
        raise InvalidInputError(
            f"mapping schema is {mapping.get('schema')!r}, expected {MAPPING_SCHEMA}"
        )
    rows = _matrix(mapping.get("phy2log"), "phy2log")
    layer_ids = mapping.get("layerIds") or list(range(rows.shape[0]))
    if len(layer_ids) != rows.shape[0]:
        raise InvalidInputError(
            f"layerIds lists {len(layer_ids)} layers, phy2log has {rows.shape[0]}"
        )
    return PlacementDocument(
        rows,
        [int(i) for i in layer_ids],
        mapping.get("model"),
        mapping.get("experts"),
        mapping.get("ranks"),
        mapping.get("slotsPerRank"),
    )


def _matrix(values: Any, what: str) -> torch.Tensor:
    try:
        tensor = torch.tensor(values)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(
            f"{what} is not a regular [layers][slots] array ({error})"
        ) from None
    if tensor.dtype not in (torch.int64, torch.int32):
        raise InvalidInputError(f"{what} must hold integer expert ids")
    return tensor.long()


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
    """Write ``text`` to ``path`` through a temporary file: readers never see half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)
