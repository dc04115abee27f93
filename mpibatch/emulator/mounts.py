"""Pool `mountConfiguration` on the emulator's nodes. An Azure Blob container of the emulator's own storage
account (`azureBlobFileSystemConfiguration` naming that account, with its key or a SAS) is "mounted" as a
copy: downloaded into `$AZ_BATCH_NODE_MOUNTS_DIR/<relativeMountPath>` when the node starts, files that
changed there uploaded back every few seconds and when the node reboots, is reimaged, deallocated or
leaves (files deleted on the node stay in the container). Every other mount (NFS, CIFS, Azure Files,
another storage account, a managed identity) cannot be made on this machine: the node reports it as the
service reports a failed mount - `unusable`, with a `MountConfigurationError` in its `errors` - never a
silent success."""
from __future__ import annotations

import os
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..launchers import blobio
from ..redaction import redact_url
from . import files, identity
from .errors import invalid_body, invalid_value, missing_property

if TYPE_CHECKING:
    from .core import Emulator

MOUNTS_DIR = "fsmounts"  # AZ_BATCH_NODE_MOUNTS_DIR under the node's root, as on Linux nodes
KINDS = ("azureBlobFileSystemConfiguration", "nfsMountConfiguration", "cifsMountConfiguration",
         "azureFileShareConfiguration")
_synced: dict[str, tuple[int, int]] = {}  # node id + path -> (size, mtime_ns) last seen in storage
_lock = threading.Lock()


REQUIRED = {"azureBlobFileSystemConfiguration": ("accountName", "containerName", "relativeMountPath"),
            "nfsMountConfiguration": ("source", "relativeMountPath"),
            "cifsMountConfiguration": ("username", "source", "relativeMountPath", "password"),
            "azureFileShareConfiguration": ("accountName", "azureFileUrl", "accountKey", "relativeMountPath")}
BLOB_CREDENTIALS = ("accountKey", "sasKey", "identityReference")


def check(entries: Any) -> None:
    """A pool's mountConfiguration, before the pool is created or changed: 400 for what the service refuses."""
    if entries is None:
        return
    if not isinstance(entries, list):
        raise invalid_body("property 'mountConfiguration' must be an array")
    for i, entry in enumerate(entries):
        where = f"mountConfiguration[{i}]"
        kinds = [k for k in KINDS if isinstance(entry, dict) and entry.get(k)]
        if not isinstance(entry, dict) or len(kinds) != 1 or set(entry) - set(KINDS):
            raise invalid_value(where, "exactly one of " + ", ".join(KINDS))
        cfg = entry[kinds[0]]
        if not isinstance(cfg, dict):
            raise invalid_body(f"property '{where}.{kinds[0]}' must be an object")
        for name in REQUIRED[kinds[0]]:
            if not isinstance(cfg.get(name), str) or not cfg[name]:
                raise missing_property(f"{where}.{kinds[0]}.{name}")
        if kinds[0] == "azureBlobFileSystemConfiguration" and sum(bool(cfg.get(c)) for c in BLOB_CREDENTIALS) != 1:
            raise invalid_value(f"{where}.{kinds[0]}", "exactly one of accountKey, sasKey, identityReference")
        try:
            files.safe_join(Path("/"), cfg["relativeMountPath"])
        except files.FileError:
            raise invalid_value(f"{where}.{kinds[0]}.relativeMountPath", "a relative path without '..'") from None


