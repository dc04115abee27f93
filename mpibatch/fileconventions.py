"""The Batch File Conventions as a Python library, mirroring .NET's Microsoft.Azure.Batch.Conventions.Files
(docs/file-conventions.md#api): ``TaskOutputStorage``, ``JobOutputStorage``, ``prepare_output_storage``.

Usable from task code on a node with only a SAS container URL, and from client code with a connection
string or an Azure AD credential. Names come from ``launchers/outputnames.py`` and transfers from
``launchers/blobio.py`` (standard library only, the same code the nodes' persist step runs)::

    storage = TaskOutputStorage("cfd-run-1", "motorbike", container_url=os.environ["OUTPUT_SAS"])
    storage.save("TaskOutput", "results/fields.h5")
    with storage.save_tracked("TaskLog", "../progress.log"):
        run_solver()
    for out in TaskOutputStorage("cfd-run-1", "motorbike", connection_string=conn).list_outputs("TaskOutput"):
        out.download_to(f"results/{out.path}")
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from .errors import InfraError, SpecError
from .launchers import blobdownload
from .launchers import outputnames as names
from .launchers.blobio import BlobError, BlobInfo, ContainerClient
from .launchers.track import AppendFollower

log = logging.getLogger(__name__)

__all__ = ["JobOutputStorage", "StoredOutput", "TaskOutputStorage", "TrackedFile", "download_outputs",
           "prepare_output_storage"]

CLIENT_SAS_LIFETIME = timedelta(hours=12)  # a SAS this library signs for itself from an account key
_STORAGE_SCOPE = "https://storage.azure.com/.default"


def _spec(fn: Callable[..., str], *args: Any, **kwargs: Any) -> str:
    try:
        return fn(*args, **kwargs)
    except names.NameRuleError as e:
        raise SpecError(e.field, e.problem, e.fix or None) from None


def _parse_connection_string(conn: str) -> tuple[str, str, str]:
    parts = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
    account, key = parts.get("AccountName", ""), parts.get("AccountKey", "")
    if not account or not key:
        raise SpecError("connection_string", "needs AccountName and AccountKey",
                        "copy the connection string from the storage account's Access keys")
    scheme, suffix = parts.get("DefaultEndpointsProtocol", "https"), parts.get("EndpointSuffix", "core.windows.net")
    endpoint = parts.get("BlobEndpoint") or f"{scheme}://{account}.blob.{suffix}"
    return account, key, endpoint.rstrip("/")


def container_client(job_id: str, *, container_url: str | None = None, connection_string: str | None = None,
                     credential: Any = None, account_url: str | None = None, **options: Any) -> ContainerClient:
    """The job's container, reached by exactly one of: a SAS container URL; a connection string with an
    account key (this library signs a short-lived container SAS); an azure-identity credential with
    `account_url` (OAuth bearer tokens)."""
    given = [n for n, v in (("container_url", container_url), ("connection_string", connection_string),
                            ("credential", credential)) if v]
    if len(given) != 1:
        raise SpecError("storage", f"give exactly one of container_url, connection_string, credential (got "
                        f"{', '.join(given) or 'none'})", "a SAS container URL is what task code usually has")
    container = _spec(names.job_container_name, job_id, "job_id")
    try:
        if container_url:
            return ContainerClient(container_url, **options)
        if connection_string:
            from azure.storage.blob import generate_container_sas

            account, key, endpoint = _parse_connection_string(connection_string)
            now = datetime.now(timezone.utc)
            sas = generate_container_sas(account, container, account_key=key, permission="racwl",
                                         start=now - timedelta(minutes=5), expiry=now + CLIENT_SAS_LIFETIME)
            return ContainerClient(f"{endpoint}/{container}?{sas}", **options)
        if not account_url:
            raise SpecError("account_url", "a credential needs the account's blob endpoint",
                            "e.g. account_url='https://ACCOUNT.blob.core.windows.net'")
        return ContainerClient(f"{account_url.rstrip('/')}/{container}", bearer=_bearer(credential), **options)
    except ValueError as e:
        if isinstance(e, SpecError):
            raise
        raise SpecError("container_url", str(e)) from None


def _bearer(credential: Any) -> Callable[[], str]:
    lock = threading.Lock()
    held: dict[str, Any] = {}

    def token() -> str:
        with lock:
            t = held.get("token")
            if t is None or t.expires_on - 300 < time.time():
                t = held["token"] = credential.get_token(_STORAGE_SCOPE)
            return str(t.token)
    return token


def prepare_output_storage(job_id: str, **how: Any) -> str:
    """Create the job's container if missing (as .NET's ``PrepareOutputStorageAsync``); returns its name.
    A container SAS cannot create its own container: with only a URL, the container must exist."""
    client = container_client(job_id, **how)  # validates the options and the job id
    if how.get("container_url"):
        return client.name
    from azure.core.exceptions import AzureError, ResourceExistsError

    from .executors.azure.storage_account import blob_service

    service = blob_service(connection_string=how.get("connection_string") or "",
                           account_url=how.get("account_url") or "", credential=how.get("credential"))
    try:
        service.create_container(client.name)
    except ResourceExistsError:
        pass
    except AzureError as e:
        from .executors.azure.errors import Service, to_infra_error
        from .redaction import redact

        secret = how.get("connection_string")
        where = Service(f"storage account {service.account_name}", urlparse(service.url).netloc,
                        "check the connection string, key or credential", lambda text: redact(text, secret))
        raise to_infra_error(e, where, f"creating container {client.name}") from None
    return client.name


@dataclass(frozen=True)
class StoredOutput:
    """One stored output: `path` is relative to the kind's folder (and to the instance folder when the
    storage was opened for one instance); `md5` is the Content-MD5 stored with the blob."""

    kind: str
    path: str
    size: int
    md5: bytes | None
    blob_name: str
    instance: int | None
    _client: ContainerClient
    task_id: str | None = None  # the task it belongs to (None: a job output); JobOutputStorage.list_every_output

    def download_to(self, local_path: str | os.PathLike[str], *,
                    on_bytes: Callable[[int], None] | None = None) -> str:
        """Download, verify size and MD5, then rename into place; "kept" if it was already there, verified."""
        try:
            return blobdownload.download_to(self._client, BlobInfo(self.blob_name, self.size, self.md5),
                                            os.fspath(local_path), on_bytes=on_bytes)
        except BlobError as e:
            raise InfraError(f"downloading {self.blob_name}: {e}") from None


def download_outputs(outputs: list[StoredOutput], dests: list[str | os.PathLike[str]], *,
                     on_bytes: Callable[[int], None] | None = None,
                     on_done: Callable[[StoredOutput, str | InfraError], None] | None = None) -> list[str | InfraError]:
    """Download many outputs at once (ranges from every file in flight, one pool of connections per
    storage), each verified and renamed into place as ``StoredOutput.download_to`` does. One outcome per
    output, in order: "downloaded", "kept", or the InfraError that stopped it (the others still go)."""
    if len(outputs) != len(dests):
        raise ValueError("one destination per output")
    outcomes: list[str | InfraError] = ["" for _ in outputs]
    by_client: dict[int, list[int]] = {}
    for i, o in enumerate(outputs):
        by_client.setdefault(id(o._client), []).append(i)
    for indexes in by_client.values():
        by_name = {outputs[i].blob_name: outputs[i] for i in indexes}
        report = None if on_done is None else (
            lambda info, r, by_name=by_name: on_done(by_name[info.name], _outcome(info.name, r)))
        infos = [(BlobInfo(outputs[i].blob_name, outputs[i].size, outputs[i].md5), os.fspath(dests[i]))
                 for i in indexes]
        got = blobdownload.download_many(outputs[indexes[0]]._client, infos, on_bytes=on_bytes, on_done=report)
        for i, r in zip(indexes, got):
            outcomes[i] = _outcome(outputs[i].blob_name, r)
    return outcomes


def _outcome(blob: str, r: str | BaseException) -> str | InfraError:
    if isinstance(r, str):
        return r
    if isinstance(r, BlobError | OSError):
        return InfraError(f"downloading {blob}: {r}")
    raise r


class _OutputStorage:
    _kinds: tuple[str, ...] = ()

    def __init__(self, job_id: str, **how: Any) -> None:
        self.job_id = job_id
        self.client = container_client(job_id, **how)

    def _prefix(self, kind: str) -> str:
        raise NotImplementedError

    def _blob(self, kind: str, path: str | os.PathLike[str], destination: str | None) -> tuple[str, str]:
        local = os.fspath(path)
        if destination is None and os.path.isabs(local):
            raise SpecError("destination", f"{local} is an absolute path",
                            "give destination=, the name relative to the kind's folder")
        rel = _spec(names.normalize_relative_path, destination if destination is not None else local, "destination")
        return local, names.checked_blob_name(f"{self._prefix(kind)}/{rel}", "destination")

    def save(self, kind: str, path: str | os.PathLike[str], *, destination: str | None = None) -> StoredOutput:
        """Upload a file of any size (blocks, in parallel, MD5-checked). `destination` defaults to `path`
        as the .NET library names it (``../stdout.txt`` -> ``stdout.txt``)."""
        local, blob = self._blob(kind, path, destination)
        try:
            size, md5 = self.client.upload_file(local, blob)
        except (BlobError, OSError) as e:
            raise InfraError(f"saving {local} as {blob}: {e}") from None
        return self._stored(BlobInfo(blob, size, md5))

    def save_tracked(self, kind: str, path: str | os.PathLike[str], *, destination: str | None = None,
                     interval: float = 15) -> TrackedFile:
        """A context manager that keeps an append blob up to date with what is appended to `path`."""
        local, blob = self._blob(kind, path, destination)
        return TrackedFile(self.client, local, blob, interval)

    def list_outputs(self, kind: str | None = None) -> list[StoredOutput]:
        kinds = [kind] if kind else None
        prefix = self._prefix(kind) + "/" if kind else self._prefix_all()
        out = []
        for info in self._listing(prefix):
            s = self._stored(info)
            if s is not None and (kinds is None or s.kind in kinds):
                out.append(s)
        return out

    def _listing(self, prefix: str) -> list[BlobInfo]:
        """Every blob under `prefix`; a missing container or an unreachable storage is an error that says so."""
        try:
            return list(self.client.list_blobs(prefix))
        except BlobError as e:
            if e.status == 404:
                raise SpecError("JOB", f"job {self.job_id} has no output container ({self.client.name})",
                                "check the job id; its outputs go to that container once the job stores any") from None
            raise InfraError(f"listing {self.client.name}: {e}") from None

    def get_output(self, kind: str, path: str) -> StoredOutput:
        _, blob = self._blob(kind, path, None)
        try:
            info = self.client.properties(blob)
        except BlobError as e:
            if e.status == 404:
                raise SpecError("path", f"no {kind} output {path!r} in container {self.client.name}",
                                "list what is there with list_outputs()") from None
            raise InfraError(f"reading {blob}: {e}") from None
        stored = self._stored(info)
        assert stored is not None
        return stored

    def _prefix_all(self) -> str:
        raise NotImplementedError

    def _stored(self, info: BlobInfo) -> Any:
        raise NotImplementedError


class TaskOutputStorage(_OutputStorage):
    """A task's outputs: ``{taskId}/${Kind}/{path}``; with `instance` (mpibatch's multi-instance layout)
    ``{taskId}/${Kind}/{instance}/{path}``."""

    def __init__(self, job_id: str, task_id: str, *, container_url: str | None = None,
                 connection_string: str | None = None, credential: Any = None, account_url: str | None = None,
                 instance: int | None = None, **options: Any) -> None:
        self.task_id = _spec(names.validate_task_id, task_id, "task_id")
        self.instance = instance
        super().__init__(job_id, container_url=container_url, connection_string=connection_string,
                         credential=credential, account_url=account_url, **options)

    def _prefix(self, kind: str) -> str:
        if self.instance is None:
            return _spec(names.task_output_prefix, self.task_id, kind, kind_field="kind")
        return _spec(names.instance_output_prefix, self.task_id, kind, self.instance, kind_field="kind")

    def _prefix_all(self) -> str:
        return f"{self.task_id}/$"

    def _stored(self, info: BlobInfo) -> StoredOutput | None:
        parsed = names.parse_task_blob(self.task_id, info.name, instances=self.instance is not None)
        if parsed is None or (self.instance is not None and parsed.instance != self.instance):
            return None
        return StoredOutput(parsed.kind, parsed.path, info.size, info.md5, info.name, parsed.instance, self.client)


class JobOutputStorage(_OutputStorage):
    """A job's outputs: ``${Kind}/{path}`` in the job's container."""

    def __init__(self, job_id: str, *, container_url: str | None = None, connection_string: str | None = None,
                 credential: Any = None, account_url: str | None = None, **options: Any) -> None:
        super().__init__(job_id, container_url=container_url, connection_string=connection_string,
                         credential=credential, account_url=account_url, **options)

    def _prefix(self, kind: str) -> str:
        return _spec(names.job_output_prefix, kind, kind_field="kind")

    def _prefix_all(self) -> str:
        return "$"

    def _stored(self, info: BlobInfo) -> StoredOutput | None:
        parsed = names.parse_job_blob(info.name)
        if parsed is None:
            return None
        return StoredOutput(parsed.kind, parsed.path, info.size, info.md5, info.name, None, self.client)

    def list_every_output(self, kind: str | None = None) -> list[StoredOutput]:
        """The job's own outputs and those of every task of the job (`task_id` says whose), from one listing
        of the container. Task paths read as .NET names them (an mpibatch path starts with its instance)."""
        out = []
        for info in self._listing(""):
            task_id = None if info.name.startswith("$") else info.name.split("/", 1)[0]
            parsed = names.parse_job_blob(info.name) if task_id is None else \
                names.parse_task_blob(task_id, info.name, instances=False)
            if parsed is not None and (kind is None or parsed.kind == kind):
                out.append(StoredOutput(parsed.kind, parsed.path, info.size, info.md5, info.name, None, self.client,
                                        task_id))
        return out


class TrackedFile:
    """Keeps the append blob `blob` up to date with the bytes appended to the local file `path`: every
    `interval` seconds, and once more on exit. Only appends reach storage (as in .NET): bytes rewritten
    in place, or a file that shrinks, are not sent again. The appending itself is the node tracker's
    (launchers/track.py), so a task's tracked file and mpibatch's live logs follow one rule."""

    def __init__(self, client: ContainerClient, path: str, blob: str, interval: float) -> None:
        self.path, self.blob, self.interval = path, blob, interval
        self.follower = AppendFollower(client, path, blob, resume=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def sent(self) -> int:
        return self.follower.sent

    def __enter__(self) -> TrackedFile:
        try:
            self.follower.flush() if os.path.exists(self.path) else self.follower.start()
        except (BlobError, OSError) as e:
            raise InfraError(f"tracking {self.path} as {self.blob}: {e}") from None
        self._thread = threading.Thread(target=self._run, name=f"track-{os.path.basename(self.path)}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except (BlobError, OSError) as e:  # keep trying: the final flush reports it
                log.warning("tracking %s: %s", self.path, e)

    def flush(self) -> int:
        """Send what was appended since the last flush; returns the bytes sent."""
        return self.follower.flush()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush()
        except (BlobError, OSError) as e:
            if exc_type is None:
                raise InfraError(f"final flush of {self.path} to {self.blob}: {e}") from None
            log.warning("final flush of %s: %s", self.path, e)
