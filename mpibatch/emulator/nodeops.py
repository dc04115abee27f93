"""Node operations: reboot / reimage / deallocate / start (the node's state moves as the service's does; its
tasks are requeued or ended per the option), disable / enable scheduling, node users, remote login settings,
upload batch service logs (the emulator's own logs of the node, really uploaded), extensions (from the pool's
configuration), deleting node and task files, nodes leaving a shrinking pool, and the node's endpoint
configuration (inbound NAT pools, IPv6)."""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..launchers import blobio, fileio
from ..launchers.protocol import NODE_DIRS
from ..redaction import redact_url
from . import identity, mounts, pools, schema, tasks
from .errors import BatchError, invalid_value, missing_property, not_found, now_iso
from .state import key, set_state, touch

if TYPE_CHECKING:
    from .core import Emulator

ID = r"([^/]+)"
Answer = tuple[int, Any, dict[str, str]]
TASK_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
DRAIN_LIMIT_S = 24 * 3600  # taskcompletion waits for tasks, bounded as maxWallClockTime would be
REMOTE_PORT = 50000  # the service's first NAT port; the emulator's nodes have no remote login service


def _option(body: dict[str, Any], name: str, allowed: tuple[str, ...] = TASK_OPTIONS) -> str:
    return schema.enum(body.get(name) or "requeue", name, allowed)


