"""The attacker's side of the corpus, on 127.0.0.1 only: a web server that serves
harmless payloads and swallows uploads, and listeners that catch reverse shells.

They run as threads of the harness (no exec), so nothing they do shows up as a
process of any item.
"""

from __future__ import annotations

import base64
import io
import shutil
import socket
import ssl
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.tls import self_signed_cert

# What a downloaded "stage two" does: it looks around and leaves. Nothing else.
PAYLOAD_SH = b"#!/bin/sh\nid\nuname -a\nhostname\n"
PAYLOAD_PY = b"import os\nos.system('id; uname -a; hostname')\n"


def _tarball() -> bytes:
    """A small release tarball for the benign workload's download-and-unpack."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"hello from a release\n"
        info = tarfile.TarInfo("release/README")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def payloads() -> dict[str, tuple[str, bytes]]:
    tool = Path(shutil.which("id") or "/usr/bin/id").read_bytes()  # a harmless ELF
    return {
        "/x.sh": ("text/x-sh", PAYLOAD_SH),
        "/x.b64": ("text/plain", base64.b64encode(PAYLOAD_SH) + b"\n"),
        "/x.py": ("text/x-python", PAYLOAD_PY),
        "/tool": ("application/octet-stream", tool),
        "/index.json": ("application/json", b'{"ok": true, "items": [1, 2, 3]}\n'),
        "/release.tar.gz": ("application/gzip", _tarball()),
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "corpus/1"
    files: dict[str, tuple[str, bytes]] = {}

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        kind, body = self.files.get(path, ("text/plain", b""))
        self.send_response(200 if path in self.files else 404)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _swallow(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                break
            length -= len(chunk)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    do_POST = _swallow
    do_PUT = _swallow


class WebServer:
    """GET serves `payloads()`, POST/PUT read the upload and answer 200."""

    def __init__(self) -> None:
        handler = type("Handler", (_Handler,), {"files": payloads()})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ShellCatcher:
    """A listener for one item: each connection gets `id` and `exit` (what an operator
    of a reverse shell types first), then is read until it closes or goes quiet."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.tls = tls
        self.connections = 0
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        conn.settimeout(1.5)  # quiet this long: the shell has answered, hang up
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.sendall(b"id\nexit\n")
            while data := conn.recv(65536):
                self.received += len(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def tls_context(directory: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    cert_path, key_path = self_signed_cert(directory, "listener")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx
