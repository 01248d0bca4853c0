"""The dashboard survives any payload, live and in the history replay after a restart: NaN,
Infinity, 1e999, huge numbers, deep nesting, wrong types, not UTF-8, through a real
Mosquitto, and the page still renders in real Chromium. A database written by an older
version (a NaN result stored) no longer stops it from starting."""
import json
import sqlite3

from playwright.sync_api import expect

from tests.fixtures.dashboard import DashboardProcess, result_payload, status_payload

TIMEOUT_MS = 15_000


def hostile_payloads() -> list[tuple[str, bytes]]:
    good = result_payload("icu", "xr-1", 0.4)
    nan = dict(good, id="1" * 32)
    return [
        ("result", json.dumps(dict(nan, score=float("nan"))).encode()),  # Python writes NaN
        ("result", json.dumps(dict(good, id="2" * 32)).replace('"score": 0.4', '"score": Infinity').encode()),
        ("result", json.dumps(dict(good, id="3" * 32)).replace('"score": 0.4', '"score": 1e999').encode()),
        ("result", json.dumps(dict(good, id="4" * 32)).replace('"score": 0.4', '"score": ' + "9" * 5000).encode()),
        ("result", json.dumps(dict(good, id="5" * 32, probabilities={"normal": float("-inf")})).encode()),
        ("result", b"[" * 20_000 + b"]" * 20_000),
        ("result", json.dumps(dict(good, id="6" * 32, model=[])).encode()),
        ("result", json.dumps(dict(good, id="7" * 32, score="high")).encode()),
        ("status", json.dumps({"schema": "medge.status/1", "state": 5, "site": "icu", "device": "xr-1"}).encode()),
        ("status", json.dumps({"schema": ["medge.status/1"], "state": "online"}).encode()),
        ("heartbeat", json.dumps({"schema": "medge.heartbeat/1", "counters": "lots"}).encode()),
        ("error", b"\xff\xfe\x00 not utf-8"),
        ("error", b"null"),
        ("error", b'"just a string"'),
    ]


def test_any_payload_live_and_after_a_restart_on_the_same_database(broker, publisher, dashboard, page):
    publisher.send("status", status_payload("icu", "xr-1", "online"), retain=True)
    publisher.send("result", result_payload("icu", "xr-1", 0.91))
    hostile = hostile_payloads()
    for kind, raw in hostile:
        publisher.raw(f"medge/icu/xr-1/{kind}", raw)
    publisher.send("result", result_payload("icu", "xr-1", 0.12))
    state = dashboard.wait_for(lambda s: len(s["results"]) == 2 and len(s["errors"]) == len(hostile))
    problems = [row["message"] for row in state["errors"]]
    assert all(row["invalid"] for row in state["errors"])
    assert "malformed result payload: not JSON (NaN is not a JSON number)" in problems
    assert "malformed result payload: not JSON (Infinity is not a JSON number)" in problems
    assert "malformed result payload: not JSON (1e999 does not fit a finite float)" in problems
    assert "malformed result payload: nested too deeply" in problems

    dashboard.restart()  # replays the history it stored, garbage included
    raw_state = dashboard.get("/api/state")[2]
    strict = json.loads(raw_state, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert len(strict["results"]) == 2 and len(strict["errors"]) == len(hostile)
    page.goto(dashboard.url)
    expect(page.locator("#live-badge")).to_have_text("live", timeout=TIMEOUT_MS)
    expect(page.locator("#results-body tr")).to_have_count(2, timeout=TIMEOUT_MS)
    expect(page.locator("#errors-body tr.invalid")).to_have_count(len(hostile))
    expect(page.locator('article.device[data-device="icu/xr-1"] .badge')).to_have_text("online")
    publisher.send("result", result_payload("icu", "xr-1", 0.5))  # and it keeps working live
    expect(page.locator("#results-body tr")).to_have_count(3, timeout=TIMEOUT_MS)
    assert page.console_errors == []


def test_a_history_with_a_stored_nan_from_an_older_version_still_starts(broker, tmp_path, page):
    db = tmp_path / "history.sqlite"
    first = DashboardProcess(broker.url, db).start()  # creates the database
    first.stop()
    nan_result = result_payload("icu", "xr-1", 0.5)
    nan_result["score"] = float("nan")
    event = {"kind": "result", "topic": "medge/icu/xr-1/result", "site": "icu", "device": "xr-1",
             "id": nan_result["id"], "received": 1.0e9, "payload": nan_result, "problem": None, "raw": None,
             "retained": False, "extra": {}}
    with sqlite3.connect(db) as connection:  # what the old dashboard stored for a NaN score
        for row_id, text in ((nan_result["id"], json.dumps(event)), ("b" * 32, "{not json")):
            connection.execute("INSERT INTO events (id, kind, site, device, received, event) VALUES (?, ?, ?, ?, ?, ?)",
                               (row_id, "result", "icu", "xr-1", 2e9, text))
    restarted = DashboardProcess(broker.url, db).start()
    try:
        assert "2 unreadable events skipped" in restarted.log.read_text()
        page.goto(restarted.url)
        expect(page.locator("#live-badge")).to_have_text("live", timeout=TIMEOUT_MS)
        assert page.console_errors == []
    finally:
        restarted.stop()
