"""The HTTP side: a threaded server on 127.0.0.1, the api-version and Shared Key checks, the routing of
every emulated REST operation, Batch's error body, ETag / Last-Modified, file downloads with `ocp-range`.
Every answer carries `x-ms-emulator: mpibatch-emulate` and a Server header saying it is an emulator.

Order of a request: its length is checked (edge.py), then api-version and Shared Key (auth.py), and only
then is the body read; a change is in the fsynced journal (state.py) before it is answered."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import socket
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..launchers import fileio
from . import (
    account,
    auth,
    edge,
    files,
    jobops,
    jobs,
    more_routes,
    nodeops,
    odata,
    poolops,
    pools,
    schema,
    spot,
    tasks,
    versions,
)
from .errors import BatchError, invalid_body, new_etag, not_emulated, rfc1123

if TYPE_CHECKING:
    from .core import Emulator

log = logging.getLogger(__name__)
EMULATOR_HEADER = ("x-ms-emulator", "mpibatch-emulate (not the Azure Batch service)")
HTTP_ERROR_CODES = {400: "InvalidRequest", 408: "RequestTimeout", 414: "InvalidUri", 431: "InvalidHeaderValue",
                    501: "UnsupportedHttpVerb", 505: "UnsupportedHttpVersion"}
Answer = tuple[int, Any, dict[str, str]]
ID = r"([^/]+)"


def _doing(effect: Callable[[], object], answer: Answer) -> Answer:
    """Run an operation that answers with no body, then give its answer."""
    effect()
    return answer


def _created(url: str) -> Answer:
    return 201, None, {"DataServiceId": url, "Location": url}


def _accepted(url: str) -> Answer:
    return 202, None, {"DataServiceId": url}


def _list(emu: Emulator, q: dict[str, list[str]], items: list[dict[str, Any]], path: str) -> Answer:
    return 200, odata.page(items, q, f"{emu.endpoint}{path}"), {}


def _files(emu: Emulator, q: dict[str, list[str]], root: Path, base: str, path: str) -> Answer:
    recursive = (q.get("recursive") or ["false"])[0].lower() == "true"
    return _list(emu, q, files.file_listing(root, base, recursive), path)


def _node_files(emu: Emulator, q: dict[str, list[str]], p: str, n: str, path: str) -> Answer:
    node = pools.node(emu, p, n)
    items: dict[str, dict[str, Any]] = {}
    for root in pools.node_roots(emu, node):
        for f in files.file_listing(root, f"{node['url']}/files", True
                                    if (q.get("recursive") or [""])[0].lower() == "true" else False):
            items.setdefault(f["name"], f)
    return _list(emu, q, list(items.values()), path)


def _body(raw: bytes) -> Any:
    return schema.parse_json(raw)


def routes(emu: Emulator) -> list[tuple[str, re.Pattern[str], Callable[..., Answer]]]:
    """(verb, path pattern, handler(query, body, *path ids)) for every emulated operation."""
    e = emu
    table: list[tuple[str, str, Callable[..., Answer]]] = [
        ("POST", "/pools", lambda q, b: _created(pools.add(e, _body(b))["url"])),
        ("GET", "/pools", lambda q, b: _list(e, q, [pools.view(x) for x in list(e.store.pools.values())], "/pools")),
        ("GET", f"/pools/{ID}", lambda q, b, p: (200, odata.select_one(pools.view(pools.get(e, p)), q), {})),
        ("HEAD", f"/pools/{ID}", lambda q, b, p: (200, pools.get(e, p) and None, {})),
        ("DELETE", f"/pools/{ID}", lambda q, b, p: _doing(lambda: pools.delete(e, p),
                                                          _accepted(f"{e.endpoint}/pools/{p}"))),
        ("GET", f"/pools/{ID}/nodes", lambda q, b, p: _list(e, q, [pools.node_view(n) for n in (
            e.store.pool_nodes(pools.get(e, p)["id"]))], f"/pools/{p}/nodes")),
        ("GET", f"/pools/{ID}/nodes/{ID}", lambda q, b, p, n: (200, odata.select_one(
            pools.node_view(pools.node(e, p, n)), q), {})),
        ("GET", f"/pools/{ID}/nodes/{ID}/files", lambda q, b, p, n: _node_files(e, q, p, n,
                                                                              f"/pools/{p}/nodes/{n}/files")),
        ("GET", f"/pools/{ID}/nodes/{ID}/files/(.+)", lambda q, b, p, n, f: (200, pools.node_file(e, p, n, f), {})),
        ("HEAD", f"/pools/{ID}/nodes/{ID}/files/(.+)", lambda q, b, p, n, f: (200, pools.node_file(e, p, n, f), {})),
        # The emulator's own operator path, not part of Batch's API (docs/emulator.md "Spot nodes").
        ("POST", f"/_emulator/pools/{ID}/nodes/{ID}/preempt", lambda q, b, p, n: _doing(
            lambda: spot.preempt(e, p, n), _accepted(f"{e.endpoint}/pools/{p}/nodes/{n}"))),
        ("POST", "/jobs", lambda q, b: _created(jobs.add(e, _body(b))["url"])),
        ("GET", "/jobs", lambda q, b: _list(e, q, [jobs.view(x) for x in list(e.store.jobs.values())], "/jobs")),
        ("GET", f"/jobs/{ID}", lambda q, b, j: (200, odata.select_one(jobs.view(jobs.get(e, j)), q), {})),
        ("DELETE", f"/jobs/{ID}", lambda q, b, j: _doing(lambda: jobs.delete(e, j),
                                                        _accepted(f"{e.endpoint}/jobs/{j}"))),
        ("POST", f"/jobs/{ID}/terminate", lambda q, b, j: _doing(lambda: jobs.terminate(e, j, _body(b) if b else None),
                                                                   _accepted(f"{e.endpoint}/jobs/{j}"))),
        ("GET", f"/jobs/{ID}/jobpreparationandreleasetaskstatus", lambda q, b, j: _list(
            e, q, jobs.prep_release_status(e, j), f"/jobs/{j}/jobpreparationandreleasetaskstatus")),
        ("GET", f"/jobs/{ID}/taskcounts", lambda q, b, j: (200, tasks.counts(e, j), {})),
        ("POST", f"/jobs/{ID}/tasks", lambda q, b, j: _created(tasks.add(e, j, _body(b))["url"])),
        ("GET", f"/jobs/{ID}/tasks", lambda q, b, j: _list(e, q, tasks.listing(e, j), f"/jobs/{j}/tasks")),
        ("POST", f"/jobs/{ID}/addtaskcollection", lambda q, b, j: (200, tasks.add_collection(e, j, b), {})),
        ("GET", f"/jobs/{ID}/tasks/{ID}", lambda q, b, j, t: (200, odata.select_one(
            tasks.view(tasks.get(e, j, t)), q), {})),
        ("DELETE", f"/jobs/{ID}/tasks/{ID}", lambda q, b, j, t: _doing(lambda: tasks.delete(e, j, t),
                                                                       (200, None, {}))),
        ("POST", f"/jobs/{ID}/tasks/{ID}/terminate", lambda q, b, j, t: _doing(
            lambda: tasks.terminate(e, j, t), (204, None, {"DataServiceId": f"{e.endpoint}/jobs/{j}/tasks/{t}"}))),
        ("GET", f"/jobs/{ID}/tasks/{ID}/subtasksinfo", lambda q, b, j, t: (200, {"value": tasks.subtasks(e, j, t)},
                                                                           {})),
        ("GET", f"/jobs/{ID}/tasks/{ID}/files", lambda q, b, j, t: _files(
            e, q, tasks.task_dir(e, j, t), f"{e.endpoint}/jobs/{j}/tasks/{t}/files", f"/jobs/{j}/tasks/{t}/files")),
        ("GET", f"/jobs/{ID}/tasks/{ID}/files/(.+)", lambda q, b, j, t, f: (200, tasks.task_file(e, j, t, f), {})),
        ("HEAD", f"/jobs/{ID}/tasks/{ID}/files/(.+)", lambda q, b, j, t, f: (200, tasks.task_file(e, j, t, f), {})),
    ]
    table += more_routes.table(e)  # images, job schedules: in modules of their own
    table = [*poolops.routes(e), *nodeops.routes(e), *jobops.routes(e), *account.routes(e), *table]  # issue 24
    return [(verb, re.compile(pattern + "$"), fn) for verb, pattern, fn in table]


class Handler(BaseHTTPRequestHandler):
    emu: Emulator
    table: list[tuple[str, re.Pattern[str], Callable[..., Answer]]]
    protocol_version = "HTTP/1.1"
    timeout = edge.IDLE_TIMEOUT_S  # a silent client cannot hold a thread for ever
    server_version = "mpibatch-emulate/1.0 (an Azure Batch emulator, not the Azure Batch service)"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def handle_expect_100(self) -> bool:
        self._expect_continue = True  # "100 Continue" only once the request is bounded and authenticated
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a request line, header or method it cannot take): Batch's error body,
        then the connection is closed."""
        rid = secrets.token_hex(16)
        err = BatchError(code, HTTP_ERROR_CODES.get(code, "InvalidRequest"),
                         (message or "The request is not valid.")[:200])
        self.close_connection = True
        self._reply(code, err.body(rid), {"request-id": rid, "Connection": "close"})

    def _serve(self) -> None:
        emu = self.emu
        raw_path, _, query = self.path.partition("?")
        rid = secrets.token_hex(16)
        headers = {"request-id": rid}
        if self.headers.get("client-request-id"):
            headers["client-request-id"] = self.headers["client-request-id"][:200]
        body = b""
        unread: int | None = None  # bytes of the body not read yet (None: not known)
        try:
            unread = edge.body_length(self.headers)
            edge.check_size(unread)
            q = urllib.parse.parse_qs(query, keep_blank_values=True)
            check_version(q)
            auth.check(self.command, raw_path, query, self.headers, emu.account, emu.key)
            body, unread = self._read_body(unread), 0
            if emu.before_request is not None:  # fault injection for tests (e.g. 429 throttling)
                emu.before_request(self.command, raw_path, body)
            status, payload, extra = self._route(raw_path, q, body)
            if self.command not in ("GET", "HEAD"):
                emu.store.flush()  # acknowledged means durable: the change is on disk before the answer
            headers.update(extra)
        except BatchError as e:
            status, payload = e.status, e.body(rid)
            headers.update(e.headers)
        except Exception as e:  # noqa: BLE001 - an emulator bug: answer like the service would, log it
            log.exception("%s %s", self.command, raw_path)
            status = 500
            payload = BatchError(500, "InternalError", f"The server encountered an internal error "
                                 f"(mpibatch emulate: {e.__class__.__name__}).").body(rid)
        if emu.after_request is not None:
            emu.after_request(self.command, raw_path, status, body)
        if unread != 0 or self.server.saturated():  # type: ignore[attr-defined]
            headers["Connection"] = "close"
        self._reply(status, payload, headers)
        if unread != 0:
            self._end_unread(unread)
        self._expect_continue = False  # per request: the handler serves every request of its connection

    def _read_body(self, length: int) -> bytes:
        if not length:
            return b""
        if getattr(self, "_expect_continue", False):
            self.send_response_only(100)
            self.end_headers()
            self._expect_continue = False
        try:
            data = self.rfile.read(length)
        except OSError:
            data = b""
        if len(data) < length:
            self.close_connection = True
            raise invalid_body(f"the body ended after {len(data)} of its {length} bytes (Content-Length)")
        return data

    def _end_unread(self, unread: int | None) -> None:
        """A request answered without reading its body: end our side, then read and throw away (bounded) what
        the client still sends, so that it reads the answer instead of a connection reset."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            return
        if not getattr(self, "_expect_continue", False):  # a client waiting for "100 Continue" sends nothing
            edge.discard(self.rfile, self.connection, edge.DISCARD_MAX if unread is None else
                         min(unread, edge.DISCARD_MAX))

    def _route(self, raw_path: str, q: dict[str, list[str]], body: bytes) -> Answer:
        path = raw_path.rstrip("/") or "/"
        known_path = False
        for verb, pattern, fn in self.table:
            m = pattern.match(path)
            if m:
                known_path = True
                if verb == self.command:
                    return fn(q, body, *(urllib.parse.unquote(g) for g in m.groups()))
        if known_path:
            raise not_emulated(f"{self.command} {path}")
        raise not_emulated(f"the operation {self.command} {path}")

    def _reply(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        if isinstance(payload, io.IOBase):  # a file of the files API (opened without following symlinks)
            with payload:
                self._send_file(payload, headers)  # type: ignore[arg-type]
            return
        data = json.dumps(payload).encode() if payload is not None else b""
        self._start(status, "application/json;odata=minimalmetadata" if payload is not None else None, len(data),
                    headers)
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    def _start(self, status: int, ctype: str | None, length: int, headers: dict[str, str]) -> None:
        """The status line and headers (every answer's common ones)."""
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        if status < 300:
            headers.setdefault("ETag", new_etag())
            headers.setdefault("Last-Modified", rfc1123())
        headers.setdefault("DataServiceVersion", "3.0")
        self.send_header(*EMULATOR_HEADER)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _send_file(self, f: BinaryIO, headers: dict[str, str]) -> None:
        """The file, or its `ocp-range`, streamed in pieces: memory stays flat whatever the file's size."""
        st = os.fstat(f.fileno())
        try:
            start, length, content_range = parse_range(self.headers.get("ocp-range") or self.headers.get("Range"),
                                                      st.st_size, head=self.command == "HEAD")
        except BatchError as e:
            self._reply(e.status, e.body(headers.get("request-id", "")), {**headers, **e.headers})
            return
        headers.update({"ocp-batch-file-isdirectory": "false", "ocp-batch-file-mode": oct(st.st_mode),
                        "ocp-creation-time": rfc1123(),
                        "ocp-batch-file-url": self.emu.endpoint + self.path.partition("?")[0]})
        if content_range:
            headers["Content-Range"] = content_range
        self._start(200, "application/octet-stream", length, headers)  # the service answers 200 with a range
        if self.command == "HEAD":
            return
        try:
            for piece in fileio.file_range(f, start, length):
                self.wfile.write(piece)
        except (BrokenPipeError, ConnectionResetError):  # the client went away: nothing more to send
            self.close_connection = True


def parse_range(header: str | None, size: int, *, head: bool = False) -> tuple[int, int, str]:
    """(start, length, Content-Range) of an `ocp-range` header over a file of `size` bytes; no header (or
    HEAD): the whole file. ``bytes=a-b``, ``bytes=a-`` and the suffix ``bytes=-n`` are understood."""
    if not header or head:
        return 0, size, ""
    m = re.fullmatch(r"bytes=(\d{0,19})-(\d{0,19})", header.strip())
    first, last = (m.group(1), m.group(2)) if m else ("", "")
    if not (first or last) or (first and last and int(last) < int(first)):
        raise BatchError(400, "InvalidRange", "The range specified is invalid.", {"Range": header[:64]})
    start = int(first) if first else max(0, size - int(last))
    end = min(int(last) if first and last else size - 1, size - 1)
    return start, max(0, end - start + 1), f"bytes {start}-{end}/{size}"


def check_version(q: dict[str, list[str]]) -> None:
    versions.begin(q)  # every data-plane version with a published specification, 2018-12-01.8.0 on


def make_server(emu: Emulator, port: int) -> edge.BoundedServer:
    handler = type("EmulatorHandler", (Handler,), {"emu": emu, "table": routes(emu)})
    for verb in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        setattr(handler, f"do_{verb}", Handler._serve)
    return edge.BoundedServer(("127.0.0.1", port), handler)
