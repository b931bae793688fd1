"""The peers we compare against, fetched from PyPI at run time (never committed).

vLLM's policy lives in ``vllm/distributed/eplb/policy/``; its two files import nothing of
vLLM but each other, so they load by path from the downloaded wheel without installing vLLM.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

CACHE = Path(__file__).resolve().parent / ".cache"
VLLM_VERSION = "0.33.0"
_POLICY_FILES = ("abstract.py", "default.py")


def vllm_policy(version: str = VLLM_VERSION) -> Any:
    """vLLM's ``DefaultEplbPolicy`` class from the published wheel of ``version``."""
    target = CACHE / f"vllm-{version}"
    policy_dir = target / "vllm" / "distributed" / "eplb" / "policy"
    if not all((policy_dir / name).exists() for name in _POLICY_FILES):
        wheels = CACHE / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                f"vllm=={version}",
                "-d",
                str(wheels),
            ],
            check=True,
        )
        (wheel,) = wheels.glob(f"vllm-{version}-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name in _POLICY_FILES:
                archive.extract(f"vllm/distributed/eplb/policy/{name}", target)
    package = f"_peer_vllm_{version.replace('.', '_')}"
    module = types.ModuleType(package)
    module.__path__ = [str(policy_dir)]
    sys.modules[package] = module
    for name in _POLICY_FILES:
        stem = name.removesuffix(".py")
        spec = importlib.util.spec_from_file_location(f"{package}.{stem}", policy_dir / name)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[f"{package}.{stem}"] = loaded
        spec.loader.exec_module(loaded)
    return sys.modules[f"{package}.default"].DefaultEplbPolicy
