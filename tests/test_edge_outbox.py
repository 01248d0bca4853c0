"""The durable outbox (SQLite WAL) and its publisher, against a real Mosquitto."""
import json
import sqlite3
import time

from medge.edge.comms import Publisher
from medge.edge.config import load_config
from medge.edge.outbox import Outbox, StoredOutcome
from medge.edge.payloads import encode, error_payload, status_payload
from tests.fixtures.edge import SessionSubscriber


def _messages(kind, count, start=0):
    return [(f"{index:032x}", kind, f"medge/s/d/{kind}", json.dumps({"n": index}).encode())
            for index in range(start, start + count)]


def test_messages_and_the_input_ledger_survive_a_reopen_in_order(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add(_messages("result", 3), input_key="watch:a.png",
               outcome=StoredOutcome(ok=True, error=None, result_ids=["0" * 32]))
    outbox.add(_messages("error", 1, start=3), input_key="watch:b.png",
               outcome=StoredOutcome(ok=False, error="input.png: empty file (0 bytes)", result_ids=[]))
    del outbox  # no close: as after a crash

    reopened = Outbox(tmp_path / "outbox.sqlite3")
    stored = reopened.after(0)
    assert [m.id for m in stored] == [f"{i:032x}" for i in range(4)]
    assert [json.loads(m.payload)["n"] for m in stored] == [0, 1, 2, 3]
    assert reopened.stored_outcome("watch:a.png").ok is True
    assert reopened.stored_outcome("watch:b.png").error == "input.png: empty file (0 bytes)"
    reopened.release_inputs(["watch:a.png"])
    assert reopened.stored_outcome("watch:a.png") is None
    reopened.remove([stored[0].seq, stored[2].seq])
    assert [m.id for m in reopened.after(0)] == [stored[1].id, stored[3].id]
    reopened.close()

    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_full_outbox_drops_old_error_events_first_and_never_results(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_messages=10)
    outbox.add(_messages("error", 4))
    outbox.add(_messages("result", 6, start=4))
    assert outbox.count() == 10 and outbox.has_room()  # error events are reclaimable space
    outbox.add(_messages("result", 2, start=10))
    assert outbox.dropped == 2
    remaining = [json.loads(m.payload)["n"] for m in outbox.after(0)]
    assert remaining == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]  # the two oldest errors went
    outbox.add(_messages("result", 2, start=12))
    assert outbox.count("result") == 10 and outbox.count("error") == 0
    assert not outbox.has_room()  # now inputs must wait at their source
    outbox.add(_messages("error", 1, start=14), force=True)  # the warning that says so still fits
    assert outbox.count() == 11


def test_publisher_survives_a_broker_outage_and_deletes_only_acknowledged_rows(tmp_path, broker):
    broker = broker
    config = load_config(env={}, flags={"mqtt.broker": broker.url, "site": "s", "device": "d",
                                        "state.dir": str(tmp_path)})
    consumer = SessionSubscriber(broker.port, "medge/s/d/#")
    outbox = Outbox(config.outbox_path)

    def status(state, reason):
        return status_payload(state=state, site="s", device="d", reason=reason)

    publisher = Publisher(config, outbox, status)
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        events = [error_payload(site="s", device="d", kind="test", message=f"event {i}") for i in range(5)]
        for event in events:
            outbox.add([(event["id"], "error", config.topic("error"), encode(event))])
        publisher.notify()
        consumer.wait_for(lambda s: len(s.unique("error")) == 5, 15, "first 5 events")
        deadline = time.monotonic() + 5
        while outbox.count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.count() == 0 and publisher.published == 5

        time.sleep(2.0)  # Mosquitto saves sessions every second: let it save the consumer's
        broker.kill()  # abrupt: a power cut in the server room
        later = [error_payload(site="s", device="d", kind="test", message=f"event {i}") for i in range(5, 25)]
        for event in later:
            outbox.add([(event["id"], "error", config.topic("error"), encode(event))])
        publisher.notify()
        time.sleep(1.0)
        assert outbox.count() == 20  # nothing is acknowledged while the broker is away
        broker.start()
        consumer.wait_for(lambda s: len(s.unique("error")) == 25, 30, "all 25 events after the outage")
        deadline = time.monotonic() + 10
        while outbox.count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.count() == 0
        received = [p["message"] for p in consumer.payloads("error")]
        assert list(dict.fromkeys(received)) == [f"event {i}" for i in range(25)]  # in order
        statuses = [p["state"] for p in consumer.payloads("status")]
        assert statuses.count("online") >= 2  # announced again on reconnect
    finally:
        publisher.stop()
        consumer.close()
        outbox.close()