def _running_tasks(emu: Emulator, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with emu.store.lock:
        keys = {k for n in nodes for k in n["_running"]}
        return [emu.store.tasks[k] for k in keys if k in emu.store.tasks]


def end_tasks(emu: Emulator, nodes: list[dict[str, Any]], option: str) -> None:
    """requeue: the node's tasks go back to active; terminate: completed (TaskEnded); taskcompletion and
    retaineddata: they run to their end. Returns once none runs on these nodes (bounded)."""
    running = _running_tasks(emu, nodes)
    if option in ("requeue", "terminate"):
        for t in running:
            emu.scheduler.end_task(t, reason="requeue" if option == "requeue" else "user")
    deadline = time.monotonic() + DRAIN_LIMIT_S
    while any(n["_running"] for n in nodes) and time.monotonic() < deadline:
        time.sleep(0.1)


def drain_and_remove(emu: Emulator, pool: dict[str, Any], nodes: list[dict[str, Any]], option: str) -> None:
    """Nodes leaving a shrinking pool: their tasks per `option`, their mounts synced up, then gone."""
    end_tasks(emu, nodes, option)
    for n in nodes:
        emu.procs.end(f"node:{n['id']}")
        mounts.sync_up(emu, pool, n)  # storage I/O: never under the store's lock
    with emu.store.lock:
        for n in nodes:
            emu.store.nodes.pop(key(pool["id"], n["id"]), None)
            emu.store.gone("nodes", key(pool["id"], n["id"]))
            shutil.rmtree(n["_root"], ignore_errors=True)
        pools.count_nodes(emu, pool)
        if pool["allocationState"] == "stopping":
            pool["targetDedicatedNodes"] = pool["currentDedicatedNodes"]
        pool["allocationState"], pool["allocationStateTransitionTime"] = "steady", now_iso()
        touch(pool)
    emu.store.mark(("pools", pool))
    emu.event(f"pool {pool['id']}: {pool['currentDedicatedNodes']} nodes")


def recover(emu: Emulator) -> None:
    """After a restart (state dir): what was under way when the emulator stopped is finished - nodes that
    were leaving are gone, deallocating ones deallocated, reimaging ones `unknown` (as rebooting ones are),
    and every pool steady again."""
    with emu.store.lock:
        for k, n in list(emu.store.nodes.items()):
            if n.get("_leaving"):
                emu.store.nodes.pop(k)
                emu.store.gone("nodes", k)
                shutil.rmtree(n["_root"], ignore_errors=True)
            elif n.get("state") in ("deallocating", "reimaging"):
                set_state(n, "deallocated" if n["state"] == "deallocating" else "unknown")
                emu.store.mark(("nodes", n))
        for p in emu.store.pools.values():
            if p.get("allocationState") in ("resizing", "stopping"):
                pools.count_nodes(emu, p)
                p["allocationState"], p["allocationStateTransitionTime"] = "steady", now_iso()
                emu.store.mark(("pools", p))


# ---------------------------------------------------------------------------------------------- lifecycle
def _cycle(emu: Emulator, pool_id: str, node_id: str, body: Any, role: str, option_name: str,
           passing: str, after: str | None, wipe: bool = False) -> None:
    """reboot / reimage / deallocate: the node passes through `passing`, its tasks per the option, then it
    rejoins (start task again: `after` None) or stays in `after` (deallocated)."""
    body = schema.validate(body or {}, role, "node")
    option = _option(body, option_name)
    pool = pools.get(emu, pool_id)
    node = pools.node(emu, pool_id, node_id)
    with emu.store.lock:
        if node["state"] in ("rebooting", "reimaging", "deallocating", "leavingpool", "deallocated", "creating"):
            raise BatchError(409, "NodeNotReady" if node["state"] != "deallocated" else "NodeDeallocated",
                             f"The specified node is {node['state']}.")
        set_state(node, passing)
    emu.store.mark(("nodes", node))
    emu.event(f"node {node['id']} of pool {pool['id']}: {passing}")

    def finish() -> None:
        end_tasks(emu, [node], option)
        emu.procs.end(f"node:{node['id']}")
        mounts.sync_up(emu, pool, node)
        if wipe:  # a new OS disk: the task and job directories are gone
            for d in (*NODE_DIRS, mounts.MOUNTS_DIR):
                shutil.rmtree(Path(node["_root"]) / d, ignore_errors=True)
                (Path(node["_root"]) / d).mkdir(parents=True, exist_ok=True)
            identity.own_node_root(Path(node["_root"]), node["id"])  # the new directories are its user's again
        emu.procs.allow(f"node:{node['id']}")
        with emu.store.lock:
            node.pop("startTaskInfo", None)
            if after:
                set_state(node, after)
            else:
                node["lastBootTime"] = now_iso()
        emu.store.mark(("nodes", node))
        if not after:
            pools.join(emu, pool, node)
        else:
            emu.event(f"node {node['id']} of pool {pool['id']}: {after}")

    threading.Thread(target=finish, name=f"{passing}-{node['id']}", daemon=True).start()


def start(emu: Emulator, pool_id: str, node_id: str) -> None:
    pool = pools.get(emu, pool_id)
    node = pools.node(emu, pool_id, node_id)
    with emu.store.lock:
        if node["state"] != "deallocated":
            raise BatchError(409, "NodeNotDeallocated", "The specified node is not deallocated.")
        set_state(node, "starting")
        node["lastBootTime"] = now_iso()
    emu.store.mark(("nodes", node))
    threading.Thread(target=pools.join, args=(emu, pool, node), name=f"start-{node['id']}", daemon=True).start()


def scheduling(emu: Emulator, pool_id: str, node_id: str, body: Any, enabled: bool) -> None:
    node = pools.node(emu, pool_id, node_id)
    option = "taskcompletion"
    if not enabled:
        body = schema.validate(body or {}, "node.disablescheduling", "node")
        option = schema.enum(body.get("nodeDisableSchedulingOption") or "requeue", "nodeDisableSchedulingOption",
                             ("requeue", "terminate", "taskcompletion"))
    with emu.store.lock:
        node["schedulingState"] = "enabled" if enabled else "disabled"
        touch(node)
    emu.store.mark(("nodes", node))
    if not enabled and option != "taskcompletion":
        threading.Thread(target=end_tasks, args=(emu, [node], option), daemon=True).start()


# ---------------------------------------------------------------------------------------------- users
def add_user(emu: Emulator, pool_id: str, node_id: str, body: Any) -> None:
    body = schema.validate(body, "node.user.add", "user", required=("name",))
    node = pools.node(emu, pool_id, node_id)
    with emu.store.lock:
        users = node.setdefault("_users", {})
        if body["name"].lower() in users:
            raise BatchError(409, "NodeUserExists", "The specified node user already exists.")
        users[body["name"].lower()] = _user(body)
    emu.store.mark(("nodes", node))


def _user(body: dict[str, Any]) -> dict[str, Any]:
    """What the emulator keeps of a user: never the password or key, only that one was given."""
    return {"name": body.get("name"), "isAdmin": bool(body.get("isAdmin")), "expiryTime": body.get("expiryTime"),
            "hasPassword": bool(body.get("password")), "hasSshPublicKey": bool(body.get("sshPublicKey"))}


def update_user(emu: Emulator, pool_id: str, node_id: str, name: str, body: Any) -> None:
    body = schema.validate(body, "node.user.update", "user")
    node = pools.node(emu, pool_id, node_id)
    with emu.store.lock:
        users = node.get("_users") or {}
        if name.lower() not in users:
            raise not_found("NodeUser")
        users[name.lower()] = {**_user({"name": users[name.lower()]["name"], **body}),
                               "isAdmin": users[name.lower()]["isAdmin"]}
    emu.store.mark(("nodes", node))


def delete_user(emu: Emulator, pool_id: str, node_id: str, name: str) -> None:
    node = pools.node(emu, pool_id, node_id)
    with emu.store.lock:
        if (node.get("_users") or {}).pop(name.lower(), None) is None:
            raise not_found("NodeUser")
    emu.store.mark(("nodes", node))


def has_user(node: dict[str, Any], name: str) -> bool:
    return name.lower() in (node.get("_users") or {})


# ---------------------------------------------------------------------------------------------- read-only
def remote_login(emu: Emulator, pool_id: str, node_id: str) -> dict[str, Any]:
    node = pools.node(emu, pool_id, node_id)
    ipv6 = {"ipv6RemoteLoginIPAddress": node["ipv6Address"], "ipv6RemoteLoginPort": REMOTE_PORT + node["_index"]} \
        if node.get("ipv6Address") else {}
    return {"remoteLoginIPAddress": "127.0.0.1", "remoteLoginPort": REMOTE_PORT + node["_index"], **ipv6,
            "emulated": "mpibatch emulate: no remote login service listens here (the node is a directory tree "
                        "on this machine; use the files API)"}


# The service lists, after the pool's own extensions, the one that installs its node agent on the VM.
AGENT_EXTENSION = {"name": "batchNodeExtension", "publisher": "Microsoft.Azure.Extensions", "type": "CustomScript",
                   "typeHandlerVersion": "2.1"}


def extensions(emu: Emulator, pool_id: str, node_id: str) -> list[dict[str, Any]]:
    """The pool's virtualMachineConfiguration.extensions, then the node agent's, each reported provisioned
    (nothing is installed)."""
    pool = pools.get(emu, pool_id)
    node = pools.node(emu, pool_id, node_id)
    out = []
    for ext in [*((pool.get("virtualMachineConfiguration") or {}).get("extensions") or []), AGENT_EXTENSION]:
        out.append({"provisioningState": "Succeeded", "vmExtension": ext, "instanceView": {
            "name": ext.get("name"), "statuses": [{"code": "ProvisioningState/succeeded", "level": "0",
                                                   "displayStatus": "Provisioning succeeded",
                                                   "message": "mpibatch emulate: recorded, not installed",
                                                   "time": node.get("allocationTime")}]}})
    return out


def extension(emu: Emulator, pool_id: str, node_id: str, name: str) -> dict[str, Any]:
    found = [e for e in extensions(emu, pool_id, node_id) if (e["vmExtension"].get("name") or "") == name]
    if not found:
        raise not_found("Extension")
    return found[0]


def upload_logs(emu: Emulator, pool_id: str, node_id: str, body: Any) -> dict[str, Any]:
    """The node's logs as the emulator has them (start task stdout/stderr, and an agent log of the node's
    state written now) uploaded to `containerUrl` under a new virtual directory. As on the service, the
    answer (directory, number of files) comes at once and the upload follows: a failure is the emulator's
    log line, not the answer."""
    body = schema.validate(body, "node.uploadlogs", "upload", required=("containerUrl", "startTime"))
    node = pools.node(emu, pool_id, node_id)
    vdir = f"{pool_id}/{node['id']}/{secrets.token_hex(8)}"
    root = Path(node["_root"]) / "startup"
    sources = [(p, f"startup/{p.name}") for p in (root / "stdout.txt", root / "stderr.txt") if p.is_file()]
    with emu.store.lock:
        # the node's states and counts; never the start task's settings (they may hold secrets)
        record = {k: v for k, v in node.items() if not k.startswith("_") and k != "startTask"}
    threading.Thread(target=_upload_logs, args=(emu, body["containerUrl"], vdir, sources, record),
                     name=f"uploadlogs-{node['id']}", daemon=True).start()
    return {"virtualDirectoryName": vdir + "/", "numberOfFilesUploaded": len(sources) + 1}


def _upload_logs(emu: Emulator, url: str, vdir: str, sources: list[tuple[Path, str]],
                 record: dict[str, Any]) -> None:
    try:
        client = blobio.ContainerClient(url, timeout=60)
        with tempfile.TemporaryDirectory(prefix="mpibatch-nodelogs-") as tmp:
            agent = Path(tmp) / "agent.log"
            fileio.write_bytes(agent, json.dumps(record, indent=1).encode())
            for path, name in [*sources, (agent, "agent.log")]:
                client.upload_file(str(path), f"{vdir}/{name}")
    except (blobio.BlobError, OSError, ValueError) as e:
        emu.event(f"node logs {vdir}: upload failed: {redact_url(str(e))[:300]}")
        return
    emu.event(f"node logs {vdir}: {len(sources) + 1} files uploaded")


def delete_file(emu: Emulator, root: Path, file_path: str, recursive: bool) -> None:
    """A file (or with `recursive`, a directory) under `root`; never outside it, never through a symlink:
    every directory on the way is opened with O_NOFOLLOW relative to the one before (as the files API reads)."""
    parts = file_path.replace("\\", "/").strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise invalid_value("filePath", "a path inside the node's or task's directory")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dirfd = os.open(root, flags)
    except OSError:
        raise not_found("File") from None
    try:
        for part in parts[:-1]:
            nxt = os.open(part, flags, dir_fd=dirfd)
            os.close(dirfd)
            dirfd = nxt
        st = os.lstat(parts[-1], dir_fd=dirfd)
        if stat.S_ISDIR(st.st_mode):
            _remove_tree(dirfd, parts[-1], recursive)
        else:
            os.unlink(parts[-1], dir_fd=dirfd)  # a symlink itself is removed, never what it points to
    except (FileNotFoundError, NotADirectoryError):
        raise not_found("File") from None
    except OSError as e:
        if e.errno == errno.ENOTEMPTY:
            raise BatchError(409, "DirectoryNotEmpty", "The directory is not empty: set recursive=true.") from None
        raise not_found("File") from None  # ELOOP: a symlink on the way
    finally:
        os.close(dirfd)


def _remove_tree(dirfd: int, name: str, recursive: bool) -> None:
    if recursive:
        for _top, dirs, names, fd in os.fwalk(name, dir_fd=dirfd, topdown=False, follow_symlinks=False):
            for n in names:
                os.unlink(n, dir_fd=fd)
            for d in dirs:
                if stat.S_ISLNK(os.lstat(d, dir_fd=fd).st_mode):
                    os.unlink(d, dir_fd=fd)
                else:
                    os.rmdir(d, dir_fd=fd)
    os.rmdir(name, dir_fd=dirfd)


def _node_file_delete(emu: Emulator, q: dict[str, list[str]], p: str, n: str, f: str) -> Answer:
    node = pools.node(emu, p, n)
    delete_file(emu, Path(node["_root"]), f, (q.get("recursive") or [""])[0].lower() == "true")
    return 200, None, {}


def _task_file_delete(emu: Emulator, q: dict[str, list[str]], j: str, t: str, f: str) -> Answer:
    delete_file(emu, tasks.task_dir(emu, j, t), f, (q.get("recursive") or [""])[0].lower() == "true")
    return 200, None, {}


def routes(emu: Emulator) -> list[tuple[str, str, Callable[..., Answer]]]:
    e, body = emu, schema.parse_json
    node = f"/pools/{ID}/nodes/{ID}"

    def later(fn: Callable[[], None], status: int = 202) -> Callable[..., Answer]:
        def answer(*_: Any) -> Answer:
            fn()
            return status, None, {}
        return answer

    def cycle(passing: str, role: str, option: str, after: str | None, wipe: bool = False) -> Any:
        return lambda q, b, p, n: later(lambda: _cycle(e, p, n, body(b) if b else {}, role, option, passing, after,
                                                       wipe))()

    return [
        ("POST", f"{node}/reboot", cycle("rebooting", "node.reboot", "nodeRebootOption", None)),
        ("POST", f"{node}/reimage", cycle("reimaging", "node.reimage", "nodeReimageOption", None, True)),
        ("POST", f"{node}/deallocate", cycle("deallocating", "node.deallocate", "nodeDeallocateOption", "deallocated")),
        ("POST", f"{node}/start", lambda q, b, p, n: later(lambda: start(e, p, n))()),
        ("POST", f"{node}/disablescheduling", lambda q, b, p, n: later(
            lambda: scheduling(e, p, n, body(b) if b else {}, False), 200)()),
        ("POST", f"{node}/enablescheduling", lambda q, b, p, n: later(lambda: scheduling(e, p, n, None, True), 200)()),
        ("POST", f"{node}/users", lambda q, b, p, n: later(lambda: add_user(e, p, n, body(b)), 201)()),
        ("PUT", f"{node}/users/{ID}", lambda q, b, p, n, u: later(lambda: update_user(e, p, n, u, body(b)), 200)()),
        ("DELETE", f"{node}/users/{ID}", lambda q, b, p, n, u: later(lambda: delete_user(e, p, n, u), 200)()),
        ("GET", f"{node}/remoteloginsettings", lambda q, b, p, n: (200, remote_login(e, p, n), {})),
        ("POST", f"{node}/uploadbatchservicelogs", lambda q, b, p, n: (200, upload_logs(e, p, n, body(b)), {})),
        ("GET", f"{node}/extensions", lambda q, b, p, n: (200, {"value": extensions(e, p, n)}, {})),
        ("GET", f"{node}/extensions/{ID}", lambda q, b, p, n, x: (200, extension(e, p, n, x), {})),
        ("DELETE", f"{node}/files/(.+)", lambda q, b, p, n, f: _node_file_delete(e, q, p, n, f)),
        ("DELETE", f"/jobs/{ID}/tasks/{ID}/files/(.+)", lambda q, b, j, t, f: _task_file_delete(e, q, j, t, f)),
    ]


__all__ = ["routes", "drain_and_remove", "has_user", "missing_property"]
