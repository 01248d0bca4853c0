"""The web page: static files, a JSON snapshot and a server-sent-event stream.

Standard library only (ThreadingHTTPServer). Serves on localhost by default; the page never
receives broker credentials, only the data the dashboard derived from the messages.
"""
from __future__ import annotations

import html
import json
import logging
import queue
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from medge import DISCLAIMER, __version__
from medge.dashboard.service import CLOSE, DashboardService

log = logging.getLogger("medge.dashboard")

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
KEEPALIVE_S = 15.0
SECURITY_HEADERS = {
    # Everything the page needs comes from this server; nothing from a CDN.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def render_index() -> bytes:
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return (page.replace("{{DISCLAIMER}}", html.escape(DISCLAIMER))
                .replace("{{VERSION}}", html.escape(__version__))).encode()


class DashboardHandler(BaseHTTPRequestHandler):
    server_version = f"medge-dashboard/{__version__}"
    service: DashboardService  # set on the subclass made by make_server

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self):  # noqa: N802 - the stdlib's name
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            return self._send(render_index(), "text/html; charset=utf-8")
        if path.startswith("/static/") and path[len("/static/"):] in STATIC_FILES:
            name = path[len("/static/"):]
            return self._send((STATIC_DIR / name).read_bytes(), STATIC_FILES[name])
        if path == "/api/state":
            return self._send(json.dumps(self.service.state.snapshot()).encode(), "application/json")
        if path == "/api/events":
            return self._stream()
        if path == "/healthz":
            return self._send(b"ok\n", "text/plain")
        self._send(b"not found\n", "text/plain", HTTPStatus.NOT_FOUND)

    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self):
        hub = self.service.hub
        client = hub.subscribe()  # before the snapshot, so nothing falls between the two
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self._event("snapshot", json.dumps(self.service.state.snapshot()))
            while True:
                try:
                    message = client.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    if not hub.connected(client):
                        return  # dropped as too slow: the browser reconnects for a fresh snapshot
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                    continue
                if message is CLOSE:
                    return
                self._event(*message)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        finally:
            hub.unsubscribe(client)

    def _event(self, name: str, data: str) -> None:
        self.wfile.write(f"event: {name}\ndata: {data}\n\n".encode())
        self.wfile.flush()


def make_server(service: DashboardService | None, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """Binds the port; `service` may be set later on `server.RequestHandlerClass.service`."""
    handler = type("BoundDashboardHandler", (DashboardHandler,), {"service": service})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
