"""A loopback HTTP proxy in front of Azurite that behaves like the real service where Azurite does not,
and injects faults: a low Put Blob size limit (the service refuses a single Put Blob over 5,000 MiB with
413 RequestBodyTooLarge; here the limit is set low so a test file is "too big"), 429 on chosen requests,
and a hook run when a request arrives (to change a file while it is being uploaded)."""
from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StorageProxy:
    def __init__(self, upstream_port: int, *, put_blob_limit: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.put_blob_limit = put_blob_limit
        self.requests: list[tuple[str, str, int]] = []  # (method, comp or "", body bytes)
        self.throttle: dict[str, int] = {}  # comp -> how many such requests answer 429 first
        self.on_request: Callable[[str, str], None] | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StorageProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def url(self, upstream_url: str) -> str:
        """`upstream_url` (an Azurite URL) rewritten to go through this proxy."""
        return upstream_url.replace(f"127.0.0.1:{self.upstream_port}", f"127.0.0.1:{self.port}", 1)

    def count(self, method: str, comp: str) -> int:
        with self._lock:
            return sum(1 for m, c, _ in self.requests if m == method and c == comp)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)
        comp = (query.get("comp") or [""])[0]
        with self._lock:
            self.requests.append((h.command, comp, len(body)))
            throttled = self.throttle.get(comp, 0) > 0 and h.command == "PUT"
            if throttled:
                self.throttle[comp] -= 1
        if self.on_request:
            self.on_request(h.command, comp)
        if throttled:
            return self._reply(h, 429, {"x-ms-error-code": "ServerBusy", "Retry-After": "0"}, b"")
        if h.command == "PUT" and comp == "" and h.headers.get("x-ms-blob-type") == "BlockBlob" \
                and self.put_blob_limit is not None and len(body) > self.put_blob_limit:
            return self._reply(h, 413, {"x-ms-error-code": "RequestBodyTooLarge"}, b"")
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self._reply(h, resp.status, {k: v for k, v in resp.getheaders()
                                         if k.lower() not in ("connection", "transfer-encoding", "content-length")},
                        data, head=h.command == "HEAD", length=resp.getheader("Content-Length"))
        finally:
            conn.close()

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes, *, head: bool = False,
               length: str | None = None) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", length if head and length is not None else str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
