"""The dashboard under attack, as a process behind real HTTP and a real Mosquitto: a DNS
rebinding Host header, oversized messages, a page download that must stay small, and the
optional login (password file from `medge dashboard hash-password`, or a reverse proxy's
user header) in real Chromium."""
import http.client
import json
import subprocess
import sys

from playwright.sync_api import expect

from tests.fixtures.broker import wait_until
from tests.fixtures.dashboard import DashboardProcess, result_payload, status_payload

TIMEOUT_MS = 15_000


def request(port: int, path: str, host: str | None = None, method: str = "GET", body: bytes | None = None,
            headers: dict | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest(method, path, skip_host=True)
    connection.putheader("Host", host or f"127.0.0.1:{port}")
    for name, value in {**(headers or {}), **({"Content-Length": str(len(body))} if body is not None else {})}.items():
        connection.putheader(name, value)
    connection.endheaders(body)
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


def test_a_host_header_the_dashboard_is_not_known_by_is_refused(broker, tmp_path):
    dashboard = DashboardProcess(broker.url, tmp_path / "h.sqlite",
                                 extra=["--allowed-host", "dashboard.hospital.example"]).start()
    try:
        port = dashboard.port
        # DNS rebinding: an attacker's name that now resolves to 127.0.0.1
        for evil in (f"attacker.example:{port}", "attacker.example", f"localhost.attacker.example:{port}"):
            for path in ("/", "/api/state", "/api/events"):
                refused = request(port, path, host=evil)
                assert refused.status == 403, (evil, path)
                assert b"results" not in refused.body and b"host not allowed" in refused.body
        for good in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}",
                     f"dashboard.hospital.example:{port}", "10.1.2.3:8080"):
            assert request(port, "/api/state", host=good).status == 200, good
        assert "refused a request for Host 'attacker.example" in dashboard.log.read_text()
    finally:
        dashboard.stop()


def test_oversized_messages_are_dropped_as_invalid_and_the_page_download_stays_small(broker, publisher, dashboard):
    publisher.send("status", status_payload("icu", "xr-1", "online"), retain=True)
    for index in range(20):  # the review's attack: twenty 10 MB events (here 2 MB: the same path, faster)
        publisher.raw("medge/icu/xr-1/result", b'{"schema": "medge.result/1", "n": %d, "x": "' % index
                      + b"A" * 2_000_000 + b'"}')
    bloated = 0
    for index in range(520):  # valid payloads, each bloated with a long reason, under the size cap
        payload = result_payload("icu", "xr-1", 0.0, status="not_applicable")
        payload["reason"] = f"{index} " + "R" * 50_000
        publisher.send("result", payload)
        bloated += 1
    state = dashboard.wait_for(lambda s: s["totals"].get("results", 0) == bloated
                               and s["totals"].get("invalid", 0) == 20, timeout=60, what="every message")
    invalid = [row for row in state["errors"] if row["invalid"]]
    assert len(invalid) == 20
    assert all("bytes dropped: larger than the 65536-byte limit" in row["message"] for row in invalid)
    assert all(len(row["raw"]) <= 200 for row in invalid)
    assert len(state["results"]) == 500  # the feed is capped...
    assert all(len(row["reason"]) <= 301 for row in state["results"])  # ...and so is device text
    size = len(request(dashboard.port, "/api/state").body)
    assert size < 1_000_000, f"/api/state is {size} bytes"
    print(f"/api/state after 20 x 2 MB and {bloated} x 50 kB messages: {size} bytes")


