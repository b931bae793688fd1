"""Load statistics as every reader returns them, and the window selection they share."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eplb_core.arrays import FloatArray
from eplb_core.errors import InvalidInputError

# Engines write a record per step; longer recordings are summed into consecutive groups so a
# file of 100k steps never holds 100k [L, E] windows in memory (only the sum is planned on).
MAX_WINDOWS = 256


@dataclass(frozen=True)
class LoadStats:
    """Token counts per logical expert, as ``eplb plan`` plans on them.

    ``windows`` ``[T, L, E]`` float64: T time windows (engine steps or iterations), L MoE
    layers, E logical experts.  ``layer_ids`` ``[L]``: the engine's index of each row among all
    hidden layers (DeepSeek-V3: 3..60), strictly increasing.  ``steps`` ``[T]``: the engine's
    label of each window.
    """

    windows: FloatArray
    layer_ids: list[int]
    model: str | None
    source_format: str
    hidden_layers: int | None = None  # the model's num_hidden_layers, when known
    steps: tuple[int, ...] = ()
    layer_ids_assumed: bool = False  # True: nothing said which layers these are; 0..L-1 taken

    @property
    def load(self) -> FloatArray:
        """``[L, E]``: the windows summed."""
        total: FloatArray = self.windows.sum(axis=0)
        return total

    @property
    def num_layers(self) -> int:
        return int(self.windows.shape[1])

    @property
    def num_experts(self) -> int:
        return int(self.windows.shape[2])


@dataclass(frozen=True)
class RawStats:
    """What a reader found, before layer ids are settled.

    ``windows`` ``[T, R, E]`` float64 with R rows: MoE layers, or every hidden layer when
    ``rows_are_hidden_layers`` (SGLang's recorder: dense layers count nothing).
    ``layer_ids`` ``[R]`` when the file names its layers, else None.
    """

    windows: np.ndarray
    steps: tuple[int, ...]
    source_format: str
    model: str | None = None
    layer_ids: list[int] | None = None
    hidden_layers: int | None = None
    rows_are_hidden_layers: bool = False


@dataclass(frozen=True)
class StepWindow:
    """Windows to keep, by the engine's step label: ``start <= step < stop`` (open ends)."""

    start: int | None = None
    stop: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> StepWindow:
        """``A:B``, ``A:`` or ``:B`` (half-open, as Python slices and TensorRT-LLM's ranges)."""
        if text is None:
            return cls()
        start, colon, stop = text.partition(":")
        try:
            window = cls(int(start) if start.strip() else None, int(stop) if stop.strip() else None)
        except ValueError:
            window = None
        if not colon or window is None:
            raise InvalidInputError(f"--steps {text!r} is not A:B (A:, :B also work)")
        if window.start is not None and window.stop is not None and window.stop <= window.start:
            raise InvalidInputError(f"--steps {text}: the window is empty (B must exceed A)")
        return window

    def __contains__(self, step: int) -> bool:
        return (self.start is None or step >= self.start) and (
            self.stop is None or step < self.stop
        )

    def __str__(self) -> str:
        return (
            f"{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"
        )


@dataclass
class WindowAccumulator:
    """Collects ``[L, E]`` windows in step order, keeping those in ``selection``; past
    MAX_WINDOWS, neighbouring windows are summed pairwise (labelled by their first step)."""

    selection: StepWindow = field(default_factory=StepWindow)
    _windows: list[np.ndarray] = field(default_factory=list)
    _steps: list[int] = field(default_factory=list)
    _group: int = 1
    _in_last: int = 0
    _seen: list[int] = field(default_factory=list)  # first and last step seen

    def add(self, step: int, load: np.ndarray) -> None:
        """Take window ``load`` ``[L, E]`` labelled ``step`` (kept if in the selection)."""
        self._seen = [self._seen[0] if self._seen else step, step]
        if step not in self.selection:
            return
        if self._windows and self._windows[-1].shape != load.shape:
            raise InvalidInputError(
                f"step {step} has shape {list(load.shape)}, earlier steps "
                f"{list(self._windows[-1].shape)}"
            )
        if self._windows and self._in_last < self._group:
            self._windows[-1] = self._windows[-1] + load
            self._in_last += 1
            return
        self._windows.append(np.array(load, dtype=np.float64))
        self._steps.append(step)
        self._in_last = 1
        if len(self._windows) == MAX_WINDOWS:
            pairs = zip(self._windows[::2], self._windows[1::2], strict=True)
            self._windows = [first + second for first, second in pairs]
            self._steps = self._steps[::2]
            self._group *= 2
            self._in_last = self._group

    def result(self) -> tuple[np.ndarray, tuple[int, ...]]:
        """``[T, L, E]`` windows and their step labels; InvalidInputError when none."""
        if not self._windows:
            if not self._seen:
                raise InvalidInputError("it holds no load records")
            raise InvalidInputError(
                f"no step in --steps {self.selection} (the file has steps "
                f"{self._seen[0]}..{self._seen[1]})"
            )
        return np.stack(self._windows), tuple(self._steps)


def select_windows(
    windows: np.ndarray, steps: tuple[int, ...], selection: StepWindow
) -> tuple[np.ndarray, tuple[int, ...]]:
    """``windows`` ``[T, R, E]`` labelled ``steps`` ``[T]``, restricted to ``selection``."""
    accumulator = WindowAccumulator(selection)
    for step, window in zip(steps, windows, strict=True):
        accumulator.add(step, window)
    return accumulator.result()
