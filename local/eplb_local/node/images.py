"""Images the local node can run: each one's ENTRYPOINT, CMD and USER, as here.

The local node runs no container images: it runs a container's command as a process of
this machine, with the project installed in the current Python environment. A container
that names no ``command`` runs its image's ENTRYPOINT (and CMD when it has no ``args``), as
its image's USER unless the securityContext says otherwise, so the node must know them,
and the user's entry in the image's /etc/passwd and /etc/group (the node mounts this
machine's files with that entry added);
these are those of ``docker/*.Dockerfile`` (a test keeps the two equal). Any other image
needs an explicit ``command``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalImage:
    entrypoint: list[str]
    cmd: list[str]
    user: tuple[int, int]  # USER uid:gid
    account: str  # the name of that user and group in the image's /etc/passwd and /etc/group
    home: str = "/tmp"

    def passwd_line(self) -> str:
        uid, gid = self.user
        return f"{self.account}:x:{uid}:{gid}::{self.home}:/usr/sbin/nologin\n"

    def group_line(self) -> str:
        return f"{self.account}:x:{self.user[1]}:\n"


IMAGES: dict[str, LocalImage] = {
    "ghcr.io/eplb-k8s/eplb-operator": LocalImage(
        ["python", "-m", "eplb_operator.controller.run"],
        ["--all-namespaces"],
        (65532, 65532),
        "eplb",
    ),
    "ghcr.io/eplb-k8s/eplb-sidecar": LocalImage(
        ["eplb-sidecar"],
        ["serve", "--table-dir=/dev/shm/eplb", "--auth=kubernetes"],
        (65532, 65532),
        "eplb",
    ),
}


def repository(image: str) -> str:
    """``registry/name`` of ``registry/name:tag`` or ``registry/name@sha256:…``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return name


def local_image(image: str) -> LocalImage | None:
    return IMAGES.get(repository(image))
