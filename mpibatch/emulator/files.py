"""Files as a Batch node handles them: resource files downloaded before a task starts (`httpUrl`,
`storageContainerUrl` + `blobPrefix`, `autoStorageContainerName`) and output files uploaded after it ends
(per `uploadCondition`, to a container URL with a SAS), through plain HTTP to the storage endpoint.
SAS tokens never reach a log line or an error message (only the URL without its query)."""
from __future__ import annotations

import glob
import http.client
import os
import re
import stat
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

from ..executors.resource_files import fetch_to
from ..launchers import blobio, fileio, outputnames
from ..redaction import redact_url

TIMEOUT_S = 60
STORAGE_VERSION = "2021-08-06"
UPLOAD_BLOCK = 4 * 1024 * 1024  # output files go up in blocks of this size, UPLOAD_WORKERS at once
UPLOAD_WORKERS = 2
DEFAULT_FILE_MODE = 0o770  # a resource file without fileMode, on a Linux node


class FileError(Exception):
    """A resource or output file failed; `code` is the failureInfo code Batch reports."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class AutoStorage:
    """The account's linked storage (from a connection string)."""

    account: str
    key: str
    blob_endpoint: str

    @classmethod
    def parse(cls, conn: str) -> AutoStorage:
        parts = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
        account, key = parts.get("AccountName", ""), parts.get("AccountKey", "")
        endpoint = parts.get("BlobEndpoint") or (f"{parts.get('DefaultEndpointsProtocol', 'https')}://{account}"
                                                 f".blob.{parts.get('EndpointSuffix', 'core.windows.net')}")
        if not account or not key:
            raise ValueError("the storage connection string needs AccountName and AccountKey")
        return cls(account, key, endpoint.rstrip("/"))

    def container_url(self, container: str) -> str:
        """The container's URL with a read/list SAS valid for a day (what Batch gives the node)."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        sas = generate_container_sas(self.account, container, account_key=self.key,
                                     permission=ContainerSasPermissions(read=True, list=True),
                                     expiry=datetime.now(timezone.utc) + timedelta(days=1))
        return f"{self.blob_endpoint}/{container}?{sas}"


def _blob_url(container_url: str, blob: str) -> str:
    base, _, sas = container_url.partition("?")
    return f"{base.rstrip('/')}/{urllib.parse.quote(blob)}" + (f"?{sas}" if sas else "")


def _list_blobs(container_url: str, prefix: str) -> list[str]:
    base, _, sas = container_url.partition("?")
    names, marker = [], ""
    for _ in range(1000):  # bounded: 5,000 blobs a page
        q = "restype=container&comp=list" + (f"&prefix={urllib.parse.quote(prefix)}" if prefix else "")
        q += f"&marker={urllib.parse.quote(marker)}" if marker else ""
        url = f"{base}?{q}" + (f"&{sas}" if sas else "")
        req = urllib.request.Request(url, headers={"x-ms-version": STORAGE_VERSION})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                root = ET.fromstring(resp.read())
        except urllib.error.HTTPError as e:
            raise FileError("BlobAccessDenied" if e.code == 403 else "ContainerNotFound",
                            f"cannot list {redact_url(container_url)}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, ET.ParseError) as e:
            raise FileError("ResourceFileDownloadFailed",
                            f"cannot list {redact_url(container_url)}: {getattr(e, 'reason', e)}") from None
        names += [b.findtext("Name") or "" for b in root.iter("Blob")]
        marker = root.findtext("NextMarker") or ""
        if not marker:
            break
    return [n for n in names if n]


def file_mode(rf: dict[str, Any]) -> int:
    """A resource file's permission bits: its `fileMode` (an octal string such as "0755" or "755"), else
    Batch's default on Linux nodes, 0770 (ResourceFile.fileMode in the REST reference)."""
    text = rf.get("fileMode")
    if text is None or text == "":
        return DEFAULT_FILE_MODE
    if not isinstance(text, str) or not re.fullmatch(r"0?[0-7]{1,4}", text.strip()):
        raise FileError("InvalidResourceFileMode", f"resource file {rf.get('filePath') or ''}: fileMode "
                        f"{str(text)[:20]!r} is not an octal permission mode (use e.g. \"0755\")")
    return int(text.strip(), 8) & 0o7777


def resolve(resource_files: list[dict[str, Any]], storage: AutoStorage | None) -> list[tuple[str, str, int]]:
    """Resource files -> (URL, path relative to the working directory, permission bits), one per file."""
    out: list[tuple[str, str, int]] = []
    for rf in resource_files or []:
        path = (rf.get("filePath") or "").replace("\\", "/").strip("/")
        mode = file_mode(rf)
        if rf.get("httpUrl"):
            out.append((rf["httpUrl"], path or Path(urllib.parse.urlsplit(rf["httpUrl"]).path).name, mode))
            continue
        if rf.get("autoStorageContainerName"):
            if storage is None:
                raise FileError("AutoStorageNotConfigured", "the emulator has no auto-storage account (start it "
                                "with --storage auto or a connection string)")
            url = storage.container_url(rf["autoStorageContainerName"])
        elif rf.get("storageContainerUrl"):
            url = rf["storageContainerUrl"]
        else:
            raise FileError("InvalidResourceFile", "a resource file needs httpUrl, storageContainerUrl or "
                            "autoStorageContainerName")
        prefix = rf.get("blobPrefix") or ""
        for blob in _list_blobs(url, prefix):
            out.append((_blob_url(url, blob), f"{path}/{blob}" if path else blob, mode))
    return out


