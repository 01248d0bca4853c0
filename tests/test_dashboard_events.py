"""The dashboard's message handling without a network: parsing against the schemas, the
state fold, alerts, de-duplication and the SQLite history."""
import json

from medge.dashboard.alerts import AlertRules
from medge.dashboard.events import INVALID, parse_message
from medge.dashboard.state import DashboardState
from medge.dashboard.store import HistoryStore
from tests.fixtures.dashboard import MODEL, error_payload, heartbeat_payload, result_payload, status_payload


def message(kind, payload, prefix="medge"):
    return parse_message(f"{prefix}/{payload['site']}/{payload['device']}/{kind}", json.dumps(payload).encode(),
                         prefix)


def test_valid_payloads_keep_their_kind_and_message_id():
    result = result_payload("icu", "xr-1", 0.8)
    for kind, payload in [("result", result), ("status", status_payload("icu", "xr-1", "online")),
                          ("heartbeat", heartbeat_payload("icu", "xr-1")),
                          ("error", error_payload("icu", "xr-1", "x"))]:
        event = message(kind, payload)
        assert (event.kind, event.site, event.device, event.problem) == (kind, "icu", "xr-1", None)
    assert message("result", result).id == result["id"]


def test_bad_messages_become_invalid_events_with_a_reason():
    good = result_payload("icu", "xr-1", 0.8)
    cases = {
        b"{not json": "not JSON",
        b"[1, 2]": "a JSON object was expected",
        json.dumps({**good, "schema": "medge.result/2"}).encode(): "unknown schema version 'medge.result/2'",
        json.dumps({**good, "score": 1.5}).encode(): "score",
        json.dumps({k: v for k, v in good.items() if k != "model"}).encode(): "'model' is a required property",
    }
    for raw, reason in cases.items():
        event = parse_message("medge/icu/xr-1/result", raw)
        assert event.kind == INVALID and reason in event.problem, (raw, event.problem)
        assert (event.site, event.device) == ("icu", "xr-1")
    stray = parse_message("medge/icu/result", b"{}")
    assert stray.kind == INVALID and "unexpected topic" in stray.problem
    assert parse_message("plant/a/b/result", json.dumps(good).encode(), prefix="plant").kind == "result"
    # messages to a device (the site ACL reserves .../commands/#) are not device events
    assert parse_message("medge/icu/xr-1/commands/reload", b"{}") is None


def test_state_folds_devices_results_alerts_and_drops_duplicates():
    state = DashboardState()
    state.apply(message("status", status_payload("icu", "xr-1", "online")))
    state.apply(message("status", status_payload("er", "xr-2", "online", model={**MODEL, "version": "2.0.0"})))
    positive = message("result", result_payload("icu", "xr-1", 0.91, threshold=0.4))
    assert state.apply(positive)[1][0] == "alert"
    assert state.apply(positive) is None  # a QoS 1 re-delivery
    state.apply(message("result", result_payload("icu", "xr-1", 0.1, threshold=0.4)))
    state.apply(message("status", status_payload("icu", "xr-1", "offline", reason="connection lost")))
    snap = state.snapshot()
    devices = {d["key"]: d for d in snap["devices"]}
    assert devices["icu/xr-1"]["state"] == "offline" and devices["icu/xr-1"]["results"] == 2
    assert devices["icu/xr-1"]["positives"] == 1 and devices["icu/xr-1"]["threshold"] == 0.4
    assert snap["versions"]["mismatch"] and sum(d["version_mismatch"] for d in devices.values()) == 1
    assert [a["kind"] for a in snap["alerts"]] == ["positive", "offline"]
    assert "pneumonia (score 0.91 >= threshold 0.40) on icu/xr-1" in snap["alerts"][0]["message"]
    assert len(snap["results"]) == 2 and sum(m["results"] for m in snap["per_minute"]) == 2
    assert sum(devices["icu/xr-1"]["score_bins"]) == 2


def test_an_error_burst_raises_one_alert_per_window():
    state = DashboardState(AlertRules(error_burst_count=3, error_burst_window_s=60))
    kinds = []
    for index in range(7):
        event = message("error", error_payload("icu", "xr-1", f"bad input {index}"))
        kinds += [name for name, _ in state.apply(event) if name == "alert"]
    assert kinds == ["alert"]
    assert "3 errors in 60 s from icu/xr-1" in state.snapshot()["alerts"][0]["message"]


def test_latency_comes_from_heartbeats_and_falls_back_to_results():
    state = DashboardState()
    for total in (10, 20, 30, 40, 100):
        state.apply(message("result", result_payload("icu", "xr-1", 0.2, total_ms=total)))
    assert state.summary()["devices"][0]["latency_ms"] == {"p50": 30, "p95": 100, "from": "results"}
    state.apply(message("heartbeat", heartbeat_payload("icu", "xr-1", p50=12.0, p95=18.0)))
    assert state.summary()["devices"][0]["latency_ms"] == {"p50": 12.0, "p95": 18.0, "from": "heartbeat"}


