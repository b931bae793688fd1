"""``python -m eplb_local.node --kubeconfig K --root DIR --apiserver-port P``: run the node."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from eplb_local.kube.api import Api
from eplb_local.node.agent import NodeAgent
from eplb_local.node.network import PodNetwork


def main() -> None:
    parser = argparse.ArgumentParser(prog="eplb-local-node")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--apiserver-port", type=int, required=True)
    parser.add_argument("--pod-network", type=int, required=True, help="index of its /24")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    network = PodNetwork(arguments.pod_network)
    with Api(arguments.kubeconfig) as api:
        NodeAgent(api, arguments.root, arguments.apiserver_port, network).run(stop)


if __name__ == "__main__":
    main()
