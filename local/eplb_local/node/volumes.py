"""A pod's volumes as directories of this machine, filled as the kubelet fills them.

``emptyDir`` (``medium: Memory`` on /dev/shm, a tmpfs), ``configMap``, ``secret``,
``downwardAPI``, ``projected`` (ServiceAccount tokens from the TokenRequest API, bound to
the pod; ConfigMaps, Secrets and downward-API items) and ``hostPath``. Ownership follows
the kubelet: emptyDirs are 0777; with ``fsGroup`` every volume's files belong to that group
(setgid directories); a projected token is 0600 and owned by the pod's user when every
container runs as the same non-root user and there is no fsGroup.
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eplb_local.kube.api import Api
from eplb_local.node.spec import ContainerConfigError, field_value

MEMORY_ROOT = Path("/dev/shm")
DEFAULT_MODE = 0o644


@dataclass
class PodVolumes:
    """Host directories of one pod's volumes; ``refresh_due`` is when tokens need renewing."""

    root: Path
    paths: dict[str, Path] = field(default_factory=dict)
    refresh_due: float = float("inf")


def memory_dir(pod_uid: str) -> Path:
    return MEMORY_ROOT / f"eplb-local-{pod_uid}"


class VolumeBuilder:
    def __init__(self, api: Api) -> None:
        self.api = api

    def build(self, pod: dict[str, Any], pod_dir: Path, owner_uid: int | None) -> PodVolumes:
        """Create and fill every volume of ``pod`` under ``pod_dir/volumes``.

        ``owner_uid``: the one user all containers run as, if they share one."""
        volumes = PodVolumes(pod_dir / "volumes")
        volumes.root.mkdir(parents=True, exist_ok=True)
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        for volume in pod["spec"].get("volumes", []):
            name = volume["name"]
            if "emptyDir" in volume:
                path = self._empty_dir(pod, volume, volumes.root, fs_group)
            elif "hostPath" in volume:
                path = self._host_path(volume["hostPath"])
            else:
                path = volumes.root / name
                due = self.fill(pod, volume, path, fs_group, owner_uid)
                volumes.refresh_due = min(volumes.refresh_due, due)
            volumes.paths[name] = path
        return volumes

    def refresh(self, pod: dict[str, Any], volumes: PodVolumes, owner_uid: int | None) -> None:
        """Re-fill the projected/ConfigMap/Secret volumes (new tokens before the old expire)."""
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        volumes.refresh_due = float("inf")
        for volume in pod["spec"].get("volumes", []):
            if any(kind in volume for kind in ("projected", "configMap", "secret", "downwardAPI")):
                path = volumes.paths[volume["name"]]
                due = self.fill(pod, volume, path, fs_group, owner_uid)
                volumes.refresh_due = min(volumes.refresh_due, due)

    def fill(
        self,
        pod: dict[str, Any],
        volume: dict[str, Any],
        path: Path,
        fs_group: int | None,
        owner_uid: int | None,
    ) -> float:
        """Write the files of one content volume into ``path``; when its tokens are due."""
        files: dict[str, tuple[bytes, int]] = {}
        due = float("inf")
        token_files: set[str] = set()
        if "configMap" in volume:
            files.update(self._object_files("ConfigMap", volume["configMap"], pod))
        elif "secret" in volume:
            source = dict(volume["secret"], name=volume["secret"]["secretName"])
            files.update(self._object_files("Secret", source, pod))
        elif "downwardAPI" in volume:
            files.update(self._downward_files(volume["downwardAPI"], pod))
        elif "projected" in volume:
            projected = volume["projected"]
            mode = projected.get("defaultMode", DEFAULT_MODE)
            for source in projected.get("sources", []):
                if "serviceAccountToken" in source:
                    request = source["serviceAccountToken"]
                    token, expires_in = self._token(pod, request)
                    files[request["path"]] = (token.encode(), mode)
                    token_files.add(request["path"])
                    due = min(due, time.time() + 0.8 * expires_in)
                elif "configMap" in source:
                    files.update(self._object_files("ConfigMap", source["configMap"], pod, mode))
                elif "secret" in source:
                    files.update(self._object_files("Secret", source["secret"], pod, mode))
                elif "downwardAPI" in source:
                    files.update(self._downward_files(source["downwardAPI"], pod, mode))
                else:
                    raise ContainerConfigError(f"projected source {sorted(source)} unsupported")
        else:
            raise ContainerConfigError(
                f"volume {volume['name']!r}: {sorted(set(volume) - {'name'})} is not supported"
            )
        self._write(path, files, fs_group, token_files, owner_uid)
        return due

    # -- kinds ---------------------------------------------------------------------------
    def _empty_dir(
        self, pod: dict[str, Any], volume: dict[str, Any], root: Path, fs_group: int | None
    ) -> Path:
        link = root / volume["name"]
        if volume["emptyDir"].get("medium") == "Memory":
            path = memory_dir(pod["metadata"]["uid"]) / volume["name"]
            path.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(path)
        else:
            path = link
            path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        if fs_group is not None:
            os.chown(path, -1, fs_group)
            path.chmod(0o2777)
        return Path(path)

    @staticmethod
    def _host_path(source: dict[str, Any]) -> Path:
        path = Path(source["path"])
        kind = source.get("type", "")
        if kind == "DirectoryOrCreate":
            path.mkdir(parents=True, exist_ok=True)
        elif kind in ("Directory", "File", "Socket", "CharDevice", "BlockDevice") and not (
            path.exists()
        ):
            raise ContainerConfigError(f"hostPath {path} does not exist")
        return path

    def _object_files(
        self, kind: str, source: dict[str, Any], pod: dict[str, Any], mode: int | None = None
    ) -> dict[str, tuple[bytes, int]]:
        namespace = pod["metadata"]["namespace"]
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        reply = self.api.get(f"/api/v1/namespaces/{namespace}/{plural}/{source['name']}")
        if reply.code == 404 and source.get("optional"):
            return {}
        if reply.code != 200:
            raise ContainerConfigError(f"{kind.lower()} {source['name']!r}: {reply.code}")
        obj = reply.body
        data: dict[str, bytes] = {}
        if kind == "ConfigMap":
            data.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        default_mode = source.get("defaultMode", mode if mode is not None else DEFAULT_MODE)
        items = source.get("items")
        if not items:
            return {key: (value, default_mode) for key, value in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise ContainerConfigError(f"{kind.lower()} {source['name']!r}: no {item['key']}")
            files[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
        return files

    @staticmethod
    def _downward_files(
        source: dict[str, Any], pod: dict[str, Any], mode: int | None = None
    ) -> dict[str, tuple[bytes, int]]:
        default_mode = source.get("defaultMode", mode if mode is not None else DEFAULT_MODE)
        files = {}
        for item in source.get("items", []):
            if "fieldRef" not in item:
                raise ContainerConfigError("downwardAPI: only fieldRef items are supported")
            path = item["fieldRef"]["fieldPath"]
            if path in ("metadata.labels", "metadata.annotations"):
                values = pod["metadata"].get(path.split(".")[1], {})
                text = "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
            else:
                text = field_value(pod, path)
            files[item["path"]] = (text.encode(), item.get("mode", default_mode))
        return files

    def _token(self, pod: dict[str, Any], request: dict[str, Any]) -> tuple[str, float]:
        """A TokenRequest for the pod's ServiceAccount, bound to the pod."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": int(request.get("expirationSeconds", 3600)),
            "boundObjectRef": {
                "apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"],
            },
        }  # fmt: skip
        if request.get("audience"):
            spec["audiences"] = [request["audience"]]
        reply = self.api.post(
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        if reply.code != 201:
            message = reply.body.get("message") if isinstance(reply.body, dict) else reply.body
            raise ContainerConfigError(f"token for serviceaccount {account}: {message}")
        status = reply.body["status"]
        expires = time.mktime(time.strptime(status["expirationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"))
        return str(status["token"]), max(60.0, expires - time.mktime(time.gmtime()))

    @staticmethod
    def _write(
        path: Path,
        files: dict[str, tuple[bytes, int]],
        fs_group: int | None,
        token_files: set[str],
        owner_uid: int | None,
    ) -> None:
        """The kubelet's atomic writer: the files go into a new ``..<time>`` directory,
        ``..data`` is switched to it with one rename, and each top-level name is a symlink
        through ``..data``; a reader sees the old set or the new one, never a mix."""
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755 if fs_group is None else 0o2755)
        if fs_group is not None:
            os.chown(path, -1, fs_group)
        version = path / f"..{time.time_ns()}"
        version.mkdir()
        for relative, (data, requested) in files.items():
            target = version / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            mode = requested
            if relative in token_files and fs_group is None and owner_uid:
                os.chown(target, owner_uid, -1)
                mode = 0o600
            elif fs_group is not None:
                os.chown(target, -1, fs_group)
                mode |= 0o040  # the group may read
            target.chmod(mode)
        version.chmod(0o755 if fs_group is None else 0o2755)
        if fs_group is not None:
            os.chown(version, -1, fs_group)
        link = path / "..data_tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(version.name)
        link.replace(path / "..data")
        names = {Path(relative).parts[0] for relative in files}
        for child in path.iterdir():
            if child.name.startswith(".."):
                if child.name not in ("..data", version.name):
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else None
            elif child.name not in names:
                child.unlink()
        for name in names:
            entry = path / name
            if not entry.is_symlink():
                entry.symlink_to(f"..data/{name}")
