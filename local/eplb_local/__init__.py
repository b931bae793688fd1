"""Local tooling: what runs only on a laptop, in CI or in the demo, never in an image.

A real Kubernetes control plane on this machine (``kube``) and a node agent that plays the
kubelet (``node``). No production module imports this package.
"""
