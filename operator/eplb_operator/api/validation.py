"""Validate objects against a CRD the way an API server does: defaults, schema, CEL rules.

The test cluster and ``eplb`` use this to reject bad ExpertPlacements with the CRD's own
messages before anything is stored.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from eplb_operator.api.cel_trees import parsed, parser_on_demand

if TYPE_CHECKING:  # jsonschema loads only for schema checks (not CEL rules: `eplb plan`)
    from jsonschema import Draft202012Validator


@dataclass(frozen=True)
class Violation:
    """One reason an object is invalid: the field (``spec.topology.ranks``) and a message."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def openapi_schema(crd: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` (default: the storage version) of ``crd``."""
    for served in crd["spec"]["versions"]:
        if served["name"] == version or (version is None and served.get("storage")):
            schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in where fields are absent (a copy).

    As in Kubernetes, a null in a field that is not ``nullable`` is pruned first, so
    ``offline: null`` means the same as leaving ``offline`` out.
    """
    value = copy.deepcopy(value)
    _default(schema, value)
    return value


def _default(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value and value[name] is None and not child.get("nullable"):
                del value[name]
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                _default(child, value[name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default(schema["items"], item)


def validate(schema: dict[str, Any], value: Any) -> list[Violation]:
    """Every violation of ``schema`` (defaults applied first) by ``value``; empty if valid.

    CEL rules run only on a value that passed the schema, as in Kubernetes.
    """
    value = apply_defaults(schema, value)
    violations = [
        Violation(".".join(str(p) for p in error.absolute_path), error.message)
        for error in sorted(
            _validator(schema).iter_errors(value), key=lambda e: list(map(str, e.absolute_path))
        )
    ]
    _duplicates_in_sets(schema, value, "", violations)
    if violations:
        return violations
    _cel(schema, value, "", violations)
    return violations


def repeated_items(values: list[Any]) -> list[tuple[int, Any]]:
    """``(index, item)`` of every item of ``values`` equal to an earlier one: what a list of
    ``x-kubernetes-list-type: set`` may not hold."""
    seen: set[str] = set()
    repeated = []
    for index, item in enumerate(values):
        key = json.dumps(item, sort_keys=True)
        if key in seen:
            repeated.append((index, item))
        seen.add(key)
    return repeated


def duplicate_message(item: Any) -> str:
    """The API server's message for an item repeated in a ``set`` list."""
    return f"Duplicate value: {item}"


def _duplicates_in_sets(
    schema: dict[str, Any], value: Any, path: str, out: list[Violation]
) -> None:
    """Lists of ``x-kubernetes-list-type: set`` hold each item once: the API server's
    structural check (JSON schema has ``uniqueItems``, which Kubernetes forbids)."""
    if isinstance(value, list):
        if schema.get("x-kubernetes-list-type") == "set":
            for index, item in repeated_items(value):
                out.append(Violation(f"{path}[{index}]".lstrip("."), duplicate_message(item)))
        if "items" in schema:
            for index, item in enumerate(value):
                _duplicates_in_sets(schema["items"], item, f"{path}[{index}]", out)
    elif isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                _duplicates_in_sets(child, value[name], f"{path}.{name}", out)


def evaluate_rules(rules: list[dict[str, str]], value: Any) -> list[str]:
    """Messages of the CEL ``rules`` that ``value`` (bound to ``self``) fails."""
    try:
        key = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):  # not JSON data: evaluated, not remembered
        return _evaluate(rules, value)
    pairs = tuple((rule["rule"], rule["message"]) for rule in rules)
    return list(_evaluate_remembered(pairs, key))


@lru_cache(maxsize=64)
def _evaluate_remembered(rules: tuple[tuple[str, str], ...], value: str) -> tuple[str, ...]:
    """``evaluate_rules`` by value: one placement's spec.model is checked several times on its
    way out of ``eplb plan`` (its limits, its rendering, the whole ExpertPlacement), and celpy
    takes tens of milliseconds over a 61-layer model's layer ids each time."""
    return tuple(
        _evaluate(
            [{"rule": rule, "message": message} for rule, message in rules], json.loads(value)
        )
    )


def _evaluate(rules: list[dict[str, str]], value: Any) -> list[str]:
    failed = []
    for rule in rules:
        try:
            ok = bool(_program(rule["rule"]).evaluate({"self": json_to_cel(value)}))
        except Exception as error:  # a rule that cannot run is a failure, never a crash
            failed.append(f"{rule['message']} (rule error: {error})")
            continue
        if not ok:
            failed.append(rule["message"])
    return failed


def _cel(schema: dict[str, Any], value: Any, path: str, out: list[Violation]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        for message in evaluate_rules([rule], value):
            field = path + rule.get("fieldPath", "")
            out.append(Violation(field.lstrip("."), message))
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                _cel(child, value[name], f"{path}.{name}", out)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _cel(schema["items"], item, f"{path}[{index}]", out)


@lru_cache(maxsize=256)
def _program(rule: str) -> Any:
    tree = parsed(rule)
    parser_on_demand()
    return celpy.Environment().program(tree, functions=KUBERNETES_FUNCTIONS)


def _is_sorted(values: list[Any]) -> celtypes.BoolType:
    """``list.isSorted()`` of Kubernetes' CEL list library: ascending, equal neighbours allowed."""
    return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(values)))


def _max(values: list[Any]) -> Any:
    """``list.max()`` of Kubernetes' CEL list library: an error on an empty list, as there."""
    if not values:
        return CELEvalError("max called on empty list")
    return max(values)


# The functions of Kubernetes' CEL libraries that the CRD's rules use, which celpy lacks.
KUBERNETES_FUNCTIONS: dict[str, Any] = {"isSorted": _is_sorted, "max": _max}


# Compiled validators by schema identity (the schema object is kept to pin the id).
_cache: dict[int, tuple[dict[str, Any], Draft202012Validator]] = {}


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    entry = _cache.get(id(schema))
    if entry is None or entry[0] is not schema:
        from jsonschema import Draft202012Validator

        entry = (schema, Draft202012Validator(schema))
        _cache[id(schema)] = entry
    return entry[1]
