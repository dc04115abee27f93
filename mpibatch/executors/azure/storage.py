"""Blob storage for the Azure executor: the job's container, input uploads, SAS URLs, downloads.

The account and its credentials come from the environment only (mpibatch/executors/azure/storage_account.py);
without an account key, SAS URLs are user delegation SAS.

What the SAS URLs grant (least privilege for each reader):

* inputs (resource files): **read** on one blob, expiring a margin after the task's max_wall_clock;
* Batch output files of the primary: container **add, create, write, list** (no read, no delete);
* subtask persistence (``launchers/persist.py``): container **add, create, write** only;
* checkpoints (``launchers/checkpoint.py``, only for a task with ``task.checkpoint``): container **read, add,
  create, write, delete, list** - a requeued or retried attempt must find and read a generation whose name
  nobody knew when the SAS was signed, and prune old ones (docs/checkpoints.md#azure-batch).

Inputs are content-addressed: ``mpibatch/inputs/{md5}/{file name}`` in the job's container, so a file
is uploaded once per job container however many tasks use it; an existing blob is reused only when its
stored Content-MD5 matches the local file.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from ... import conventions
from ...errors import LogShrank, SpecError
from ...launchers import blobdownload, fileio
from ...launchers.blobio import BlobError, BlobInfo, ContainerClient
from ...redaction import redact
from ...transfers import Transfers
from .errors import Service, to_infra_error
from .storage_account import storage_account_from_env

log = logging.getLogger(__name__)

INPUT_PREFIX = "mpibatch/inputs"
DEFAULT_WALL_CLOCK = timedelta(days=1)  # when the task sets no max_wall_clock
SAS_MARGIN = timedelta(days=1)  # queueing + node allocation + output upload after the wall clock
MAX_USER_DELEGATION = timedelta(days=7)  # the service's limit on a user delegation key
OUTPUT_PERMISSIONS = "acwl"  # add, create, write, list: what Batch output files need
PERSIST_PERMISSIONS = "acw"  # add (append blocks), create, write: the nodes can neither read nor list
CHECKPOINT_PERMISSIONS = "racwdl"  # checkpoints: find, read, write and prune generations (docs/checkpoints.md)

def write_chunks(chunks: Iterable[bytes], dest: Path, *, size: int | None = None) -> tuple[int, bytes]:
    """Stream `chunks` into `dest` through the durable writer (temporary name, short writes and a full disk
    checked, `size` verified when known, fsync, rename); returns the size and MD5 digest of what was written.
    Raises fileio.WriteError naming `dest`; on any error or interruption `dest` is untouched."""
    h = hashlib.md5()
    with fileio.DurableFile(dest, size=size) as out:
        for chunk in chunks:
            out.write(chunk)
            h.update(chunk)
        out.commit()
    return out.written, h.digest()


def sas_expiry(max_wall_clock: int | None, *, now: datetime | None = None,
               margin: timedelta = SAS_MARGIN) -> datetime:
    """When the task's SAS URLs expire: the wall clock (or DEFAULT_WALL_CLOCK) plus a margin."""
    now = now or datetime.now(timezone.utc)
    wall = timedelta(seconds=max_wall_clock) if max_wall_clock else DEFAULT_WALL_CLOCK
    return now + wall + margin


