"""Parse trees of CEL rules, kept on disk between processes, and celpy's parser on demand.

Parsing is most of what a CRD rule costs a short-lived process such as ``eplb plan``: loading
the parser compiles its lexer's regular expressions (about 60 ms), and each of the
ExpertPlacement's rules takes ~10 ms more to parse, while evaluating one takes 1–3 ms.  The
trees of the rules seen so far are kept in one file per grammar, Lark and Python version, as
plain nested tuples (``marshal``: a tenth of what unpickling Lark's own objects costs); a
rule missing from it is parsed and the file rewritten whole, then renamed into place, so a
reader never sees a partial file.  Where the file cannot be read or written, rules are parsed
as usual.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import re
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import celpy
import lark
from celpy.celparser import CELParser

from eplb_core.user_cache import user_cache_dir


def parsed(rule: str) -> lark.Tree[Any]:
    """The parse tree of ``rule``, as celpy's ``Environment.compile`` gives it."""
    trees = _trees()
    if rule not in trees:
        CELParser.CEL_PARSER = _cel_parser()
        trees[rule] = _packed(celpy.Environment().compile(rule))
        _save(trees)
    tree = _unpacked(trees[rule])
    assert isinstance(tree, lark.Tree)
    return tree


def parser_on_demand() -> None:
    """Let celpy build environments without loading its parser first (each
    ``celpy.Environment`` loads one where none is set): the parser loads on the first parse."""
    if CELParser.CEL_PARSER is None:
        CELParser.CEL_PARSER = _ParserOnDemand()  # type: ignore[assignment]


class _ParserOnDemand:
    def parse(self, text: str) -> lark.Tree[Any]:
        CELParser.CEL_PARSER = _cel_parser()
        return CELParser.CEL_PARSER.parse(text)


@lru_cache(maxsize=1)
def _cel_parser() -> lark.Lark:
    """celpy's CEL parser, from Lark's on-disk cache of the analysed grammar.

    celpy builds the parser from its grammar, a fifth of a second; Lark's cache loads it in
    a hundredth.  The options are celpy's own (``CELParser.__init__``); Lark keys the file
    by grammar and options, rebuilding on any change.  Without a writable cache directory
    it is built as celpy would.
    """
    directory = user_cache_dir()
    cache: str | bool = str(directory / f"cel-parser-lark-{lark.__version__}.cache")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = False
    return lark.Lark(
        _grammar(),
        parser="lalr",
        start="expr",
        debug=True,
        g_regex_flags=re.M,
        lexer_callbacks={"IDENT": CELParser.ambiguous_literals},
        propagate_positions=True,
        maybe_placeholders=False,
        priority="invert",
        tree_class=lark.Tree,
        cache=cache,
    )


def _grammar() -> str:
    return (Path(celpy.__file__).parent / "cel.lark").read_text()


@lru_cache(maxsize=1)
def _path() -> Path:
    grammar = hashlib.sha256(_grammar().encode()).hexdigest()[:16]
    python = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return user_cache_dir() / f"cel-trees-{grammar}-lark-{lark.__version__}-{python}.marshal"


@lru_cache(maxsize=1)
def _trees() -> dict[str, Any]:
    try:
        trees = marshal.loads(_path().read_bytes())
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    return trees if isinstance(trees, dict) else {}


def _save(trees: dict[str, Any]) -> None:
    path = _path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as scratch:
            scratch.write(marshal.dumps(trees))
        os.replace(scratch.name, path)


def _token(packed: tuple[Any, ...]) -> lark.Token:
    _, kind, value, line, column, start, end_line, end_column, end = packed
    return lark.Token(kind, value, start, line, column, end_line, end_column, end)


# A tree as tuples: a token is (0, type, value, line, column, start, end line, end column,
# end); a tree (1, its data (a token, or a name), its position or None, its children).  The
# positions are those celpy's error messages quote.
def _packed(node: lark.Tree[Any] | lark.Token) -> tuple[Any, ...]:
    if isinstance(node, lark.Token):
        return (0, str(node.type), str(node.value), node.line, node.column, node.start_pos,
                node.end_line, node.end_column, node.end_pos)  # fmt: skip
    meta = node.meta
    position = None if meta.empty else (
        meta.line, meta.column, meta.start_pos, meta.end_line, meta.end_column, meta.end_pos
    )  # fmt: skip
    data = _packed(node.data) if isinstance(node.data, lark.Token) else str(node.data)
    return (1, data, position, tuple(_packed(child) for child in node.children))


def _unpacked(packed: tuple[Any, ...]) -> lark.Tree[Any] | lark.Token:
    if packed[0] == 0:
        return _token(packed)
    _, data, position, children = packed
    tree: lark.Tree[Any] = lark.Tree(
        data if isinstance(data, str) else _token(data), [_unpacked(c) for c in children]
    )
    if position is not None:
        meta = tree.meta
        meta.line, meta.column, meta.start_pos, meta.end_line, meta.end_column, meta.end_pos = (
            position
        )
        meta.empty = False
    return tree
