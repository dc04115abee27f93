#!/usr/bin/env python3
"""mpibatch checkpoints (docs/checkpoints.md): saved by the tracker while the program runs, restored on every
new attempt before the program starts (``python3 checkpoint.py restore ...``, one process per node).

A generation is one instance's checkpoint files at one moment, under the names of launchers/protocol.py:
the files first, then the manifest. It counts only when complete: every file unchanged for a whole interval
before it was copied, unchanged while it was copied, and its manifest written last. With ``from: all`` a
generation counts only when every instance has its manifest for that number. A checkpoint that was being
written when the node died has no manifest and is never restored.

The store is the job's container (a task submitted to Batch: BlobStore, through the checkpoint SAS of
MPIBATCH_CHECKPOINT_URL), or a directory that stands in for it (rehearsals: DirStore): the same names, and
the same rules above either. Standard library only: it runs on the nodes beside track.py.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Protocol

try:  # as the package mpibatch.launchers (client side, tests)
    from . import blobdownload, fileio, protocol
    from .blobio import BlobError, BlobInfo, ContainerClient
    from .outputnames import instance_output_prefix, match_outputs
except ImportError:  # as a script on the node: the modules are shipped beside it
    import blobdownload  # type: ignore[no-redef]
    import fileio  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]
    from blobio import BlobError, BlobInfo, ContainerClient  # type: ignore[no-redef]
    from outputnames import instance_output_prefix, match_outputs  # type: ignore[no-redef]

Manifest = protocol.CheckpointManifest
Signature = tuple[tuple[str, int, int], ...]  # (path, size, mtime_ns) of every matching file, sorted
SUFFIX = protocol.CHECKPOINT_MANIFEST_SUFFIX
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


# ---------------------------------------------------------------------------------------------- the rules (pure)
def checkpoint_prefix(task: str, index: int) -> str:
    """``{task}/$TaskIntermediate/{i}/checkpoint``: where instance `i`'s generations are."""
    return f"{instance_output_prefix(task, protocol.TASK_INTERMEDIATE, index)}/{protocol.CHECKPOINT_DIR}"


def generation_prefix(task: str, index: int, generation: int) -> str:
    return f"{checkpoint_prefix(task, index)}/{protocol.generation_name(generation)}"


def manifest_name(task: str, index: int, generation: int) -> str:
    return generation_prefix(task, index, generation) + SUFFIX


def restore_record_prefix(task: str) -> str:
    """``{task}/$TaskLog/0/checkpoint-restores``: one record per attempt of what it restored (Azure)."""
    return f"{instance_output_prefix(task, protocol.TASK_LOG, 0)}/{protocol.CHECKPOINT_RESTORES_DIR}"


def scan(names: Iterable[str], task: str, index: int) -> tuple[set[int], set[int]]:
    """(every generation with something stored, the complete ones: those with a manifest) of instance
    `index`, from store names relative to the container."""
    head = checkpoint_prefix(task, index) + "/"
    present: set[int] = set()
    complete: set[int] = set()
    for name in names:
        if not name.startswith(head):
            continue
        first = name[len(head):].split("/", 1)[0]
        stem = first[:-len(SUFFIX)] if first.endswith(SUFFIX) and "/" not in name[len(head):] else first
        if not stem.isdigit():
            continue
        present.add(int(stem))
        if stem != first:
            complete.add(int(stem))
    return present, complete


def restorable(complete: dict[int, set[int]], instances: int, from_: str) -> int | None:
    """The newest generation to restore: the primary's newest complete one (``from: primary``), or the
    newest number every instance completed (``from: all``); None when there is none."""
    if from_ == "primary":
        gens = complete.get(0, set())
    else:
        sets = [complete.get(i, set()) for i in range(instances)]
        gens = set.intersection(*sets) if sets else set()
    return max(gens) if gens else None


def next_generation(present: Iterable[int]) -> int:
    """After the highest number any instance used: every node of an attempt starts from the same one."""
    return max(present, default=0) + 1


