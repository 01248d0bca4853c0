"""The web page: static files, a JSON snapshot and a server-sent-event stream.

Standard library only (ThreadingHTTPServer). Serves on localhost by default; the page never
receives broker credentials, only the data the dashboard derived from the messages. Every
request is checked against `auth.Access` first: a Host header the dashboard is not known by
is refused (DNS rebinding), and with a login file or a trusted proxy header every page but
the login form, its style sheet and /healthz needs a signed-in session.
"""
from __future__ import annotations

import html
import json
import logging
import queue
import time
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from medge import DISCLAIMER, __version__
from medge.dashboard.auth import SESSION_COOKIE, Access
from medge.dashboard.service import CLOSE, DashboardService

log = logging.getLogger("medge.dashboard")

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PUBLIC_PATHS = ("/login", "/static/style.css", "/healthz")  # reachable without a session
KEEPALIVE_S = 15.0
MAX_FORM_BYTES = 4096
FAILED_LOGIN_DELAY_S = 0.5
SECURITY_HEADERS = {
    # Everything the page needs comes from this server; nothing from a CDN.
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def render_page(name: str, **values: str) -> bytes:
    page = (STATIC_DIR / name).read_text(encoding="utf-8")
    for key, value in {"DISCLAIMER": DISCLAIMER, "VERSION": __version__, **values}.items():
        page = page.replace("{{" + key + "}}", html.escape(value))
    return page.encode()


def render_index(signed_in_as: str | None = None) -> bytes:
    page = render_page("index.html", USER=signed_in_as or "")
    return page.replace(b"<form id=\"logout\" hidden", b"<form id=\"logout\"") if signed_in_as else page


class DashboardHandler(BaseHTTPRequestHandler):
    server_version = f"medge-dashboard/{__version__}"
    service: DashboardService  # set on the subclass made by make_server
    access: Access

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ access
    def _session_token(self) -> str | None:
        try:
            cookie = SimpleCookie(self.headers.get("Cookie") or "")
        except CookieError:
            return None
        morsel = cookie.get(SESSION_COOKIE)
        return morsel.value if morsel else None

    def _user(self) -> str | None:
        return (self.access.proxy_user(self.client_address[0], self.headers)
                or self.access.sessions.user(self._session_token()))

    def _admitted(self, path: str) -> bool:
        """False when the request was answered with a refusal (bad Host, no session)."""
        if not self.access.host_allowed(self.headers.get("Host")):
            log.warning("refused a request for Host %r from %s (not in the allow-list; see --allowed-host)",
                        (self.headers.get("Host") or "")[:100], self.client_address[0])
            self._send(b"host not allowed: this dashboard is not known by that name (see --allowed-host)\n",
                       "text/plain; charset=utf-8", HTTPStatus.FORBIDDEN)
            return False
        if not self.access.login_required or path in PUBLIC_PATHS or self._user():
            return True
        if path.startswith("/api/"):
            self._send(b"login required\n", "text/plain; charset=utf-8", HTTPStatus.UNAUTHORIZED)
        else:
            self._redirect("/login")
        return False

    # ------------------------------------------------------------------ requests
    def do_GET(self):  # noqa: N802 - the stdlib's name
        path = urlsplit(self.path).path
        if not self._admitted(path):
            return None
        if path in ("/", "/index.html"):
            return self._send(render_index(self._user() if self.access.login_required else None),
                              "text/html; charset=utf-8")
        if path == "/login":
            return self._login_page(failed="failed" in parse_qs(urlsplit(self.path).query))
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

    def do_POST(self):  # noqa: N802 - the stdlib's name
        path = urlsplit(self.path).path
        if not self._admitted(path):
            return None
        if path == "/login":
            return self._login()
        if path == "/logout":
            self.access.sessions.end(self._session_token())
            return self._redirect("/login", cookie=f"{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict")
        self._send(b"not found\n", "text/plain", HTTPStatus.NOT_FOUND)

    def _login_page(self, failed: bool = False, status: HTTPStatus = HTTPStatus.OK):
        if not self.access.users:
            if self.access.login_required:  # only the reverse proxy signs users in
                return self._send(b"sign in through the site's reverse proxy\n", "text/plain; charset=utf-8",
                                  HTTPStatus.UNAUTHORIZED)
            return self._redirect("/")
        message = "Wrong user name or password." if failed else ""
        self._send(render_page("login.html", MESSAGE=message), "text/html; charset=utf-8", status)

    def _login(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM_BYTES or not self.access.users:
            return self._send(b"bad login request\n", "text/plain", HTTPStatus.BAD_REQUEST)
        form = parse_qs(self.rfile.read(length).decode("utf-8", errors="replace"))
        user, password = (form.get(key, [""])[0] for key in ("user", "password"))
        token = self.access.login(user, password)
        if token is None:
            log.warning("failed dashboard login for %r from %s", user[:64], self.client_address[0])
            time.sleep(FAILED_LOGIN_DELAY_S)
            return self._redirect("/login?failed=1")
        log.info("dashboard login: %s from %s", user, self.client_address[0])
        self._redirect("/", cookie=f"{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; "
                                   f"Max-Age={int(self.access.sessions.ttl_s)}")

    # ------------------------------------------------------------------ responses
    def _redirect(self, location: str, cookie: str | None = None):
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.send_header("Cache-Control", "no-store")
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()

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


def make_server(service: DashboardService | None, host: str = "127.0.0.1", port: int = 8080,
                access: Access | None = None) -> ThreadingHTTPServer:
    """Binds the port; `service` may be set later on `server.RequestHandlerClass.service`."""
    handler = type("BoundDashboardHandler", (DashboardHandler,),
                   {"service": service, "access": access or Access(bind=host)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
