"""An HTTPS front for Azurite, for running code that can only name a storage account as
`https://<account>.blob.core.windows.net` (Microsoft's Batch samples build their blob URLs that way) against
`mpibatch emulate` offline.

It is an HTTP proxy on 127.0.0.1 that accepts only `CONNECT <account>.blob.core.windows.net:443`, answers the
TLS handshake with a certificate of a certificate authority it makes for itself (in DIR, never installed in the
system's trust store), and relays the decrypted HTTP to the Azurite port given. Azurite reads the account from
the host name (its "production-style URL" mode). Any other host is refused (403): nothing leaves this machine.

    python3 scripts/storage_tls_front.py --azurite-port 10000 --dir /tmp/front
    # prints, for your shell (the client, and the emulator that fetches resource files, both need them):
    export HTTPS_PROXY=http://127.0.0.1:<port>  NO_PROXY=127.0.0.1,localhost
    export REQUESTS_CA_BUNDLE=/tmp/front/ca.pem SSL_CERT_FILE=/tmp/front/ca.pem

Only the Python standard library and the `openssl` program are used. Ctrl-C ends it."""
from __future__ import annotations

import argparse
import re
import select
import shlex
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

HOST = re.compile(r"^[a-z0-9]{3,24}\.blob\.core\.windows\.net$")  # a storage account's blob endpoint
IDLE_S = 120.0  # a relayed connection with no traffic for this long is closed
MAX_HEADER = 8192


def make_certificates(where: Path) -> tuple[Path, Path, Path]:
    """A CA and a `*.blob.core.windows.net` certificate it signed, made once in `where` (kept: clients trust
    the CA file by path)."""
    where.mkdir(parents=True, exist_ok=True)
    where.chmod(0o700)  # the CA's key signs for any blob host: only its owner may read it
    ca, ca_key, cert, key = (where / n for n in ("ca.pem", "ca.key", "front.pem", "front.key"))
    if cert.is_file() and key.is_file() and ca.is_file():
        return ca, cert, key
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, timeout=60)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=storage-tls-front CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(ca_key), "-out", str(ca))
    csr = where / "front.csr"
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=*.blob.core.windows.net",
        "-keyout", str(key), "-out", str(csr))
    ext = where / "front.ext"
    ext.write_text("subjectAltName=DNS:*.blob.core.windows.net\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "30", "-extfile", str(ext), "-out", str(cert))
    return ca, cert, key


def read_request_head(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(1024)
        if not chunk or len(head) > MAX_HEADER:
            return b""
        head += chunk
    return head


def relay(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes or both are idle for IDLE_S."""
    socks = [a, b]
    while True:
        ready, _, _ = select.select(socks, [], [], IDLE_S)
        if not ready:
            return
        for s in ready:
            if isinstance(s, ssl.SSLSocket):
                data = s.recv(65536)
                while data and s.pending():  # TLS may hold decrypted bytes select() cannot see
                    data += s.recv(s.pending())
            else:
                data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


def serve_one(conn: socket.socket, context: ssl.SSLContext, azurite_port: int) -> None:
    with conn:
        head = read_request_head(conn)
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        target = parts[1] if len(parts) == 3 and parts[0] == "CONNECT" else ""
        host, _, port = target.rpartition(":")
        if not HOST.match(host.lower()) or port != "443":
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            print(f"refused: {parts[:2]}", file=sys.stderr)
            return
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            tls = context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as e:
            print(f"TLS handshake with a client failed: {e}", file=sys.stderr)
            return
        with tls, socket.create_connection(("127.0.0.1", azurite_port), timeout=30) as up:
            try:
                relay(tls, up)
            except (OSError, ssl.SSLError):
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--azurite-port", type=int, required=True, help="the emulator's Azurite blob port")
    ap.add_argument("--dir", type=Path, required=True, help="where the CA and certificate are kept")
    ap.add_argument("--port", type=int, default=0, help="the proxy's port on 127.0.0.1 (0: a free one)")
    args = ap.parse_args(argv)
    ca, cert, key = make_certificates(args.dir)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", args.port))
    port = server.getsockname()[1]
    print(f"export HTTPS_PROXY=http://127.0.0.1:{port} NO_PROXY=127.0.0.1,localhost", flush=True)
    print(f"export REQUESTS_CA_BUNDLE={shlex.quote(str(ca))} SSL_CERT_FILE={shlex.quote(str(ca))}", flush=True)
    try:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve_one, args=(conn, context, args.azurite_port), daemon=True).start()
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
