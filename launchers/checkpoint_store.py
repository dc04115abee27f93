#!/usr/bin/env python3
"""Where checkpoint generations are stored (docs/checkpoints.md): their names, and the two stores that hold them
with the same names - the job's container (BlobStore, through the checkpoint SAS of MPIBATCH_CHECKPOINT_URL) or a
directory that stands in for it (rehearsals: DirStore). The rules that use them are in checkpoint.py. Standard
library only: it runs on the nodes beside track.py.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from typing import Protocol

try:  # as the package mpibatch.launchers (client side, tests)
    from . import blobdownload, fileio, protocol
    from .blobio import BlobError, BlobInfo, ContainerClient
    from .outputnames import instance_output_prefix
except ImportError:  # as a script on the node: the modules are shipped beside it
    import blobdownload  # type: ignore[no-redef]
    import fileio  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]
    from blobio import BlobError, BlobInfo, ContainerClient  # type: ignore[no-redef]
    from outputnames import instance_output_prefix  # type: ignore[no-redef]

SUFFIX = protocol.CHECKPOINT_MANIFEST_SUFFIX
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


# ---------------------------------------------------------------------------------------------- the names
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