def test_a_failed_relaxed_write_leaves_no_open_transaction(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    try:
        outbox.remove([object()])  # cannot be bound: fails inside the transaction
    except sqlite3.Error:
        pass
    else:  # pragma: no cover
        raise AssertionError("expected a binding error")
    outbox.add(_messages("result", 1))  # later writes still work
    assert outbox.count() == 1
    outbox.close()


def test_qos0_publish_acks_never_settle_a_later_outbox_row(tmp_path):
    from types import SimpleNamespace

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    config = load_config(env={}, flags={"site": "s", "device": "d", "state.dir": str(tmp_path)})
    outbox = Outbox(config.outbox_path)
    publisher = Publisher(config, outbox, lambda state, reason: status_payload(state=state, site="s", device="d"))
    success = ReasonCode(PacketTypes.PUBACK, "Success")

    class SameMidClient:  # paho's mids wrap at 65535: a heartbeat's mid comes back for an outbox row
        def publish(self, topic, payload, qos=0, retain=False):
            return SimpleNamespace(mid=7, rc=0)

    publisher.client = SameMidClient()
    publisher._publish("medge/s/d/heartbeat", b"{}", qos=0)
    publisher._on_publish(None, None, 7, success)  # paho calls on_publish for QoS 0 too
    publisher._publish("medge/s/d/result", b"{}", qos=1, seq=42)
    assert publisher._acked == [] and publisher.pending() == 1  # not acknowledged by the broker yet
    publisher._on_publish(None, None, 7, success)  # the real PUBACK
    assert publisher._acked == [42]
    outbox.close()


def test_a_corrupt_outbox_is_rebuilt_keeping_every_readable_message_in_order(tmp_path):
    import os
    import random

    from medge.edge.outbox import open_outbox

    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path)
    ids = [f"{index:032x}" for index in range(200)]
    for index, message_id in enumerate(ids):
        kind = "error" if index % 10 == 0 else "result"
        outbox.add([(message_id, kind, "medge/s/d/" + kind, os.urandom(700))], input_key=f"watch:{index}",
                   outcome=StoredOutcome(ok=True, error=None, result_ids=[message_id]))
    outbox.close()
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle:middle + 8192] = random.Random(0).randbytes(8192)  # the same damage on every run
    path.write_bytes(bytes(data))

    rebuilt_outbox, rebuild = open_outbox(path)
    assert rebuild is not None and rebuild.reason
    kept = [m.id for m in rebuilt_outbox.after(0, limit=1000)]
    assert 0 < len(kept) < 200 and kept == [i for i in ids if i in set(kept)]  # same ids, same order
    assert rebuild.recovered == len(kept) and rebuild.unreadable == 200 - len(kept)
    assert rebuild.recovered_results == sum(1 for m in rebuilt_outbox.after(0, limit=1000) if m.kind == "result")
    assert rebuilt_outbox.integrity_problem() is None
    assert rebuild.moved_to.exists() and rebuild.moved_to.read_bytes()[:100] == bytes(data[:100])
    assert "up to" in rebuild.message() and str(rebuild.unreadable) in rebuild.message()
    rebuilt_outbox.close()

    again, nothing = open_outbox(path)  # a sound outbox is opened as it is
    assert nothing is None and [m.id for m in again.after(0, limit=1000)] == kept
    again.close()
