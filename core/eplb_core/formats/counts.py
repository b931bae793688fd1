"""Numbers read from engine files, checked before anything uses them.

Every reader turns what it parsed (nested JSON lists, numpy arrays, torch tensors) into
numpy arrays here, so one place decides what a usable token count or expert id is:
counts are finite, non-negative and at most 2**53 (beyond that float64 sums lose tokens);
expert ids are integers from -1 (an unused slot) up.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, TypeGuard

import numpy as np

from eplb_core.arrays import is_tensor, to_numpy
from eplb_core.errors import InvalidInputError

MAX_COUNT = 2**53


def _as_numpy(values: Any, what: str) -> np.ndarray:
    if is_tensor(values):
        if values.is_complex():
            raise InvalidInputError(f"{what} holds complex numbers")
        return to_numpy(values)
    if isinstance(values, list) and _holds_bool(values):
        # numpy would read true/false among numbers as 1/0
        raise InvalidInputError(f"{what} must hold numbers, got true/false values")
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as error:  # ragged lists, odd objects
        raise InvalidInputError(f"{what} is not a regular numeric array ({error})") from None
    return array


def is_integer(value: Any, minimum: int | None = None) -> TypeGuard[int]:
    """A JSON/YAML integer (true/false are not), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return minimum is None or value >= minimum


def _holds_bool(values: list[Any]) -> bool:
    pending = [values]
    while pending:
        for item in pending.pop():
            if isinstance(item, bool):
                return True
            if isinstance(item, list):
                pending.append(item)
    return False


def _where(index: Sequence[int], axes: Sequence[str]) -> str:
    named = [f"{axis} {int(i)}" for axis, i in zip(axes, index, strict=False)]
    return ", ".join(named) if named else "index " + str(tuple(int(i) for i in index))


def count_array(values: Any, what: str, axes: Sequence[str] = ()) -> np.ndarray:
    """``values`` as a float64 array of token counts, or InvalidInputError naming the first bad
    entry by ``axes`` (e.g. ``("window", "layer", "expert")``)."""
    array = _as_numpy(values, what)
    if array.dtype.kind not in "iuf":
        kind = "true/false values" if array.dtype.kind == "b" else f"{array.dtype} values"
        raise InvalidInputError(f"{what} must hold numbers, got {kind}")
    if array.size == 0:
        raise InvalidInputError(f"{what} is empty (shape {list(array.shape)})")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        index = np.argwhere(~np.isfinite(array))[0]
        raise InvalidInputError(f"{what} has NaN or infinity at {_where(index, axes)}")
    if (array < 0).any():
        index = np.argwhere(array < 0)[0]
        raise InvalidInputError(f"{what} has a negative count at {_where(index, axes)}")
    if (array > MAX_COUNT).any():
        index = np.argwhere(array > MAX_COUNT)[0]
        raise InvalidInputError(
            f"{what} has a count above 2**53 at {_where(index, axes)} (not a token count)"
        )
    return array.astype(np.float64)


def id_array(values: Any, what: str, dims: int, minimum: int = -1) -> np.ndarray:
    """``values`` as an int64 array of ``dims`` dimensions with entries ``>= minimum``."""
    array = _as_numpy(values, what)
    if array.dtype.kind not in "iu" or array.dtype.kind == "b":
        raise InvalidInputError(f"{what} must hold integer ids, got {array.dtype} values")
    if array.ndim != dims:
        raise InvalidInputError(
            f"{what} must have {dims} dimensions, got shape {list(array.shape)}"
        )
    if array.size and int(array.min()) < minimum:
        raise InvalidInputError(f"{what} holds {int(array.min())}, below {minimum}")
    return array.astype(np.int64)


def layer_id_list(values: Any, what: str) -> list[int]:
    """A list of engine layer ids: integers >= 0, strictly increasing."""
    if not isinstance(values, list) or not all(is_integer(v) for v in values):
        raise InvalidInputError(f"{what} must be a list of integer layer ids")
    ids = [int(v) for v in values]
    check_layer_ids(ids, what)
    return ids


def check_layer_ids(ids: Sequence[int], what: str) -> None:
    """Raise unless ``ids`` are engine layer ids: >= 0, each once, in increasing order."""
    if any(i < 0 for i in ids):
        raise InvalidInputError(f"{what} holds a negative layer id ({min(ids)})")
    for before, after in itertools.pairwise(ids):
        if after <= before:
            problem = "repeats" if after == before else "is out of order at"
            raise InvalidInputError(f"{what} {problem} layer {after}: ids must increase")


def fold_slots(slot_load: np.ndarray, phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """Token counts per logical expert from counts per physical slot.

    ``slot_load`` ``[..., L, P]`` and ``phy2log`` ``[L, P]`` (the placement in force while
    counting; -1 marks an unused slot, which must have counted nothing) give ``[..., L, E]``:
    every slot's tokens added to the expert it held.
    """
    if slot_load.shape[-2:] != phy2log.shape:
        raise InvalidInputError(
            f"counts per slot have shape {list(slot_load.shape[-2:])} but the placement in "
            f"force has {list(phy2log.shape)}"
        )
    if phy2log.size and int(phy2log.max()) >= num_experts:
        raise InvalidInputError(
            f"the placement in force names expert {int(phy2log.max())}, outside [0, {num_experts})"
        )
    unused = phy2log < 0
    if unused.any() and (slot_load[..., unused] > 0).any():
        raise InvalidInputError("an unused slot (-1 in the placement in force) counted tokens")
    # One bincount over (leading index, layer, expert) cells; -1 slots add into a spare
    # column that is dropped.
    layers, slots = phy2log.shape
    flat = np.ascontiguousarray(slot_load, dtype=np.float64).reshape(-1, layers, slots)
    column = np.where(unused, num_experts, phy2log).astype(np.int64)
    cells = (np.arange(layers)[:, None] * (num_experts + 1) + column)[None] + (
        np.arange(flat.shape[0])[:, None, None] * layers * (num_experts + 1)
    )
    sums = np.bincount(
        cells.ravel(), weights=flat.ravel(), minlength=flat.shape[0] * layers * (num_experts + 1)
    ).reshape(flat.shape[0], layers, num_experts + 1)
    return sums[..., :num_experts].reshape(*slot_load.shape[:-1], num_experts)


def one_line(error: BaseException, limit: int = 160) -> str:
    """A third-party error as one short line (some span paragraphs)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