def test_history_store_drops_duplicates_and_replays_the_same_state(tmp_path):
    events = [message("status", status_payload("icu", "xr-1", "online")),
              message("result", result_payload("icu", "xr-1", 0.95)),
              message("error", error_payload("icu", "xr-1", "truncated file")),
              parse_message("medge/icu/xr-1/result", b"garbage"),
              message("status", status_payload("icu", "xr-1", "offline", reason="connection lost"))]
    store = HistoryStore(tmp_path / "h.sqlite")
    first = DashboardState()
    for event in events:
        assert store.add(event)
        first.apply(event)
    assert not store.add(events[1])
    for beat in range(3):  # only the latest heartbeat per device is kept
        store.add(message("heartbeat", heartbeat_payload("icu", "xr-1", processed=beat)))
    assert store.count("heartbeat") == 1
    store.close()

    replayed = DashboardState()
    reopened = HistoryStore(tmp_path / "h.sqlite")
    for event in reopened.replay():
        replayed.apply(event)
    before, after = first.snapshot(), replayed.snapshot()
    for key in ("results", "errors", "alerts"):
        assert after[key] == before[key]
    assert after["devices"][0]["state"] == "offline"
    assert after["devices"][0]["counters"]["processed"] == 2


def test_an_online_device_without_heartbeats_turns_stale():
    state = DashboardState(stale_after_s=90)
    beat = message("heartbeat", heartbeat_payload("icu", "xr-1"))
    state.apply(beat)
    assert state.summary(now=beat.received + 30)["devices"][0]["stale"] is False
    stale = state.summary(now=beat.received + 91)["devices"][0]
    assert stale["state"] == "online" and stale["stale"] is True and stale["heartbeat_age_s"] > 90


def test_the_schemas_hold_the_contract_the_docs_describe():
    from medge.edge.payloads import last_will_payload

    good = result_payload("icu", "xr-1", 0.8)
    classified_without_class = {k: v for k, v in good.items() if k != "class"}
    outside = result_payload("icu", "xr-1", 0, status="not_applicable")
    cases = {
        "result": [(classified_without_class, "result payload does not match medge.result/1: payload: 'class' is a "
                                              "required property"),
                   ({k: v for k, v in outside.items() if k != "reason"}, "'reason' is a required property"),
                   ({**outside, "score": 0.3}, "score: not allowed here")],
        "status": [({**status_payload("icu", "xr-1", "online"), "patient": "x"}, "'patient' was unexpected"),
                   ({**last_will_payload(status_payload("icu", "xr-1", "offline")), "ts": good["ts"]},
                    "ts: not allowed here"),
                   ({k: v for k, v in status_payload("icu", "xr-1", "online").items() if k != "ts"},
                    "'ts' is a required property")],
        "heartbeat": [({**heartbeat_payload("icu", "xr-1"), "extra": 1}, "'extra' was unexpected")],
        "error": [({**error_payload("icu", "xr-1", "x"), "patient_name": "x"}, "'patient_name' was unexpected")],
    }
    for kind, bad in cases.items():
        for payload, reason in bad:
            event = message(kind, payload)
            assert event.kind == INVALID and reason in event.problem, (kind, event.problem)
    # the device's own last will validates, and carries no ts to be mis-ordered by
    will = last_will_payload(status_payload("icu", "xr-1", "offline", reason="connection lost"))
    assert message("status", will).kind == "status" and "ts" not in will and will["last_will"] is True


def test_non_finite_numbers_are_refused_even_when_parsed_leniently():
    from medge.edge.schemas import payload_problem

    good = result_payload("icu", "xr-1", 0.8)
    for text in ("NaN", "Infinity", "-Infinity", "1e999"):
        raw = json.dumps(good).replace(f'"score": {good["score"]}', f'"score": {text}').encode()
        event = parse_message("medge/icu/xr-1/result", raw)
        assert event.kind == INVALID and "not JSON" in event.problem, (text, event.problem)
    # a payload built in memory (json.loads accepts NaN) is refused by the one shared check
    assert payload_problem("result", {**good, "score": float("nan")}).endswith("payload/score: not a finite number")


def test_a_new_message_kind_is_one_registry_row_plus_its_schema():
    from medge.edge.comms.topics import KINDS, ROLES, parse_topic, topic
    from medge.edge.schemas import SCHEMA_DIR

    for name, kind in KINDS.items():
        assert (SCHEMA_DIR / f"{name}.schema.json").is_file() and kind.role in ROLES
        assert kind.schema_id == f"medge.{name}/1"
        assert parse_topic(topic("medge", "s", "d", name)).kind == name
    assert parse_topic("medge/s/d/commands/reload").command
    assert parse_topic("medge/s/d/other").kind is None and parse_topic("other/s/d/result").site is None


def test_devices_beyond_the_limit_and_long_texts_stay_out_of_the_state():
    state = DashboardState(max_devices=2)
    for device in ("xr-1", "xr-2", "xr-3"):
        state.apply(message("status", status_payload("icu", device, "online",
                                                     model={**MODEL, "name": "n" * 10_000})))
    snap = state.snapshot()
    assert [d["key"] for d in snap["devices"]] == ["icu/xr-1", "icu/xr-2"]
    assert len(snap["devices"][0]["model"]["name"]) == 301
    [dropped] = snap["errors"]
    assert dropped["invalid"] and dropped["device"] == "xr-3" and "at most 2 devices" in dropped["message"]
