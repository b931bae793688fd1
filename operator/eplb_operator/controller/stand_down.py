"""``python -m eplb_operator.controller.stand_down``: stop the operator before it is uninstalled.

The chart's pre-delete hook runs this.  Scaling the Deployment to zero while the operator's
RBAC still exists lets each operator process exit gracefully: its cleanup handler
(:func:`eplb_operator.controller.handlers.release_finalizers`) takes the finalizer off every
ExpertPlacement it served.  Without it, ``helm uninstall`` deletes the role along with the
Deployment, the exiting operator is refused, and every placement (the CRD is kept) stays
undeletable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from kubernetes_asyncio import client

from eplb_operator.controller.kube import api_client


async def stand_down(namespace: str, deployment: str, selector: str, timeout: float) -> bool:
    """Scale ``deployment`` to zero and wait until no pod of ``selector`` is left (False
    when ``timeout`` seconds pass first)."""
    async with await api_client() as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        await apps.patch_namespaced_deployment_scale(
            deployment, namespace, {"spec": {"replicas": 0}}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = await core.list_namespaced_pod(namespace, label_selector=selector)
            if not pods.items:
                return True
            await asyncio.sleep(1.0)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--deployment", required=True)
    parser.add_argument("--selector", required=True, help="label selector of its pods")
    parser.add_argument("--timeout", type=float, default=120.0)
    options = parser.parse_args(argv)
    done = asyncio.run(
        stand_down(options.namespace, options.deployment, options.selector, options.timeout)
    )
    if not done:  # said, but the uninstall goes on: a hook must not make it impossible
        print(
            f"stand_down: {options.deployment} still has pods after {options.timeout:g} s; "
            f"ExpertPlacements may keep the eplb.io/operator finalizer",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
