"""Blob transfers of any size with bounded memory, over the Blob REST API (docs/file-conventions.md#transfers).

Standard library only: the nodes' persist step uses it with nothing but a SAS container URL; the client's
File Conventions API (``mpibatch.fileconventions``) uses the same code, so there is one uploader.

* Uploads: a file up to one block goes in one Put Blob; anything larger as Put Block + Put Block List,
  ``workers`` blocks in flight, each with its Content-MD5, each retried on 5xx / 429 / timeouts. The
  whole file's MD5 is computed while reading and stored as the blob's Content-MD5. Memory: about
  ``2 * workers * block_size`` (64 MiB by default), whatever the file size and however many files are in
  flight. A file that shrinks, grows or vanishes while it is read is an error naming the file; nothing is
  committed for it.
* Downloads are ``launchers/blobdownload.py`` (which builds on this module; this one never imports it):
  ranges of ``range_size`` from every file in flight, written through the durable writer, MD5 computed in
  order as they arrive, named only when size and MD5 match what storage says.
* Append blobs (tracked logs): create, then Append Block with the expected append position, so a retried
  append never doubles bytes.

REST reference: https://learn.microsoft.com/rest/api/storageservices/blob-service-rest-api
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import random
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

API_VERSION = "2021-08-06"
BLOCK_SIZE = 8 * 1024 * 1024
RANGE_SIZE = 8 * 1024 * 1024  # per ranged GET, read into a reused buffer (launchers/blobdownload.py)
WORKERS = 4
MAX_BLOCKS = 50_000  # blocks per block blob (service limit)
MAX_APPEND_BLOCK = 4 * 1024 * 1024  # bytes per Append Block (service limit)
RETRIES = 5
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class BlobError(Exception):
    """A request failed for good. `status` is the HTTP status (None: no answer); the message never
    holds the SAS (only the blob name)."""

    def __init__(self, message: str, status: int | None = None, code: str = ""):
        super().__init__(message)
        self.status, self.code = status, code


class BlobInfo(NamedTuple):
    name: str
    size: int
    md5: bytes | None  # Content-MD5 as stored (None when the blob has none)
    blob_type: str = "BlockBlob"


def https_proxy_for(netloc: str, environ: dict[str, str] | None = None) -> str | None:
    """The `host:port` of the HTTPS proxy the environment names for `netloc` (`https_proxy` / `HTTPS_PROXY`,
    minus `no_proxy` hosts), as urllib and requests read it; None: connect directly. Storage is reached
    through the proxy with CONNECT, so TLS stays end to end."""
    env = os.environ if environ is None else environ
    proxy = env.get("https_proxy") or env.get("HTTPS_PROXY") or ""
    if not proxy:
        return None
    host = urllib.parse.urlsplit("//" + netloc).hostname or netloc
    for entry in (env.get("no_proxy") or env.get("NO_PROXY") or "").split(","):
        entry = entry.strip().lstrip(".").lower()
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return None
    u = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    return f"{u.hostname}:{u.port or 80}" if u.hostname else None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ContainerClient:
    """One container, addressed by its URL with a SAS query (task code on a node), or without one and a
    `bearer` callable that returns an OAuth token for https://storage.azure.com (client code)."""

    def __init__(self, container_url: str, *, bearer: Callable[[], str] | None = None, timeout: float = 120,
                 retries: int = RETRIES, block_size: int = BLOCK_SIZE, workers: int = WORKERS,
                 range_size: int = RANGE_SIZE):
        u = urllib.parse.urlsplit(container_url)
        if u.scheme not in ("http", "https") or not u.netloc or u.path.strip("/") == "":
            raise ValueError("container URL must look like https://ACCOUNT.blob.core.windows.net/CONTAINER?SAS")
        self.scheme, self.netloc = u.scheme, u.netloc
        self.path = "/" + u.path.strip("/")
        self.name = self.path.rsplit("/", 1)[-1]
        self.sas = u.query
        self.bearer = bearer
        self.timeout, self.retries = timeout, retries
        self.block_size, self.workers = block_size, max(1, workers)
        self.range_size = range_size
        # Blocks held in memory at once, across every transfer on this client: memory stays about
        # (2 * workers + 1) * block_size however many files are in flight.
        self._slots = threading.BoundedSemaphore(2 * self.workers)
        # Upload blocks are read into reused buffers: fresh 8 MiB allocations per block let the allocator's
        # per-thread arenas keep freed blocks, and the process grows well past the bound under load.
        self._free: list[bytearray] = []
        self._free_lock = threading.Lock()
        self._local = threading.local()

    # ------------------------------------------------------------------ one request, retried
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            proxy = https_proxy_for(self.netloc) if self.scheme == "https" else None
            conn = cls(proxy or self.netloc, timeout=self.timeout)
            if proxy:
                conn.set_tunnel(self.netloc)
            self._local.conn = conn
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def url(self, blob: str = "", query: dict[str, str] | None = None) -> str:
        path = self.path + ("/" + urllib.parse.quote(blob, safe="/~") if blob else "")
        q = "&".join(x for x in (urllib.parse.urlencode(query or {}), self.sas) if x)
        return path + ("?" + q if q else "")

    def request(self, method: str, blob: str = "", *, query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: bytes | memoryview = b"",
                ok: tuple[int, ...] = (200, 201), into: memoryview | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send one request; retry 5xx / 429 / timeouts / dropped connections with backoff. With `into`, a
        successful answer's body is read straight into it and must fill it exactly (the returned body is empty)."""
        target = self.url(blob, query)
        what = f"{method} {blob or self.name}"
        for attempt in range(self.retries + 1):
            hdrs = {"x-ms-version": API_VERSION, "Content-Length": str(len(body)), **(headers or {})}
            if self.bearer is not None:
                hdrs["Authorization"] = f"Bearer {self.bearer()}"
            try:
                conn = self._conn()
                conn.request(method, target, body=body, headers=hdrs)
                resp = conn.getresponse()
                status = resp.status
                data = _read_into(resp, into, what) if into is not None and status in ok else resp.read()
                rheaders = {k.lower(): v for k, v in resp.getheaders()}
            except (OSError, http.client.HTTPException) as e:  # timeouts, resets, refused
                self._drop_conn()
                if attempt == self.retries:
                    raise BlobError(f"{what}: no answer from {self.netloc}: {e.__class__.__name__}: {e}") from None
                self._sleep(attempt, None)
                continue
            if status in ok:
                return status, rheaders, data
            code = rheaders.get("x-ms-error-code", "")
            if status in _RETRY_STATUS and attempt < self.retries:
                self._sleep(attempt, rheaders.get("retry-after"))
                continue
            raise BlobError(f"{what}: HTTP {status} {code}{_hint(status, code)}".rstrip(), status, code)
        raise AssertionError("unreachable")

    @staticmethod
    def _sleep(attempt: int, retry_after: str | None) -> None:
        delay = min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random() / 2)
        if retry_after and retry_after.isdigit():
            delay = min(30.0, max(delay, float(retry_after)))
        time.sleep(delay)

    # ------------------------------------------------------------------ uploads
    def upload_file(self, path: str, blob: str, *, content_type: str = "application/octet-stream") -> tuple[int, bytes]:
        """Upload `path` to `blob` (replacing it); returns (size, MD5). Raises BlobError / OSError."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= self.block_size:
                with self._slots:
                    buf = self._buffer(self.block_size)
                    try:
                        data = _read_exactly(f, buf, size, path)
                        _check_unchanged(f, path, size)
                        md5 = hashlib.md5(data).digest()
                        self.request("PUT", blob, body=data, headers={
                            "x-ms-blob-type": "BlockBlob", "Content-MD5": b64(md5),
                            "x-ms-blob-content-md5": b64(md5), "x-ms-blob-content-type": content_type})
                    finally:
                        self._give(buf)
                return size, md5
            block_size = max(self.block_size, -(-size // MAX_BLOCKS))
            ids, md5 = self._put_blocks(f, path, blob, size, block_size)
            _check_unchanged(f, path, size)
        xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>" + \
              "".join(f"<Latest>{i}</Latest>" for i in ids) + "</BlockList>"
        self.request("PUT", blob, query={"comp": "blocklist"}, body=xml.encode(), headers={
            "x-ms-blob-content-md5": b64(md5), "x-ms-blob-content-type": content_type,
            "Content-Type": "application/xml"})
        return size, md5

    def _put_blocks(self, f: io.BufferedIOBase, path: str, blob: str, size: int,
                    block_size: int) -> tuple[list[str], bytes]:
        h = hashlib.md5()
        ids: list[str] = []
        slots = self._slots  # blocks read but not yet sent
        futures: list[Future[None]] = []
        failed = threading.Event()

        def put(block_id: str, buf: bytearray, data: memoryview) -> None:
            try:
                self.request("PUT", blob, query={"comp": "block", "blockid": block_id}, body=data,
                             headers={"Content-MD5": b64(hashlib.md5(data).digest())})
            except BaseException:
                failed.set()
                raise
            finally:
                self._give(buf)
                slots.release()

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="put-block") as pool:
            try:
                left = size
                while left > 0:
                    slots.acquire()  # before reading: at most 2 * workers blocks in memory
                    if failed.is_set():  # stop reading: the upload cannot be committed
                        slots.release()
                        break
                    buf = self._buffer(block_size)
                    try:
                        data = _read_exactly(f, buf, min(block_size, left), path)
                    except BaseException:
                        self._give(buf)
                        slots.release()
                        raise
                    left -= len(data)
                    h.update(data)
                    block_id = b64(f"{len(ids):08d}".encode())
                    ids.append(block_id)
                    futures.append(pool.submit(put, block_id, buf, data))
            finally:
                for fu in futures:
                    fu.exception()  # wait for every block in flight
        for fu in futures:
            if fu.exception() is not None:
                raise fu.exception()  # type: ignore[misc]
        return ids, h.digest()

    def _buffer(self, size: int) -> bytearray:
        with self._free_lock:
            for i, buf in enumerate(self._free):
                if len(buf) == size:
                    return self._free.pop(i)
        return bytearray(size)

    def _give(self, buf: bytearray) -> None:
        with self._free_lock:
            if len(self._free) < 2 * self.workers:
                self._free.append(buf)

    # ------------------------------------------------------------------ append blobs
    def create_append_blob(self, blob: str, *, content_type: str = "text/plain") -> None:
        self.request("PUT", blob, headers={"x-ms-blob-type": "AppendBlob", "x-ms-blob-content-type": content_type})

    def append(self, blob: str, data: bytes, offset: int) -> None:
        """Append `data` at `offset` (the blob's current length): a retry after a lost answer that did
        land is refused by the service (412) instead of appending twice - treated as done."""
        for start in range(0, len(data), MAX_APPEND_BLOCK):
            piece = data[start:start + MAX_APPEND_BLOCK]
            try:
                self.request("PUT", blob, query={"comp": "appendblock"}, body=piece, headers={
                    "x-ms-blob-condition-appendpos": str(offset + start),
                    "Content-MD5": b64(hashlib.md5(piece).digest())})
            except BlobError as e:
                if e.status != 412 or self.properties(blob).size < offset + start + len(piece):
                    raise

    # ------------------------------------------------------------------ reading
    def properties(self, blob: str) -> BlobInfo:
        _, h, _ = self.request("HEAD", blob, ok=(200,))
        md5 = h.get("content-md5")
        return BlobInfo(blob, int(h.get("content-length", "0")), base64.b64decode(md5) if md5 else None,
                        h.get("x-ms-blob-type", "BlockBlob"))

    def list_blobs(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every blob whose name starts with `prefix`, in name order (pages followed to the end)."""
        marker = ""
        for _ in range(1_000_000):  # bounded: 5,000 names a page
            q = {"restype": "container", "comp": "list", "prefix": prefix, "maxresults": "5000"}
            if marker:
                q["marker"] = marker
            _, _, body = self.request("GET", query=q, ok=(200,))
            root = ET.fromstring(body)
            for b in root.iter("Blob"):
                props = b.find("Properties")
                field = {e.tag: e.text or "" for e in props} if props is not None else {}
                md5 = field.get("Content-MD5")
                yield BlobInfo(b.findtext("Name") or "", int(field.get("Content-Length") or 0),
                               base64.b64decode(md5) if md5 else None, field.get("BlobType") or "BlockBlob")
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return

    def read_range(self, blob: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        _, _, data = self.request("GET", blob, headers={"x-ms-range": f"bytes={start}-{start + length - 1}"},
                                  ok=(200, 206))
        return data

    def read_range_into(self, blob: str, start: int, view: memoryview) -> None:
        """Fill `view` with the bytes of `blob` from `start` (no allocation per range: see blobdownload)."""
        self.request("GET", blob, headers={"x-ms-range": f"bytes={start}-{start + len(view) - 1}"},
                     ok=(200, 206), into=view)


def _read_exactly(f: io.BufferedIOBase, buf: bytearray, n: int, path: str) -> memoryview:
    """The next `n` bytes of `f`, read into `buf`."""
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise BlobError(f"{path}: the file shrank while it was uploaded (expected {n - got} more bytes, got 0)")
        got += k
    return view


def _read_into(resp: http.client.HTTPResponse, view: memoryview, what: str) -> bytes:
    """Read a response body of exactly len(view) bytes into `view`."""
    if resp.length is not None and resp.length != len(view):
        resp.read()
        raise BlobError(f"{what}: the answer holds {resp.length} bytes, not the {len(view)} asked for")
    got = 0
    while got < len(view):
        k = resp.readinto(view[got:])
        if not k:
            raise http.client.IncompleteRead(b"", len(view) - got)  # retried as a dropped connection
        got += k
    return b""


def _check_unchanged(f: io.BufferedIOBase, path: str, size: int) -> None:
    now = os.fstat(f.fileno()).st_size
    if now != size:
        raise BlobError(f"{path}: the file changed size while it was uploaded ({size} -> {now} bytes); not committed")
    if not os.path.exists(path):
        raise BlobError(f"{path}: the file was deleted while it was uploaded; not committed")


def _hint(status: int, code: str) -> str:
    if status == 403 and code == "AuthenticationFailed":
        return " (the SAS is invalid or expired)"
    if status == 403:
        return " (the SAS does not grant this: it needs write / create permission)"
    if status == 404 and code == "ContainerNotFound":
        return " (the job's container does not exist: create it with prepare_output_storage)"
    return ""