def to_prune(present: set[int], complete: set[int], keep: int) -> set[int]:
    """What goes once a generation completed: everything older than the `keep` newest complete ones
    (an incomplete generation newer than those may still be being written: it stays)."""
    kept = sorted(complete)[-keep:]
    return {g for g in present if kept and g < kept[0]}


def safe_rel(rel: str) -> bool:
    """A manifest's path stays inside the working directory (and is never one of mpibatch's own files)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and ".." not in parts and not protocol.is_node_file(parts[-1])


def should_save(previous: Signature | None, current: Signature, saved: Signature | None) -> bool:
    """Save when the files are there, unchanged since the last look (a whole interval), and not the
    generation saved (or restored) last."""
    return bool(current) and current == previous and current != saved


def signature(wd: str, pattern: str) -> Signature:
    files = []
    for rel in match_outputs(wd, [pattern]):
        if protocol.is_node_file(os.path.basename(rel)):
            continue
        try:
            st = os.stat(os.path.join(wd, rel))
        except OSError:
            continue
        files.append((rel, st.st_size, st.st_mtime_ns))
    return tuple(sorted(files))


# ---------------------------------------------------------------------------------------------- the stores
class Store(Protocol):
    """What the rules need of a store (errors: OSError, or BlobError from the container)."""

    def names(self, prefix: str) -> list[str]: ...
    def put(self, path: str, name: str) -> dict[str, object]: ...
    def put_bytes(self, name: str, data: bytes) -> None: ...
    def read(self, name: str) -> bytes: ...
    def get(self, name: str, dest: str, size: int, md5: str) -> None: ...
    def delete_generation(self, task: str, index: int, generation: int) -> None: ...
    def record_restore(self, task: str, record: dict[str, object]) -> None: ...


class DirStore:
    """A directory that stands in for the job's container: a blob name is a path under it."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    def names(self, prefix: str) -> list[str]:
        top = self._path(prefix)
        out = []
        for d, _, files in os.walk(top):
            rel = os.path.relpath(d, self.root).replace(os.sep, "/")
            out += [f"{rel}/{f}" for f in files if not fileio.is_temp_name(f)]
        return out

    def put(self, path: str, name: str) -> dict[str, object]:
        dest = self._path(name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        size = fileio.copy_file(path, dest)
        return {"size": size, "md5": _b64(fileio.file_md5(dest))}

    def put_bytes(self, name: str, data: bytes) -> None:
        dest = self._path(name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fileio.write_bytes(dest, data)

    def read(self, name: str) -> bytes:
        """A manifest (a bounded read: a manifest of 100,000 files is under 16 MiB)."""
        return fileio.read_range(self._path(name), 0, MAX_MANIFEST_BYTES)

    def get(self, name: str, dest: str, size: int, md5: str) -> None:
        """Copy a stored file to `dest`, verified: the size and MD5 its manifest gives."""
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        with fileio.open_regular(self._path(name)) as src, \
                fileio.DurableFile(dest, size=size, md5=_unb64(md5)) as f:
            f.copy_from(src.read)
            f.commit()

    def delete_generation(self, task: str, index: int, generation: int) -> None:
        """The manifest first: a generation is incomplete before any of its files goes."""
        try:
            os.unlink(self._path(manifest_name(task, index, generation)))
        except FileNotFoundError:
            pass
        shutil.rmtree(self._path(generation_prefix(task, index, generation)), ignore_errors=True)

    def record_restore(self, task: str, record: dict[str, object]) -> None:
        """Nothing: a rehearsal's executor knows itself what each attempt restores."""


class BlobStore:
    """The job's container, through a container SAS URL (read, add, create, write, delete, list)."""

    def __init__(self, client: ContainerClient) -> None:
        self.client = client

    def names(self, prefix: str) -> list[str]:
        return [b.name for b in self.client.list_blobs(prefix)]

    def put(self, path: str, name: str) -> dict[str, object]:
        size, md5 = self.client.upload_file(path, name)  # refuses a file that changes while read
        return {"size": size, "md5": _b64(md5)}

    def put_bytes(self, name: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix=protocol.NODE_FILE_PREFIX) as d:
            path = os.path.join(d, "blob")
            fileio.write_bytes(path, data)
            self.client.upload_file(path, name, content_type="application/json")

    def read(self, name: str) -> bytes:
        size = self.client.properties(name).size
        if size > MAX_MANIFEST_BYTES:
            raise BlobError(f"{name}: {size} bytes, more than a manifest holds ({MAX_MANIFEST_BYTES})")
        return self.client.read_range(name, 0, size)

    def get(self, name: str, dest: str, size: int, md5: str) -> None:
        """Download to `dest`, verified against the manifest's size and MD5 (not storage's word)."""
        blobdownload.download_to(self.client, BlobInfo(name, size, _unb64(md5)), dest)

    def delete_generation(self, task: str, index: int, generation: int) -> None:
        """The manifest first: a generation is incomplete before any of its files goes."""
        for name in [manifest_name(task, index, generation),
                     *self.names(generation_prefix(task, index, generation) + "/")]:
            try:
                self.client.request("DELETE", name, ok=(202,))
            except BlobError as e:
                if e.status != 404:
                    raise

    def record_restore(self, task: str, record: dict[str, object]) -> None:
        """What this attempt restored, for `submit` and `status` (the primary's restore step writes it)."""
        when = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self.put_bytes(f"{restore_record_prefix(task)}/{when}.json", json.dumps(record, sort_keys=True).encode())


def open_store() -> Store | None:
    """This node's store: the directory a rehearsal gives, else the job's container, else none."""
    root = os.environ.get(protocol.CHECKPOINT_STORE_VAR, "")
    if root:
        return DirStore(root)
    url = os.environ.get(protocol.CHECKPOINT_URL_VAR, "")
    return BlobStore(ContainerClient(url)) if url else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def complete_generations(store: Store, task: str, instances: int) -> tuple[dict[int, set[int]], set[int]]:
    """Per instance its complete generations, and every generation number used by any instance."""
    names = store.names(f"{task}/${protocol.TASK_INTERMEDIATE}")
    complete: dict[int, set[int]] = {}
    used: set[int] = set()
    for i in range(instances):
        present, done = scan(names, task, i)
        complete[i], used = done, used | present
    return complete, used


# ---------------------------------------------------------------------------------------------- saving
class Saver:
    """Instance `index`'s checkpoints, saved by its tracker: one look every `every` seconds."""

    def __init__(self, store: Store, task: str, index: int, instances: int, wd: str, pattern: str, keep: int,
                 node_id: str | None, restored: Signature | None = None) -> None:
        self.store, self.task, self.index, self.wd, self.pattern, self.keep = store, task, index, wd, pattern, keep
        self.node_id = node_id
        _, used = complete_generations(store, task, instances)
        self.generation = next_generation(used)  # read before any node of this attempt saved one
        self.previous: Signature | None = None
        self.saved = restored  # what the restore step put back is not saved again

    def look(self) -> int | None:
        """Save a generation if the files are quiet and new; returns its number."""
        current = signature(self.wd, self.pattern)
        previous, self.previous = self.previous, current
        if not should_save(previous, current, self.saved):
            return None
        g = self.generation
        files: dict[str, dict[str, object]] = {}
        for rel, size, mtime_ns in current:
            path = os.path.join(self.wd, rel)
            files[rel] = self.store.put(path, f"{generation_prefix(self.task, self.index, g)}/{rel}")
            st = os.stat(path)
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns) or files[rel]["size"] != size:
                self.store.delete_generation(self.task, self.index, g)  # changed while copied: next look
                self.previous = None
                return None
        manifest = Manifest(generation=g, index=self.index, node_id=self.node_id, files=files,
                            saved_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.store.put_bytes(manifest_name(self.task, self.index, g), manifest.to_json().encode())
        self.saved, self.generation = current, g + 1
        present, complete = scan(self.store.names(checkpoint_prefix(self.task, self.index)), self.task, self.index)
        for old in to_prune(present, complete, self.keep):
            self.store.delete_generation(self.task, self.index, old)
        return g


# ---------------------------------------------------------------------------------------------- restoring
def restore(store: Store, task: str, index: int, instances: int, from_: str, wd: str) -> tuple[int | None, str]:
    """Put instance `index`'s part of the newest complete generation into `wd`, verified. Returns the
    generation (None: none complete) and a line for the log. The primary records what it restored."""
    t0 = time.monotonic()
    complete, _ = complete_generations(store, task, instances)
    g = restorable(complete, instances, from_)
    files = size = 0
    if g is None:
        line = "no complete checkpoint generation: the program starts fresh"
    elif from_ == "all" or index == 0:
        manifest = Manifest.from_json(store.read(manifest_name(task, index, g)))
        for rel, info in sorted(manifest.files.items()):
            if safe_rel(rel):
                store.get(f"{generation_prefix(task, index, g)}/{rel}", os.path.join(wd, rel),
                          int(info["size"]), str(info["md5"]))
                files, size = files + 1, size + int(info["size"])
        line = f"restored checkpoint generation {g}: {files} files"
    else:
        line = f"checkpoint generation {g} restored on the primary"
    if index == 0:
        try:  # only what `status` shows: the program starts all the same
            store.record_restore(task, {"generation": g, "files": files, "bytes": size,
                                        "seconds": round(time.monotonic() - t0, 3)})
        except (OSError, BlobError) as e:
            line += f" (not recorded for status: {e})"
    return g, line


def export_lines(generation: int | None) -> str:
    """What the node's environment file gets: the program sees whether it restarts, and from what."""
    if generation is None:
        return f"unset {protocol.RESTART_VAR} {protocol.CHECKPOINT_VAR}\n"
    return f"export {protocol.RESTART_VAR}=1\nexport {protocol.CHECKPOINT_VAR}={generation}\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["restore"])
    ap.add_argument("--task", required=True)
    ap.add_argument("--checkpoint", required=True, help="the pattern of the checkpoint files")
    ap.add_argument("--checkpoint-from", choices=["primary", "all"], default="primary")
    ap.add_argument("--rank-vars", default=",".join(protocol.RANK_VARS))
    args, _ = ap.parse_known_args(argv)  # the tracker's other arguments are not ours
    store = open_store()
    if store is None:
        return 0
    who = protocol.whoami(args.rank_vars)
    instances = len([h for h in os.environ.get("AZ_BATCH_HOST_LIST", "").split(",") if h]) or 1
    try:
        g, line = restore(store, args.task, who.index, instances, args.checkpoint_from, who.wd)
    except (OSError, BlobError, protocol.RecordError) as e:
        print(f"mpibatch checkpoint [{who.index}]: restoring failed: {e}", file=sys.stderr)
        return 1
    print(f"mpibatch checkpoint [{who.index}]: {line}", file=sys.stderr)
    env_file = os.path.join(who.wd, protocol.NODE_ENV_FILE)
    with fileio.open_regular(env_file) as f:
        before = f.read(1024 * 1024)
    fileio.write_bytes(env_file, before + export_lines(g).encode())
    state = signature(who.wd, args.checkpoint) if g is not None else ()
    fileio.write_bytes(os.path.join(who.task_dir, protocol.CHECKPOINT_STATE_FILE),
                       json.dumps({"generation": g, "files": state}).encode())
    return 0


def restored_signature(task_dir: str) -> Signature | None:
    """What the restore step of this attempt put back (the tracker does not save it again)."""
    try:
        data = json.loads(fileio.read_range(os.path.join(task_dir, protocol.CHECKPOINT_STATE_FILE), 0, 1 << 20))
        return tuple((str(r), int(s), int(m)) for r, s, m in data["files"]) or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
