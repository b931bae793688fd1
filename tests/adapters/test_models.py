"""The adapter in one process: the model's own computation, placement-invariant, bad shapes.

A single-rank engine is the whole group; its sidecar's executor (the real one, in process)
commits placements into its table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eplb_local.engine.verify import slot_weight_errors
from eplb_sidecar.adapters.transformers.models import VOCAB, build_model
from eplb_sidecar.adapters.transformers.options import Architecture, ModelShape
from eplb_sidecar.adapters.transformers.prompts import probe_prompt, workload_batch
from eplb_sidecar.api import CommitRequest, PrepareRequest
from eplb_sidecar.contract.table import ExpertTable
from eplb_sidecar.shuffle import ShuffleExecutor
from tests.sidecar.test_executor import rebalanced

from .conftest import ARCHITECTURES, model_config, router_choices, single_rank

PROMPT = probe_prompt(24, seed=7, vocab=VOCAB)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_adapter_computes_what_the_stock_model_computes(
    architecture: Architecture, tmp_path: Path
) -> None:
    """Same router choices, same logits up to float32 summation order: the stock expert
    module adds a token's choices in expert order, the adapter in choice order."""
    config = model_config(architecture)
    engine = single_rank(config, architecture, tmp_path / "table")
    stock = build_model(ModelShape.of(architecture, config))
    batch = workload_batch(64, 1.2, 0, config.seed, 0, VOCAB)
    with router_choices(engine.model) as ours, router_choices(stock) as theirs:
        logits = engine.logits(batch)
        with torch.inference_mode():
            expected = stock(input_ids=batch, use_cache=False).logits.reshape(-1, VOCAB)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ours, theirs, strict=True))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    # The routed experts matter: without them the logits move by far more than the bound.
    for layer in range(config.layers):
        engine.table.weights["w2"][layer].zero_()
    assert float((engine.logits(batch) - expected).abs().max()) > 1e-2


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_commit_changes_slots_and_routing_but_not_one_bit_of_the_logits(
    architecture: Architecture, tmp_path: Path
) -> None:
    config = model_config(architecture, ranks=1, slots_per_rank=12)  # 4 redundant slots
    engine = single_rank(config, architecture, tmp_path / "table", slots=12)
    executor = ShuffleExecutor(ExpertTable.attach(tmp_path / "table"), "pod-0", None, None)
    before = engine.logits(PROMPT)
    for revision in (1, 2):
        new = rebalanced(config, seed=revision)
        layers = {layer: new[layer].tolist() for layer in range(config.layers)}
        executor.prepare(PrepareRequest(revision=revision, layers=layers))
        executor.commit(CommitRequest(revision=revision, layers=list(layers)))
        assert torch.equal(engine.table.routing, new)
        assert slot_weight_errors(engine.table, config.seed) == []
        assert torch.equal(engine.logits(PROMPT), before)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"top_k": 9}, "top-k 9 exceeds the 8 experts"),
        ({"top_k": 5}, "deepseek-v3: top-k 5 exceeds the 4 experts of the 2 groups"),
        ({"hidden": 72}, "hidden 72 is not a multiple of head size 16"),
        ({"dtype": "int8"}, "dtype 'int8' is not a float dtype"),
    ],
)
def test_shapes_a_model_cannot_have_are_refused(changes: dict[str, object], message: str) -> None:
    config = model_config("deepseek-v3", **changes)
    with pytest.raises(ValueError, match=message):
        ModelShape.of("deepseek-v3", config)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--implementation", "vllm"], "--implementation must be reference or transformers"),
        (["--implementation", "transformers"], "needs --model"),
        (["--implementation", "transformers", "--model", "gpt"], "--model: Input should be"),
        (["--implementation", "transformers", "--model", "mixtral", "--dispatch-block", "0"],
         "--dispatch-block: Input should be greater than or equal to 1"),
        (["--implementation", "transformers", "--model", "mixtral", "--hidden", "40"],
         "hidden 40 is not a multiple of head size 16"),
        (["--implementation", "transformers", "--model", "mixtral", "--ranks", "2"],
         "2 ranks need --dist-init"),
    ],
)  # fmt: skip
def test_the_engine_command_refuses_bad_options_in_one_line(
    flags: list[str], message: str, tmp_path: Path
) -> None:
    table_dir = tmp_path / "table"
    result = subprocess.run(
        [sys.executable, "-m", "eplb_sidecar", "engine", "--table-dir", str(table_dir), *flags],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not table_dir.exists()
