"""Start one container: a private mount namespace with the pod's volumes, then exec.

Run by the node agent as ``python -m eplb_local.node.enter PLAN.json`` (as root). In order:
0. the pod's network namespace (``network.py``) is joined;
1. a new mount namespace whose mounts do not propagate back to the host, and a UTS
   namespace with the pod's hostname;
2. each volume is bind-mounted at its ``mountPath`` (read-only where asked);
3. the paths the process needs to start (the Python installation, the virtualenv, the
   project) are bound back in where a volume shadows them or where a directory above them
   is closed to the container's user (``/root`` is 0700): a tmpfs over that directory,
   and only those paths inside it;
4. with ``readOnlyRootFilesystem``, ``/`` is remounted read-only (the mounts on it stay
   writable);
5. supplementary groups, gid and uid are set (fsGroup is one of the groups);
6. ``execvpe`` of the container's argv with its environment, in its working directory.
The PID the agent started is then the container's process.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _bind(source: str, target: str, read_only: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            Path(target).touch()
    _mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _searchable(path: str, uid: int, gids: set[int]) -> bool:
    """Whether ``uid`` may traverse ``path`` (execute permission on a directory)."""
    if uid == 0:
        return True
    info = os.stat(path)
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in gids:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _closed_ancestor(path: str, uid: int, gids: set[int]) -> str | None:
    """The first directory above ``path`` that ``uid`` cannot traverse."""
    parts = Path(path).parts
    for depth in range(2, len(parts) + 1):
        ancestor = str(Path(*parts[:depth]))
        if os.path.isdir(ancestor) and not _searchable(ancestor, uid, gids):
            return ancestor
    return None


def enter(plan: dict[str, Any]) -> None:
    if plan.get("netns"):
        fd = os.open(f"/run/netns/{plan['netns']}", os.O_RDONLY)
        _check(_libc.setns(fd, CLONE_NEWNET), f"joining network namespace {plan['netns']}")
        os.close(fd)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    hostname = plan["hostname"].encode()
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    keep = plan["keep"]
    held_first = {path: os.open(path, os.O_PATH) for path in keep if os.path.exists(path)}
    # Every source is opened first: a volume mounted at /tmp must not hide another volume
    # whose directory on this machine lies under /tmp.
    mounts = sorted(plan["mounts"], key=lambda m: len(m["target"]))
    sources = [os.open(mount["source"], os.O_PATH) for mount in mounts]
    for mount, fd in zip(mounts, sources, strict=True):
        _bind(f"/proc/self/fd/{fd}", mount["target"], mount["readOnly"])
        os.close(fd)
    uid, gid, groups = int(plan["uid"]), int(plan["gid"]), [int(g) for g in plan["groups"]]
    # Re-open the kept paths through the descriptors taken before the mounts.
    _keep_from(held_first, uid, {gid, *groups})
    if plan.get("readOnlyRoot"):
        # Last: the mount points above had to be made first. Mounts on top stay writable.
        _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    os.chdir(plan.get("workingDir") or "/")
    argv, env = plan["argv"], plan["env"]
    os.execvpe(argv[0], argv, env)


def _keep_from(held: dict[str, int], uid: int, gids: set[int]) -> None:
    shadowed = []
    for path, fd in held.items():
        before = os.fstat(fd)
        try:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
                shadowed.append(path)
        except OSError:
            shadowed.append(path)
    for path in list(held):
        closed = _closed_ancestor(path, uid, gids)
        if closed is not None:
            # An open, empty directory over the closed one; only the kept paths inside.
            _mount("tmpfs", closed, "tmpfs", 0, "mode=0755")
            shadowed.extend(p for p in held if p == closed or p.startswith(closed + "/"))
    for path in sorted(set(shadowed), key=len):
        _bind(f"/proc/self/fd/{held[path]}", path, read_only=False)
    for fd in held.values():
        os.close(fd)


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    try:
        enter(plan)
    except OSError as error:
        print(f"eplb-local-node: cannot start container: {error}", file=sys.stderr)
        sys.exit(128)


if __name__ == "__main__":
    main()
