"""``python -m eplb_local.standin sglang|vllm|trtllm [the engine's flags…]``."""

from __future__ import annotations

import importlib
import logging
import sys

ENGINES = ("sglang", "vllm", "trtllm")  # modules of eplb_local.standin


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if len(sys.argv) < 2 or sys.argv[1] not in ENGINES:
        print(f"usage: python -m eplb_local.standin {{{','.join(ENGINES)}}} [flags]",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    # Only the engine asked for is imported (vLLM's plans with numba, the others need not).
    importlib.import_module(f"eplb_local.standin.{sys.argv[1]}").main(sys.argv[2:])


if __name__ == "__main__":
    main()