def safe_join(root: Path, rel: str) -> Path:
    rel = rel.replace("\\", "/").lstrip("/")
    if not rel or ".." in rel.split("/"):
        raise FileError("InvalidFilePath", f"file path {rel!r} leaves the task directory")
    return root / rel


def download(files: list[tuple[str, str, int]], wd: Path) -> None:
    for url, rel, mode in files:
        dest = safe_join(wd, rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:  # durably, and a body cut short of its Content-Length is a failed download, never a short file
            fetch_to(url, dest, timeout=TIMEOUT_S, mode=mode)
        except urllib.error.HTTPError as e:
            raise FileError("BlobAccessDenied" if e.code == 403 else "BlobNotFound" if e.code == 404 else
                            "ResourceFileDownloadFailed",
                            f"resource file {rel}: HTTP {e.code} {e.reason} from {redact_url(url)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise FileError("ResourceFileDownloadFailed", f"resource file {rel}: cannot download "
                            f"{redact_url(url)}: {getattr(e, 'reason', e)}") from None


def upload_outputs(output_files: list[dict[str, Any]], task_dir: Path, succeeded: bool) -> list[str]:
    """Upload the task's output files as the node agent does; returns the errors (empty: all uploaded).
    Patterns are relative to the working directory; `../std*.txt` reaches the task directory's logs."""
    wd = task_dir / "wd"
    errors: list[str] = []
    clients: dict[str, blobio.ContainerClient] = {}  # one per container URL: its block buffers are reused
    for of in output_files or []:
        cond = ((of.get("uploadOptions") or {}).get("uploadCondition") or "taskSuccess").lower()
        if (cond == "tasksuccess" and not succeeded) or (cond == "taskfailure" and succeeded):
            continue
        pattern = of["filePattern"].replace("\\", "/")
        dest = (of.get("destination") or {}).get("container") or {}
        url, path = dest.get("containerUrl"), dest.get("path")
        if not url:
            continue
        wildcard = not outputnames.is_single_file(pattern)
        root = wd if not pattern.startswith("/") else Path("/")
        matches = sorted(p for p in glob.glob(pattern, root_dir=root, recursive=True) if (root / p).is_file())
        for rel in matches:
            try:
                clean = outputnames.normalize_relative_path(rel)  # the one naming rule (../ dropped)
            except outputnames.NameRuleError as e:
                errors.append(f"{rel}: {e.problem}")
                continue
            name = (f"{path.rstrip('/')}/{clean}" if path else clean) if wildcard else (path or Path(clean).name)
            try:
                _upload(clients, url, name, root / rel)
            except FileError as e:
                errors.append(e.message)
    return errors


def _upload(clients: dict[str, blobio.ContainerClient], container_url: str, blob: str, path: Path) -> None:
    """Upload one output file in blocks read piece by piece (the nodes' block uploader): memory stays about
    UPLOAD_BLOCK * 2 * UPLOAD_WORKERS whatever the file's size."""
    try:
        client = clients.get(container_url)
        if client is None:
            client = clients[container_url] = blobio.ContainerClient(
                container_url, timeout=TIMEOUT_S, block_size=UPLOAD_BLOCK, workers=UPLOAD_WORKERS)
        client.upload_file(str(path), blob)
    except (blobio.BlobError, OSError, ValueError) as e:  # BlobError's text holds the blob name, never the SAS
        raise FileError("FileUploadFailed", f"upload of {blob} to {redact_url(container_url)} failed: "
                        f"{redact_url(str(e))}") from None


def open_file(root: Path, rel: str) -> BinaryIO | None:
    """The regular file `rel` under `root`, opened without following a symlink anywhere on the way (a task's
    ``wd/leak -> /etc/shadow`` or ``wd/etc -> /etc`` is never served); None when there is no such file."""
    try:
        return fileio.open_regular(rel.replace("\\", "/").strip("/"), beneath=root)
    except OSError:
        return None


def file_listing(root: Path, base: str, recursive: bool) -> list[dict[str, Any]]:
    """A node or task directory as the files-list operation describes it. Symlinks are neither listed
    nor followed (their targets may be anywhere on this machine)."""
    out: list[dict[str, Any]] = []
    if not root.is_dir() or root.is_symlink():
        return out
    for rel, st in sorted(_entries(root, recursive), key=lambda e: e[0].split("/")):
        is_dir = stat.S_ISDIR(st.st_mode)
        props = {"lastModified": datetime.fromtimestamp(st.st_mtime, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", "contentLength": 0 if is_dir else st.st_size,
            "contentType": "application/octet-stream", "fileMode": oct(st.st_mode)}
        out.append({"name": rel, "url": f"{base}/{urllib.parse.quote(rel)}", "isDirectory": is_dir,
                    "properties": props})
    return out


def _entries(root: Path, recursive: bool) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every entry under `root` that is not a symlink; os.walk never follows links."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:  # gone since it was listed
                continue
            if not stat.S_ISLNK(st.st_mode):
                yield os.path.relpath(p, root).replace(os.sep, "/"), st
        if not recursive:
            return