class Storage:
    """One storage account. Build it with :meth:`from_env`."""

    def __init__(self, service: Any, account: str, *, key: str | None = None, endpoint: str | None = None):
        self.service = service  # azure.storage.blob.BlobServiceClient
        self.account = account
        self._key = key
        self.endpoint = (endpoint or service.url).rstrip("/")
        self._delegation_key: Any = None
        self._delegation_expiry: datetime | None = None
        self._lock = threading.Lock()
        self._md5_cache: dict[tuple[str, int, int], bytes] = {}
        self._checked_blobs: dict[tuple[str, str], bytes] = {}
        self._readers: dict[str, tuple[ContainerClient, datetime]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> Storage:
        """The account the environment names (mpibatch/executors/azure/storage_account.py)."""
        account = storage_account_from_env(env, **kwargs)
        return cls(account.service, account.name, key=account.key, endpoint=account.endpoint)

    # ------------------------------------------------------------------ errors
    @property
    def host(self) -> str:
        u = urlparse(self.endpoint)
        return u.netloc or self.endpoint

    @property
    def who(self) -> Service:
        return Service(f"storage account {self.account}", self.host,
                       "check AZURE_STORAGE_KEY / AZURE_STORAGE_CONNECTION_STRING or the identity's role",
                       lambda text: redact(text, self._key))

    def _call(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a storage call; errors become InfraError (without secrets), except "not found" and
        "already exists", which callers handle."""
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

        try:
            return fn(*args, **kwargs)
        except (ResourceNotFoundError, ResourceExistsError):
            raise
        except (AzureError, OSError) as e:
            raise to_infra_error(e, self.who, doing) from None

    # ------------------------------------------------------------------ account and container
    def check(self, job_id: str) -> bool:
        """Reach the account (and authenticate) without creating anything; True if the job's
        container exists. Fails fast: only one retry."""
        name = conventions.job_container_name(job_id)
        return bool(self._call("checking the job container", self.service.get_container_client(name).exists,
                               retry_total=1))

    def ensure_container(self, job_id: str) -> str:
        """The job's container (File Conventions name), created if missing."""
        from azure.core.exceptions import ResourceExistsError

        name = conventions.job_container_name(job_id)
        container = self.service.get_container_client(name)
        try:
            self._call(f"creating container {name}", container.create_container)
        except ResourceExistsError:
            pass
        return name

    # ------------------------------------------------------------------ uploads
    def _local_md5(self, path: Path) -> bytes:
        st = path.stat()
        k = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if k in self._md5_cache:
                return self._md5_cache[k]
        digest = fileio.file_md5(str(path))
        with self._lock:
            self._md5_cache[k] = digest
        return digest

    def input_blob_name(self, path: Path, md5: bytes | None = None) -> str:
        md5 = md5 if md5 is not None else self._local_md5(path)
        return f"{INPUT_PREFIX}/{md5.hex()}/{path.name}"

    def upload_file(self, container: str, blob: str, path: str | Path, *,
                    on_bytes: Callable[[int], None] | None = None) -> bool:
        """Upload `path` to `container/blob` unless a blob with the same MD5 is there. True if uploaded.
        `on_bytes(n)`: n more bytes sent (the whole size at once when the blob was already there)."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.blob import ContentSettings

        p = Path(path)
        if not p.is_file():
            raise SpecError(str(p), "no such file to upload", "check the path in the spec")
        md5 = self._local_md5(p)
        with self._lock:
            if self._checked_blobs.get((container, blob)) == md5:
                if on_bytes:
                    on_bytes(p.stat().st_size)
                return False
        client = self.service.get_blob_client(container, blob)
        try:
            props = self._call(f"checking {blob}", client.get_blob_properties)
            stored = props.content_settings.content_md5
            if stored and bytes(stored) == md5 and props.size == p.stat().st_size:
                with self._lock:
                    self._checked_blobs[(container, blob)] = md5
                log.debug("skip upload of %s: same MD5 already in %s", p.name, container)
                if on_bytes:
                    on_bytes(props.size)
                return False
        except ResourceNotFoundError:
            pass
        settings = ContentSettings(content_type="application/octet-stream", content_md5=bytearray(md5))
        sent = [0]

        def hook(current: int, total: int | None) -> None:  # the SDK reports a running total
            if on_bytes and current > sent[0]:
                on_bytes(current - sent[0])
                sent[0] = current

        with open(p, "rb") as f:
            self._call(f"uploading {p.name}", client.upload_blob, f, overwrite=True, content_settings=settings,
                       validate_content=False, progress_hook=hook)
        with self._lock:
            self._checked_blobs[(container, blob)] = md5
        return True

    def upload_inputs(self, container: str, paths: Iterable[str | Path], *,
                      transfers: Transfers | None = None) -> dict[str, str]:
        """Upload local files once (content-addressed); returns {local path: blob name}. Every path is
        checked before the first byte goes; `transfers` is told the plan and each file's bytes."""
        todo: list[Path] = []
        for path in paths:
            p = Path(path)
            if p in todo:
                continue
            if not p.is_file():
                raise SpecError(str(p), "input file does not exist", "fix the source path in the spec")
            todo.append(p)
        if transfers is not None:
            transfers.planned(len(todo), sum(p.stat().st_size for p in todo))
        out: dict[str, str] = {}
        for p in todo:
            blob = self.input_blob_name(p)
            try:
                self.upload_file(container, blob, p, on_bytes=transfers.moved if transfers else None)
            finally:
                if transfers is not None:
                    transfers.file_done()
            out[str(p)] = blob
        return out

    # ------------------------------------------------------------------ SAS
    def _user_delegation_key(self, expiry: datetime) -> Any:
        with self._lock:
            if self._delegation_key is not None and self._delegation_expiry and self._delegation_expiry >= expiry:
                return self._delegation_key
        start = datetime.now(timezone.utc) - timedelta(minutes=5)
        if expiry - start > MAX_USER_DELEGATION:
            raise SpecError("task.max_wall_clock", "too long for a user delegation SAS (at most 7 days)",
                            "set AZURE_STORAGE_KEY or a shorter max_wall_clock")
        key = self._call("getting a user delegation key", self.service.get_user_delegation_key, start, expiry)
        with self._lock:
            self._delegation_key, self._delegation_expiry = key, expiry
        return key

    def _signing(self, expiry: datetime) -> dict[str, Any]:
        if self._key:
            return {"account_key": self._key}
        return {"user_delegation_key": self._user_delegation_key(expiry)}

    def blob_url(self, container: str, blob: str) -> str:
        return f"{self.endpoint}/{container}/{quote(blob, safe='/')}"

    def container_url(self, container: str) -> str:
        return f"{self.endpoint}/{container}"

    def blob_read_url(self, container: str, blob: str, expiry: datetime) -> str:
        """A read-only SAS URL for one blob."""
        from azure.storage.blob import generate_blob_sas

        sas = generate_blob_sas(self.account, container, blob, permission="r", expiry=expiry,
                                start=datetime.now(timezone.utc) - timedelta(minutes=5), **self._signing(expiry))
        return f"{self.blob_url(container, blob)}?{sas}"

    def container_sas_url(self, container: str, permission: str, expiry: datetime) -> str:
        from azure.storage.blob import generate_container_sas

        sas = generate_container_sas(self.account, container, permission=permission, expiry=expiry,
                                     start=datetime.now(timezone.utc) - timedelta(minutes=5),
                                     **self._signing(expiry))
        return f"{self.container_url(container)}?{sas}"

    def output_container_url(self, container: str, expiry: datetime) -> str:
        """Container SAS for Batch output files: add, create, write, list (no read, no delete)."""
        return self.container_sas_url(container, OUTPUT_PERMISSIONS, expiry)

    def persist_container_url(self, container: str, expiry: datetime) -> str:
        """Write-only container SAS (add, create, write) for the nodes' tracker and persist step."""
        return self.container_sas_url(container, PERSIST_PERMISSIONS, expiry)

    def checkpoint_container_url(self, container: str, expiry: datetime) -> str:
        """Container SAS for the nodes' checkpoints: read, add, create, write, delete, list."""
        return self.container_sas_url(container, CHECKPOINT_PERMISSIONS, expiry)

    # ------------------------------------------------------------------ listing and downloads
    def list_blobs(self, container: str, prefix: str) -> list[Any]:
        from azure.core.exceptions import ResourceNotFoundError

        c = self.service.get_container_client(container)
        try:
            return self._call(f"listing {container}/{prefix}", lambda: list(c.list_blobs(name_starts_with=prefix)))
        except ResourceNotFoundError:
            return []

    def read_blob(self, container: str, blob: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        client = self.service.get_blob_client(container, blob)
        try:
            return self._call(f"reading {blob}", lambda: client.download_blob().readall())
        except ResourceNotFoundError:
            return None

    def blob_size(self, container: str, blob: str) -> int | None:
        """The blob's size; None when there is no blob."""
        from azure.core.exceptions import ResourceNotFoundError

        client = self.service.get_blob_client(container, blob)
        try:
            return int(self._call(f"reading {blob}", lambda: client.get_blob_properties().size))
        except ResourceNotFoundError:
            return None

    def read_range(self, container: str, blob: str, offset: int, limit: int) -> bytes | None:
        """Up to `limit` bytes of `blob` from `offset` (empty at its end); None when there is no blob; LogShrank
        when the blob is now shorter than `offset`."""
        from azure.core.exceptions import ResourceNotFoundError

        client = self.service.get_blob_client(container, blob)
        try:
            size = self._call(f"reading {blob}", lambda: client.get_blob_properties().size)
            if offset > size:  # the copy was replaced by a shorter one
                raise LogShrank(blob.rsplit("/", 1)[-1], offset, size)
            if offset == size:
                return b""
            return self._call(f"reading {blob}",
                              lambda: client.download_blob(offset=offset, length=min(limit, size - offset)).readall())
        except ResourceNotFoundError:
            return None

    def _reader(self, container: str) -> ContainerClient:
        """A read + list SAS client for `container` (the ranged, verified downloader of launchers/blobio)."""
        now = datetime.now(timezone.utc)
        with self._lock:
            held = self._readers.get(container)
            if held and held[1] - now > timedelta(minutes=30):
                return held[0]
        expiry = now + timedelta(hours=2)
        client = ContainerClient(self.container_sas_url(container, "rl", expiry))
        with self._lock:
            self._readers[container] = (client, expiry)
        return client

    def download_blob(self, container: str, blob: Any, dest: Path, *,
                      on_bytes: Callable[[int], None] | None = None) -> str | None:
        """Download one listed blob (a BlobProperties) to `dest`: ranges in parallel, size and MD5 verified,
        through the durable writer; a `dest` already there and verified is kept. None when good, else why not.
        `on_bytes(n)`: n more bytes received (or kept)."""
        return self.download_blobs(container, [(blob, dest)], on_bytes=on_bytes)[0]

    def download_blobs(self, container: str, items: Sequence[tuple[Any, Path]], *,
                       on_bytes: Callable[[int], None] | None = None,
                       on_done: Callable[[], None] | None = None) -> list[str | None]:
        """`download_blob` for many (blob, dest) at once, with ranges from every file in flight
        (launchers/blobdownload.py); one problem (None when good) per item, in order. `on_done()`: one more
        file finished, good or not."""
        infos = []
        for blob, dest in items:
            md5 = blob.content_settings.content_md5 if blob.content_settings else None
            infos.append((BlobInfo(blob.name, blob.size or 0, bytes(md5) if md5 else None), str(dest)))
        outcomes = blobdownload.download_many(self._reader(container), infos, on_bytes=on_bytes,
                                              on_done=None if on_done is None else lambda _info, _r: on_done())
        return [self._problem(r, dest) for r, (_, dest) in zip(outcomes, items)]

    def _problem(self, outcome: str | BaseException, dest: Path) -> str | None:
        if isinstance(outcome, BlobError):
            return "vanished while downloading" if outcome.status == 404 else redact(str(outcome), self._key)
        if isinstance(outcome, fileio.WriteError):  # names the file already
            return str(outcome)
        if isinstance(outcome, OSError):
            return f"cannot write {dest}: {outcome.strerror or outcome}"
        if isinstance(outcome, BaseException):
            raise outcome
        return None
