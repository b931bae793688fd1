"""The CRD's CEL rules parsed once per machine (``api.cel_trees``): the trees kept on disk are
the parser's own, a process that finds them all never loads the parser, and a damaged cache
file is only a slower start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import celpy
import pytest
import yaml
from celpy.celparser import CELParser

from eplb_operator.api import cel_trees
from tests.conftest import REPO

CRD = yaml.safe_load((REPO / "crds" / "expertplacements.eplb.io.yaml").read_text())


def crd_rules(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]
        return found + [r for value in node.values() for r in crd_rules(value)]
    if isinstance(node, list):
        return [r for value in node for r in crd_rules(value)]
    return []


RULES = crd_rules(CRD)


def test_every_rule_of_the_crd_comes_back_as_the_parser_gave_it() -> None:
    assert len(RULES) >= 10
    CELParser.CEL_PARSER = cel_trees._cel_parser()
    for rule in RULES:
        tree = celpy.Environment().compile(rule)
        again = cel_trees._unpacked(cel_trees._packed(tree))
        assert again == tree
        # Positions too: celpy's error messages quote them.
        assert [(t.meta.line, t.meta.column, t.meta.end_pos) for t in again.iter_subtrees()] == [
            (t.meta.line, t.meta.column, t.meta.end_pos) for t in tree.iter_subtrees()
        ]


# A child process: validates one good and one bad ExpertPlacement, then says whether celpy's
# parser was loaded (rather than left to the stand-in).
CHILD = textwrap.dedent(
    """
    import json
    import yaml
    from celpy.celparser import CELParser
    from eplb_operator.api.validation import openapi_schema, validate
    schema = openapi_schema(yaml.safe_load(open({crd!r}).read()))
    good = {{"apiVersion": "eplb.io/v1alpha1", "kind": "ExpertPlacement",
             "metadata": {{"name": "m"}},
             "spec": {{"selector": {{"matchLabels": {{"app": "m"}}}},
                       "model": {{"layers": 3, "experts": 16, "layerIds": [3, 4, 5]}},
                       "topology": {{"ranks": 4, "redundantExperts": 4}}, "online": {{}}}}}}
    bad = yaml.safe_load(yaml.safe_dump(good))
    bad["spec"]["model"]["layerIds"] = [3, 5, 4]
    print(json.dumps([validate(schema, good) == [], [v.message for v in validate(schema, bad)],
                      type(CELParser.CEL_PARSER).__name__]))
    """
)


def child(cache: Path) -> list[object]:
    code = CHILD.format(crd=str(REPO / "crds" / "expertplacements.eplb.io.yaml"))
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    )  # fmt: skip
    result: list[object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("damage", [None, b"", b"\x00garbage", b"\xe9not marshal"])
def test_a_second_process_never_loads_the_parser_and_a_damaged_cache_costs_only_time(
    tmp_path: Path, damage: bytes | None
) -> None:
    verdict = [
        True,
        ["model.layerIds must be in increasing order: the order of the model's layers"],
    ]
    first = child(tmp_path)
    assert first == [*verdict, "Lark"]  # parsed: the parser was loaded
    files = list((tmp_path / "eplb").glob("cel-trees-*.marshal"))
    assert len(files) == 1
    if damage is not None:
        files[0].write_bytes(damage)
    second = child(tmp_path)
    assert second == [*verdict, "Lark" if damage is not None else "_ParserOnDemand"]