def hash_line(user: str, password: str) -> str:
    done = subprocess.run([sys.executable, "-m", "medge", "dashboard", "hash-password", user],
                          input=f"{password}\n{password}\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith(f"{user}:scrypt$") and password not in line
    return line


def test_login_is_required_when_configured_and_chromium_signs_in(broker, publisher, tmp_path, page):
    logins = tmp_path / "logins"
    logins.write_text("# dashboard users\n" + hash_line("alice", "correct horse battery") + "\n")
    short = subprocess.run([sys.executable, "-m", "medge", "dashboard", "hash-password", "bob", "--password", "abc"],
                           capture_output=True, text=True, timeout=60)
    assert short.returncode == 1 and short.stderr.strip() == "Error: password: use at least 8 characters"
    dashboard = DashboardProcess(broker.url, tmp_path / "h.sqlite", extra=["--login-file", str(logins)])
    dashboard.start(wait_connected=False)
    try:
        port = dashboard.port
        assert request(port, "/api/state").status == 401
        assert request(port, "/api/events").status == 401
        front = request(port, "/")
        assert front.status == 303 and front.getheader("Location") == "/login"
        assert request(port, "/healthz").status == 200 and request(port, "/static/style.css").status == 200

        def login(password: str):
            body = f"user=alice&password={password.replace(' ', '+')}".encode()
            return request(port, "/login", method="POST", body=body,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})

        wrong = login("wrong password")
        assert wrong.status == 303 and wrong.getheader("Location") == "/login?failed=1"
        assert wrong.getheader("Set-Cookie") is None
        right = login("correct horse battery")
        cookie = right.getheader("Set-Cookie")
        assert right.status == 303 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        session = cookie.split(";")[0]
        assert request(port, "/api/state", headers={"Cookie": session}).status == 200
        assert request(port, "/api/state", headers={"Cookie": "medge_session=forged"}).status == 401

        publisher.send("status", status_payload("icu", "xr-1", "online"), retain=True)
        publisher.send("result", result_payload("icu", "xr-1", 0.93))
        page.goto(dashboard.url)
        expect(page).to_have_url(f"{dashboard.url}/login")
        page.fill("#login-user", "alice")
        page.fill("#login-password", "not it")
        page.click("#login-submit")
        expect(page.locator("#login-message")).to_have_text("Wrong user name or password.", timeout=TIMEOUT_MS)
        page.fill("#login-user", "alice")
        page.fill("#login-password", "correct horse battery")
        page.click("#login-submit")
        expect(page.locator("#live-badge")).to_have_text("live", timeout=TIMEOUT_MS)
        expect(page.locator("#results-body tr")).to_have_count(1, timeout=TIMEOUT_MS)
        expect(page.locator('article.device[data-device="icu/xr-1"] .badge')).to_have_text("online")
        page.click("#logout button")
        expect(page).to_have_url(f"{dashboard.url}/login")
        assert page.console_errors == []
    finally:
        dashboard.stop()


def test_a_trusted_reverse_proxy_header_signs_users_in(broker, tmp_path):
    dashboard = DashboardProcess(broker.url, tmp_path / "h.sqlite",
                                 extra=["--trusted-proxy-header", "X-Remote-User"]).start(wait_connected=False)
    try:
        assert request(dashboard.port, "/api/state").status == 401
        assert request(dashboard.port, "/api/state", headers={"X-Remote-User": "alice"}).status == 200
        assert request(dashboard.port, "/", headers={"X-Remote-User": ""}).status == 303
    finally:
        dashboard.stop()


def test_a_bad_login_file_is_one_line(tmp_path):
    bad = tmp_path / "logins"
    bad.write_text("alice:plaintext\n")
    done = subprocess.run([sys.executable, "-m", "medge", "dashboard", "--login-file", str(bad), "--port", "0",
                           "--db", str(tmp_path / "h.sqlite")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"Error: --login-file {bad}: line 1: not a scrypt$N$r$p$SALT$HASH value")


def test_binding_beyond_localhost_without_a_login_warns(broker, tmp_path):
    dashboard = DashboardProcess(broker.url, tmp_path / "h.sqlite", extra=["--host", "0.0.0.0"]).start()
    try:
        wait_until(lambda: "without a login" in dashboard.log.read_text(), 10, "the warning")
        assert json.loads(request(dashboard.port, "/api/state").body)["broker"]["connected"]
    finally:
        dashboard.stop()
