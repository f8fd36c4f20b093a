"""A loopback HTTP server for tests: in-memory routes, byte ranges, and injected faults.

    with LoopbackServer() as srv:
        srv.add("/w.bin", data, fail_first=2, drop_after=100)
        download_url(srv.url("/w.bin"), dest)
        srv.requests  # what the client sent: method, path, query, headers (lower-case names)

Each route can answer the first N requests with a 500, cut the first response
after some bytes (the connection closes mid-body), or ignore ``Range`` headers.
``serve_hf_repo`` publishes a folder the way the Hugging Face Hub API does.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, and no request lines on stderr (test output stays clean)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:
        return None


@dataclass
class Route:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    fail_first: int = 0           # answer this many GET requests with 500 first
    drop_after: int | None = None  # the first successful GET sends only this many body bytes
    ignore_range: bool = False
    gets: int = 0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case


HF_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """Clients that hang up early (a test that stops reading) are expected; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ServerThread:
    """A threaded HTTP server on 127.0.0.1 (a free port) with the handler ``_handler_class()`` returns, serving
    inside ``with``; ``requests`` records what clients sent."""

    def __init__(self) -> None:
        self.requests: list = []
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _handler_class(self):
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class LoopbackServer(ServerThread):
    """Serves registered routes."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        super().__init__()

    @property
    def base_url(self) -> str:
        return self.address

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, body: bytes | str | dict | list, **options) -> Route:
        """Serve ``body`` at ``path`` (dicts and lists as JSON); ``options`` are ``Route`` fields."""
        headers = dict(options.pop("headers", {}))
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        route = Route(body=body, headers=headers, **options)
        self.routes[path] = route
        return route

    def requests_for(self, path: str, method: str = "GET") -> list[Request]:
        return [r for r in self.requests if r.path == path and r.method == method]

    def _handler_class(self):
        server = self

        class Handler(QuietHandler):
            def do_HEAD(self):
                self._serve(send_body=False)

            def do_GET(self):
                self._serve(send_body=True)

            def _serve(self, send_body: bool) -> None:
                parts = urlsplit(self.path)
                with server._lock:
                    server.requests.append(Request(self.command, parts.path, parse_qs(parts.query),
                                                   {k.lower(): v for k, v in self.headers.items()}))
                    route = server.routes.get(parts.path)
                    if route is None:
                        return self._reply(404, b"not found", {}, send_body)
                    if send_body:
                        route.gets += 1
                        if route.gets <= route.fail_first:
                            return self._reply(500, b"injected failure", {}, send_body)
                    drop_after = route.drop_after if send_body and route.gets == route.fail_first + 1 else None
                body, status, headers = route.body, route.status, dict(route.headers)
                headers["Accept-Ranges"] = "bytes"
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if match and not route.ignore_range and status == 200:
                    start = int(match.group(1))
                    end = int(match.group(2)) if match.group(2) else len(body) - 1
                    if start >= len(body):
                        return self._reply(416, b"", {"Content-Range": f"bytes */{len(body)}"}, send_body)
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
                    body, status = body[start:end + 1], 206
                self._reply(status, body, headers, send_body, drop_after)

            def _reply(self, status, body, headers, send_body, drop_after=None) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                if drop_after is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                if not send_body:
                    return
                if drop_after is not None:
                    self.wfile.write(body[:drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler


def serve_hf_repo(srv: LoopbackServer, repo: str, folder: Path, repo_type: str = "model") -> dict[str, bytes]:
    """Publish ``folder`` as Hub repo ``repo`` of ``repo_type`` (model or dataset; branch ``main`` at
    ``HF_COMMIT``); return its files.

    Serves what ``huggingface_hub.snapshot_download`` asks for: the repo info
    (``sha``, ``siblings``), the recursive tree listing, and ``resolve/{revision}/{file}``
    with the ``X-Repo-Commit`` and ``ETag`` headers.
    """
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    info = {"id": repo, "modelId": repo, "sha": HF_COMMIT, "private": False,
            "siblings": [{"rfilename": name} for name in files]}
    api, prefix = ("datasets", "datasets/") if repo_type == "dataset" else ("models", "")
    srv.add(f"/api/{api}/{repo}/revision/main", info)
    srv.add(f"/api/{api}/{repo}/revision/{HF_COMMIT}", info)
    srv.add(f"/api/{api}/{repo}/tree/{HF_COMMIT}", [
        {"type": "file", "path": name, "size": len(data),
         "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()} for name, data in files.items()])
    for name, data in files.items():
        headers = {"X-Repo-Commit": HF_COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        for rev in ("main", HF_COMMIT):
            srv.add(f"/{prefix}{repo}/resolve/{rev}/{name}", data, headers=headers)
    return files
