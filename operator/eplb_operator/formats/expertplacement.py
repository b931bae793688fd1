"""This project's own placement files: an ExpertPlacement and the ConfigMap with its mapping.

The mapping (``eplb.io/placement-v1``, the ConfigMap's ``placement.json``) is a JSON header
(``model``, ``layers``, ``experts``, ``ranks``, ``slotsPerRank``, ``layerIds``,
``hiddenLayers``) and ``phy2log`` with one layer per line, so Git diffs show exactly the
layers that changed.  ``layerIds`` names each row's engine layer (the ExpertPlacement's
``spec.model.layerIds``).  Both documents are checked against the API's models, so a file
written here is one the API server accepts.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
import yaml

from eplb_core.errors import InvalidInputError
from eplb_core.formats.counts import id_array, is_integer, layer_id_list
from eplb_core.formats.document import PlacementDocument
from eplb_operator.api import v1alpha1

MAPPING_KEY = "placement.json"
MAPPING_SCHEMA = "eplb.io/placement-v1"


def api_error(error: pydantic.ValidationError) -> InvalidInputError:
    """The first problem pydantic found, as one line naming the field."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return InvalidInputError(f"{where}: {message}" if where else message)


def model_shape(doc: PlacementDocument) -> v1alpha1.ModelShape:
    """``spec.model`` of the placement: raises InvalidInputError beyond the API's limits."""
    fields: dict[str, Any] = {
        "name": doc.model,
        "layers": int(doc.phy2log.shape[0]),
        "experts": doc.experts_named,
        "groups": doc.num_groups or 1,
        "hiddenLayers": doc.hidden_layers,
    }
    if doc.layer_ids != list(range(doc.phy2log.shape[0])):
        fields["layerIds"] = doc.layer_ids
    try:
        return v1alpha1.ModelShape.model_validate(
            {key: value for key, value in fields.items() if value is not None}
        )
    except pydantic.ValidationError as error:
        raise api_error(error) from None


def check_api_limits(doc: PlacementDocument) -> None:
    """Raise InvalidInputError when ``doc`` is beyond what an ExpertPlacement can hold (sizes,
    layer ids): the same limits for every output format."""
    model_shape(doc)
    try:
        v1alpha1.TopologySpec.model_validate(
            {
                "ranks": doc.num_ranks,
                "slotsPerRank": doc.slots_per_rank,
                "nodes": doc.num_nodes or 1,
            }
        )
    except pydantic.ValidationError as error:
        raise api_error(error) from None


def _mapping_json(doc: PlacementDocument) -> str:
    header: dict[str, Any] = {
        "schema": MAPPING_SCHEMA,
        "model": doc.model,
        "layers": int(doc.phy2log.shape[0]),
        "experts": doc.num_experts,
        "ranks": doc.num_ranks,
        "slotsPerRank": doc.slots_per_rank,
        "layerIds": doc.layer_ids,
    }
    if doc.hidden_layers is not None:
        header["hiddenLayers"] = doc.hidden_layers
    head = json.dumps(header, separators=(", ", ": "))[:-1]
    rows = ",\n".join("  " + json.dumps(row, separators=(",", ":")) for row in doc.phy2log.tolist())
    return head + ', "phy2log": [\n' + rows + "\n]}\n"


# libyaml's emitter where PyYAML has it: the pure-Python one takes a tenth of a second on a
# 61-layer mapping, more than a one-shot `eplb plan` computes.
_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _LiteralDumper(_SafeDumper):  # type: ignore[valid-type,misc]
    pass


def _literal_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Multi-line strings (the mapping JSON) as YAML literal blocks, readable in Git."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _flow_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.SequenceNode:
    """Lists of numbers (layer ids) on one line, as in the mapping."""
    flow = all(isinstance(item, int) for item in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_LiteralDumper.add_representer(str, _literal_str)
_LiteralDumper.add_representer(list, _flow_list)


def render(doc: PlacementDocument, name: str) -> str:
    """The ConfigMap and the ExpertPlacement that references it, as one YAML stream."""
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
    placement = {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"eplb.io/placement": name}},
            "model": model_shape(doc).model_dump(by_alias=True, exclude_none=True),
            "topology": {
                "ranks": doc.num_ranks,
                "slotsPerRank": doc.slots_per_rank,
                "nodes": doc.num_nodes or 1,
            },
            "offline": {"configMapRef": {"name": mapping_name, "key": MAPPING_KEY}},
        },
    }
    try:
        v1alpha1.ExpertPlacement.model_validate(placement)
    except pydantic.ValidationError as error:
        raise api_error(error) from None
    return "---\n" + _dump(config_map) + "---\n" + _dump(placement)


def _dump(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=100)


def mapping_of(documents: list[Any]) -> dict[str, Any] | None:
    """The mapping of a ConfigMap among ``documents``, parsed, or None when there is none."""
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "ConfigMap":
            data = document.get("data")
            text = data.get(MAPPING_KEY) if isinstance(data, dict) else None
            if text is not None:
                if not isinstance(text, str):
                    raise InvalidInputError(f"{MAPPING_KEY} must be a string of JSON")
                try:
                    mapping = json.loads(text)
                except ValueError as error:
                    raise InvalidInputError(f"{MAPPING_KEY} is not JSON ({error})") from None
                if not isinstance(mapping, dict):
                    raise InvalidInputError(f"{MAPPING_KEY} must be a JSON object")
                return mapping
    return None


def is_mapping(document: dict[str, Any]) -> bool:
    return "schema" in document and "phy2log" in document


def parse_mapping(mapping: dict[str, Any]) -> PlacementDocument:
    """The mapping itself (a ConfigMap's value), every field checked."""
    if mapping.get("schema") != MAPPING_SCHEMA:
        raise InvalidInputError(
            f"mapping schema is {mapping.get('schema')!r}, expected {MAPPING_SCHEMA}"
        )
    rows = id_array(mapping.get("phy2log"), "phy2log", dims=2)
    if rows.size == 0:
        raise InvalidInputError("phy2log is empty")
    numbers: dict[str, int | None] = {}
    for key in ("layers", "experts", "ranks", "slotsPerRank", "hiddenLayers"):
        value = mapping.get(key)
        if value is not None and not is_integer(value):
            raise InvalidInputError(f"mapping {key} must be an integer, got {value!r}")
        numbers[key] = value
    if numbers["layers"] is not None and numbers["layers"] != rows.shape[0]:
        raise InvalidInputError(f"layers is {numbers['layers']}, phy2log has {rows.shape[0]}")
    raw_ids = mapping.get("layerIds")
    layer_ids = (
        list(range(rows.shape[0])) if raw_ids is None else layer_id_list(raw_ids, "layerIds")
    )
    if len(layer_ids) != rows.shape[0]:
        raise InvalidInputError(
            f"layerIds lists {len(layer_ids)} layers, phy2log has {rows.shape[0]}"
        )
    model = mapping.get("model")
    return PlacementDocument(
        rows,
        layer_ids,
        model if isinstance(model, str) else None,
        numbers["experts"],
        numbers["ranks"],
        numbers["slotsPerRank"],
        hidden_layers=numbers["hiddenLayers"],
    )
