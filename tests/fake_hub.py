"""A stand-in for the Hugging Face Hub on 127.0.0.1, for huggingface_hub's `hf_hub_download`.

A real `http.server.ThreadingHTTPServer` (port 0) that answers `/{repo}/resolve/{revision}/{filename}` the way
the Hub does for huggingface_hub 0.23 ... 0.36 (see `get_hf_file_metadata` / `http_get` in
`huggingface_hub/file_download.py`):

* HEAD, LFS file (the default, like the real multi-GB safetensors): 302 to a "CDN" URL on this server, with
  `X-Repo-Commit`, `X-Linked-Etag` (the sha256), `X-Linked-Size` and `ETag`; huggingface_hub reads the commit,
  etag and size from these and downloads from `Location`.
* HEAD, regular file (`lfs=False`): 200 with `X-Repo-Commit`, `ETag`, `Content-Length`.
* GET: the bytes, with `Range: bytes=N-` / `bytes=N-M` support (206 + `Content-Range`), which is how an
  interrupted download resumes.
* An unknown file: 404 with `X-Error-Code: EntryNotFound`.

`drop_after[filename] = [n, ...]` makes the next GETs of that file send the full `Content-Length` header but
only n body bytes, then close the socket (a dropped connection). Every request is recorded in `requests`.
"""
from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

REPO_ID = "LayerDiffusion/layerdiffusion-v1"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class FakeHub:
    files: dict[str, bytes] = field(default_factory=dict)
    repo_id: str = REPO_ID
    revision: str = "main"
    lfs: bool = True
    drop_after: dict[str, list[int]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---------------------------------------------------------------------------------------------- queries
    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_for(self, filename: str, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests
                    if (method is None or r.method == method)
                    and (r.path.endswith("/" + filename) or r.path.endswith("/" + _sha(self.files.get(filename))))]

    def pop_drop(self, filename: str) -> int | None:
        with self._lock:
            pending = self.drop_after.get(filename)
            return pending.pop(0) if pending else None

    def by_sha(self, sha: str) -> str | None:
        for name, data in self.files.items():
            if _sha(data) == sha:
                return name
        return None


def _sha(data: bytes | None) -> str:
    return hashlib.sha256(data).hexdigest() if data is not None else "-"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    def finish(self):
        try:
            super().finish()
        except OSError:  # the socket was closed on purpose (dropped connection)
            pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool):
        hub = self.hub
        hub.record(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        path = self.path.split("?", 1)[0]
        prefix = f"/{hub.repo_id}/resolve/{hub.revision}/"
        cdn = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
        if cdn:
            name = hub.by_sha(cdn.group(1))
            if name is None:
                return self._error(404, "EntryNotFound")
            return self._send_file(name, head)
        if not path.startswith(prefix):
            return self._error(404, "RepoNotFound" if "/resolve/" in path else None)
        name = path[len(prefix):]
        if name not in hub.files:
            return self._error(404, "EntryNotFound")
        data = hub.files[name]
        sha = _sha(data)
        if hub.lfs:
            self.send_response(302)
            self.send_header("Location", f"{hub.url}/cdn/{sha}")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        return self._send_file(name, head, etag=sha)

    def _error(self, code: int, error_code: str | None):
        body = b'{"error":"not found"}'
        self.send_response(code)
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", error_code)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, name: str, head: bool, etag: str | None = None):
        hub = self.hub
        data = hub.files[name]
        size = len(data)
        start, stop = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
            if not m or int(m.group(1)) >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(m.group(1))
            stop = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            status = 206
        body = data[start:stop + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop}/{size}")
        if etag is not None:
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{etag}"')
        self.end_headers()
        if head:
            return
        drop = hub.pop_drop(name)
        if drop is not None:
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)
