"""What the ``transformers`` engine takes beyond the common engine configuration, checked.

Light on purpose (no ``transformers`` import): the launcher reads it, and the CLI rejects
bad options at once.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from eplb_sidecar.contract.layout import FLOAT_DTYPES, WeightSpec
from eplb_sidecar.engine.config import EngineConfig

Architecture = Literal["mixtral", "qwen3-moe", "deepseek-v3"]


class ModelShape(BaseModel):
    """The shape of a tiny model: ``layers`` MoE layers of ``experts`` routed experts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: Architecture
    layers: int = Field(ge=1)
    experts: int = Field(ge=2)
    hidden: int = Field(ge=16)
    intermediate: int = Field(ge=1, description="Routed expert's intermediate size I.")
    top_k: int = Field(ge=1)
    seed: int = 0
    dtype: str = "float32"

    @model_validator(mode="after")
    def _fits_the_architecture(self) -> ModelShape:
        if self.top_k > self.experts:
            raise ValueError(f"top-k {self.top_k} exceeds the {self.experts} experts")
        if self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not a float dtype of {sorted(FLOAT_DTYPES)}")
        if self.hidden % self.head_dim:
            raise ValueError(f"hidden {self.hidden} is not a multiple of head size {self.head_dim}")
        if self.architecture == "deepseek-v3":
            groups, chosen = self.expert_groups
            reachable = chosen * (self.experts // groups)
            if self.top_k > reachable:
                raise ValueError(
                    f"deepseek-v3: top-k {self.top_k} exceeds the {reachable} experts of the "
                    f"{chosen} groups a token may use ({self.experts} experts in {groups} groups)"
                )
        return self

    @classmethod
    def of(cls, architecture: Architecture, config: EngineConfig) -> ModelShape:
        """The model an engine configuration describes (layers, experts, sizes, seed)."""
        return cls(
            architecture=architecture,
            layers=config.layers,
            experts=config.experts,
            hidden=config.hidden,
            intermediate=config.intermediate,
            top_k=config.top_k,
            seed=config.seed,
            dtype=config.dtype,
        )

    @property
    def head_dim(self) -> int:
        return 16 if self.hidden < 512 else 64

    @property
    def expert_groups(self) -> tuple[int, int]:
        """DeepSeek-V3's ``(n_group, topk_group)``: the most groups (≤ 8) of ≥ 2 experts each
        (its group score is the sum of a group's top two), a token choosing half of them."""
        groups = next(g for g in (8, 4, 2, 1) if self.experts % g == 0 and self.experts // g >= 2)
        return groups, max(1, groups // 2)

    @property
    def weight_specs(self) -> tuple[WeightSpec, ...]:
        """One routed expert's tensors as the engine's table holds them: the reference
        engine's ``w13 [2I, H]`` and ``w2 [H, I]``, which are HF's fused rows too."""
        sizes = EngineConfig(hidden=self.hidden, intermediate=self.intermediate, dtype=self.dtype)
        return sizes.weight_specs()


class TransformersOptions(BaseModel):
    """Which model, how pairs are dispatched, and where the engines meet."""

    model_config = ConfigDict(extra="forbid")

    architecture: Architecture
    dispatch_block: int = Field(
        default=16, ge=1, le=1 << 16, description="(token, expert) pairs per dispatch block."
    )
    dist_init: str | None = Field(
        default=None,
        description="torch.distributed init method of the engines' group: tcp://host:port "
        "across pods, file:///path on one machine; needed for more than one rank.",
    )
    dist_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)


def check_options(
    config: EngineConfig, model: str | None, **options: object
) -> TransformersOptions:
    """The options, after checking that they and ``config`` describe a model we can build.

    Raises ValueError with one line saying what is wrong (nothing has started yet).
    """
    if model is None:
        raise ValueError("--implementation transformers needs --model (mixtral, qwen3-moe or "
                         "deepseek-v3)")  # fmt: skip
    try:
        checked = TransformersOptions.model_validate({"architecture": model, **options})
        ModelShape.of(checked.architecture, config)
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        flag = "--model" if field == "architecture" else "--" + field.replace("_", "-")
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{flag}: {message}" if field else message) from None
    if importlib.util.find_spec("transformers") is None:
        raise ValueError("the transformers engine needs the library: pip install "
                         "'eplb-k8s[transformers]'")  # fmt: skip
    if config.ranks > 1 and checked.dist_init is None:
        raise ValueError(f"{config.ranks} ranks need --dist-init (tcp://host:port or file:///path)")
    return checked
