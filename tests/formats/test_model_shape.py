"""``spec.model.layerIds`` and ``hiddenLayers``: the CRD (schema + CEL, as the test cluster
evaluates it) and the models reject the same shapes, with the same actionable message."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_operator.api import v1alpha1
from eplb_operator.api.validation import openapi_schema, validate
from tests.conftest import REPO

SCHEMA = openapi_schema(
    yaml.safe_load((REPO / "crds" / "expertplacements.eplb.io.yaml").read_text())
)


def placement(**model: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eplb.io/v1alpha1",
        "kind": "ExpertPlacement",
        "metadata": {"name": "m"},
        "spec": {
            "selector": {"matchLabels": {"app": "m"}},
            "model": {"experts": 16, **model},
            "topology": {"ranks": 4, "redundantExperts": 4},
            "online": {},
        },
    }


@pytest.mark.parametrize(
    "model",
    [
        {"layers": 58, "layerIds": list(range(3, 61)), "hiddenLayers": 61},
        {"layers": 3, "layerIds": [1, 3, 5], "hiddenLayers": 6},  # interleaved dense layers
        {"layers": 48},
        {"layers": 48, "hiddenLayers": 48},
    ],
)
def test_engine_layer_ids_are_accepted(model: dict[str, Any]) -> None:
    obj = placement(**model)
    assert validate(SCHEMA, obj) == []
    shape = v1alpha1.ExpertPlacement.model_validate(obj).spec.model
    assert shape.engine_layer_ids() == model.get("layerIds", list(range(model["layers"])))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"layers": 3, "layerIds": [3, 4]}, "one engine layer id per MoE layer"),
        ({"layers": 3, "layerIds": [3, 5, 4]}, "must be in increasing order"),
        ({"layers": 3, "layerIds": [3, 4, 5], "hiddenLayers": 5}, "hiddenLayers counts every"),
        ({"layers": 3, "hiddenLayers": 2}, "hiddenLayers counts every"),
    ],
)
def test_bad_layer_ids_are_rejected_with_their_message(model: dict[str, Any], message: str) -> None:
    obj = placement(**model)
    violations = validate(SCHEMA, obj)
    assert [v.field for v in violations] == ["spec.model"], violations
    assert message in violations[0].message
    with pytest.raises(pydantic.ValidationError, match=message):
        v1alpha1.ExpertPlacement.model_validate(obj)


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"layers": 2, "layerIds": [-1, 2]}, "spec.model.layerIds.0"),
        ({"layers": 1, "layerIds": [4096]}, "spec.model.layerIds.0"),
        ({"layers": 1, "hiddenLayers": 4097}, "spec.model.hiddenLayers"),
        ({"layers": 1, "layerIds": [1.5]}, "spec.model.layerIds.0"),
    ],
)
def test_layer_ids_are_bounded_integers(model: dict[str, Any], field: str) -> None:
    assert [v.field for v in validate(SCHEMA, placement(**model))] == [field]
    with pytest.raises(pydantic.ValidationError):
        v1alpha1.ExpertPlacement.model_validate(placement(**model))


def test_a_layer_id_given_twice_is_refused_as_the_api_server_does() -> None:
    """layerIds is a list of type ``set``: the server names the second copy."""
    obj = placement(layers=3, layerIds=[3, 3, 4])
    assert [(v.field, v.message) for v in validate(SCHEMA, obj)] == [
        ("spec.model.layerIds[1]", "Duplicate value: 3")
    ]
    with pytest.raises(pydantic.ValidationError, match="Duplicate value: 3"):
        v1alpha1.ExpertPlacement.model_validate(obj)


def test_the_longest_layer_list_is_checked_in_full() -> None:
    ids = list(range(1024))
    assert v1alpha1.ModelShape(layers=1024, experts=8, layer_ids=ids).layer_ids == ids
    with pytest.raises(pydantic.ValidationError, match="increasing order"):
        v1alpha1.ModelShape(layers=1024, experts=8, layer_ids=[*ids[:-2], 1023, 1022])
    with pytest.raises(pydantic.ValidationError, match="Duplicate value: 1022"):
        v1alpha1.ModelShape(layers=1024, experts=8, layer_ids=[*ids[:-1], 1022])


@settings(max_examples=40, deadline=None)
@given(
    ids=st.lists(st.integers(0, 70), max_size=6),
    layers=st.integers(1, 6),
    hidden=st.one_of(st.none(), st.integers(1, 72)),
)
def test_crd_and_models_agree_on_every_layer_list(
    ids: list[int], layers: int, hidden: int | None
) -> None:
    model: dict[str, Any] = {"layers": layers, "layerIds": ids}
    if hidden is not None:
        model["hiddenLayers"] = hidden
    accepted_by_crd = validate(SCHEMA, placement(**model)) == []
    try:
        v1alpha1.ExpertPlacement.model_validate(placement(**model))
        accepted_by_models = True
    except pydantic.ValidationError:
        accepted_by_models = False
    assert accepted_by_crd == accepted_by_models
    expected = (
        len(ids) == layers and ids == sorted(set(ids)) and (hidden is None or max(ids) < hidden)
    )
    assert accepted_by_models == expected
