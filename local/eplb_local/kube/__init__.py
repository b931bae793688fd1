"""A real Kubernetes control plane on localhost (``control_plane``), the tooling's client
(``api``), and the LeaderWorkerSet controller (``lws``).  Nothing is imported here, so the
node agent, which needs only the client, loads no more than that."""
