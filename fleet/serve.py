"""A small HTTP server for one bundle archive while a rollout runs (`medge fleet deploy` without
--url): GET and HEAD with single byte ranges (`Range: bytes=START-[END]`, 206 Partial Content),
so a device whose download broke off resumes where it stopped. Integrity does not rest on the
transport: the device checks the archive against the sha256 in the signed command.
"""
from __future__ import annotations

import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1 << 16


class ArchiveServer:
    """Serves `archive` at `/<name>` on host:port (port 0: a free one) in a background thread."""

    def __init__(self, archive: Path, host: str = "0.0.0.0", port: int = 0, name: str | None = None):
        self.archive = Path(archive)
        self.name = name or self.archive.name
        # (method, file name, Range header, status) of each request: what a test or a log looks at
        self.requests: list[tuple[str, str, str | None, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # the deploy command prints progress itself
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                name = self.path.split("?")[0].lstrip("/")
                path = server.file_for(name)
                wanted = self.headers.get("Range")
                if path is None:
                    server.requests.append((self.command, name, wanted, 404))
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                status = HTTPStatus.OK
                if wanted:
                    match = RANGE.match(wanted.strip())
                    if match and (match.group(1) or match.group(2)):
                        if match.group(1):
                            start = int(match.group(1))
                            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                        else:  # bytes=-N: the last N bytes
                            start = max(0, size - int(match.group(2)))
                        if start >= size or start > end:
                            server.requests.append((self.command, name, wanted, 416))
                            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                            self.send_header("Content-Range", f"bytes */{size}")
                            self.send_header("Content-Length", "0")
                            self.end_headers()
                            return
                        status = HTTPStatus.PARTIAL_CONTENT
                server.requests.append((self.command, name, wanted, int(status)))
                self.send_response(status)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                if status == HTTPStatus.PARTIAL_CONTENT:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if not body:
                    return
                with open(path, "rb") as handle:
                    handle.seek(start)
                    if not server.send_body(self.wfile, handle, end - start + 1, name):
                        self.close_connection = True  # a short body: the connection cannot carry another


        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fleet-archive-server", daemon=True)

    def file_for(self, name: str) -> Path | None:
        """The file a request names: the one archive, nothing else."""
        return self.archive if name == self.name else None

    def send_body(self, wfile, handle, length: int, name: str) -> bool:
        """Copy `length` bytes of `handle` to the client; False when it went away before the end."""
        while length > 0:
            data = handle.read(min(CHUNK, length))
            if not data:
                return False
            try:
                wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                return False  # the device resumes with a Range request
            length -= len(data)
        return True

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, host: str) -> str:
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/{self.name}"

    def start(self) -> ArchiveServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ArchiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