class MountError(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


def node_error(e: MountError) -> dict[str, Any]:
    return {"code": "MountConfigurationError", "message": f"Failed to mount {e.path}: {e.reason}",
            "errorDetails": [{"name": "MountPath", "value": e.path}, {"name": "Reason", "value": e.reason}]}


def _container_url(emu: Emulator, cfg: dict[str, Any]) -> str:
    """The container's URL with a SAS that lets the node read, list and write it."""
    path = cfg.get("relativeMountPath") or ""
    st = emu.storage
    if cfg.get("identityReference"):
        raise MountError(path, "managed identities are not emulated")
    if st is None or (cfg.get("accountName") or "") != st.account:
        raise MountError(path, f"storage account {cfg.get('accountName')!r} cannot be reached from the emulator "
                         "(only its own storage account can be mounted)")
    if cfg.get("sasKey"):
        return f"{st.blob_endpoint}/{cfg.get('containerName')}?{cfg['sasKey'].lstrip('?')}"
    if cfg.get("accountKey") != st.key:
        raise MountError(path, "the account key does not match the storage account (authentication failed)")
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(st.account, cfg.get("containerName") or "", account_key=st.key,
                                 permission=ContainerSasPermissions(read=True, list=True, write=True, create=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(days=7))
    return f"{st.blob_endpoint}/{cfg.get('containerName')}?{sas}"


def _blob_mounts(emu: Emulator, pool: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(blob configuration, container URL) of each mount; MountError for any mount this machine cannot make."""
    out = []
    for entry in pool.get("mountConfiguration") or []:
        kind = next((k for k in KINDS if entry.get(k)), None)
        cfg = entry.get(kind) if kind else {}
        path = (cfg or {}).get("relativeMountPath") or ""
        if kind is None:
            raise MountError(path, "a mount configuration needs one of " + ", ".join(KINDS))
        if kind != "azureBlobFileSystemConfiguration":
            raise MountError(path, f"{kind}: {cfg.get('source') or cfg.get('azureFileUrl') or 'the share'} cannot "
                             "be mounted by the emulator (no network file systems offline)")
        out.append((cfg, _container_url(emu, cfg)))
    return out


def _dest(node: dict[str, Any], cfg: dict[str, Any]) -> Path:
    return files.safe_join(Path(node["_root"]) / MOUNTS_DIR, cfg.get("relativeMountPath") or "")


def mount(emu: Emulator, pool: dict[str, Any], node: dict[str, Any]) -> dict[str, Any] | None:
    """Make the pool's mounts on the node; None when all are there, else the node's error."""
    try:
        for cfg, url in _blob_mounts(emu, pool):
            dest = _dest(node, cfg)
            dest.mkdir(parents=True, exist_ok=True)
            try:
                files.download(files.resolve([{"storageContainerUrl": url}], None), dest)
            except files.FileError as e:
                raise MountError(cfg.get("relativeMountPath") or "", redact_url(e.message)) from None
            identity.own_tree(Path(node["_root"]) / MOUNTS_DIR, node["id"])  # the node's tasks write there
            with _lock:
                _synced.update({f"{node['id']}:{p}": s for p, s in _scan(dest).items()})
    except files.FileError as e:
        return node_error(MountError("", e.message))
    except MountError as e:
        return node_error(e)
    return None


def _scan(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime) of the regular files under root (symlinks are neither followed nor synced)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


def sync_up(emu: Emulator, pool: dict[str, Any], node: dict[str, Any]) -> int:
    """Upload the files that changed under the node's blob mounts since they were last seen; returns how
    many. Errors are logged as node events, never raised (a sync runs in the background)."""
    if not pool.get("mountConfiguration") or node.get("state") == "unusable":
        return 0
    count = 0
    try:
        mounts = _blob_mounts(emu, pool)
    except MountError:
        return 0
    for cfg, url in mounts:
        dest = _dest(node, cfg)
        client = blobio.ContainerClient(url, timeout=60)
        for path, seen in _scan(dest).items():
            k = f"{node['id']}:{path}"
            with _lock:
                if _synced.get(k) == seen:
                    continue
            try:
                client.upload_file(path, Path(path).relative_to(dest).as_posix())
            except (blobio.BlobError, OSError) as e:
                emu.event(f"node {node['id']}: mount {cfg.get('relativeMountPath')}: upload failed: "
                          f"{redact_url(str(e))}")
                continue
            with _lock:
                _synced[k] = seen
            count += 1
    return count


def tick(emu: Emulator) -> None:
    """Every few seconds (ticker.py): sync every node's blob mounts up."""
    with emu.store.lock:
        work = [(p, n) for p in emu.store.pools.values() if p.get("mountConfiguration")
                for n in emu.store.pool_nodes(p["id"]) if n.get("state") in ("idle", "running")]
    for p, n in work:
        sync_up(emu, p, n)
