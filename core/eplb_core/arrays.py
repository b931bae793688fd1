"""numpy inside, the caller's kind of array outside.

The formats and the placement policy compute on numpy arrays, so a one-shot ``eplb plan``
never imports torch (seconds of a run that computes in a tenth of one).  Callers that hold
torch tensors (the operator, the sidecar) still pass and get tensors: a function taking
``ArrayT`` answers in the kind of array it was given.  A tensor is recognised without
importing torch: only a process that already imported it can hold one.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from typing import TypeAlias

    import torch

    # What a function that only reads an array accepts: numpy or torch.
    Array: TypeAlias = npt.NDArray[Any] | torch.Tensor

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# A placement or a load as its caller holds it: a numpy array or a (CPU) torch tensor.
ArrayT = TypeVar("ArrayT", npt.NDArray[Any], "torch.Tensor")


def is_tensor(value: object) -> bool:
    """Is ``value`` a torch tensor (False whenever torch was never imported)?"""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_numpy(value: npt.ArrayLike | Array) -> npt.NDArray[Any]:
    """``value`` as a numpy array, sharing memory with a CPU tensor where it can."""
    if is_tensor(value):
        return cast("torch.Tensor", value).detach().cpu().numpy()
    return np.asarray(value)


def like(result: npt.NDArray[Any], template: ArrayT) -> ArrayT:
    """``result`` as the kind of array ``template`` is (a tensor sharing its memory, or
    itself)."""
    converted: Any = (
        sys.modules["torch"].from_numpy(np.ascontiguousarray(result))
        if is_tensor(template)
        else result
    )
    return cast("ArrayT", converted)
