"""Fleet rollout on real daemon processes (`medge edge run --fleet-keys ...`), a real Mosquitto,
a real HTTP server serving the bundle archives and real chest X-rays in the watch folders:
refusals (a tampered bundle on every device, an untrusted operator key, a failing self-test),
shadow runs (disagreement -> automatic rollback, agreement -> promotion), a promotion whose
results carry the new model's sha256, a rollback command, and SIGKILL during the switch."""
from __future__ import annotations

import json
import threading
import time

import pytest

from medge.edge.bundle import load_bundle
from medge.edge.schemas import payload_problem
from tests.fixtures.broker import Subscriber, wait_until
from tests.fixtures.fleet import (
    FolderServer,
    deploy_payload,
    drop_xrays,
    fleet_flags,
    fleet_reports,
    make_candidate,
    make_keys,
    pack,
    publish_command,
    wait_for_state,
)


@pytest.fixture
def keys(tmp_path):
    return make_keys(tmp_path / "keys")


@pytest.fixture
def first(int8_bundle, keys, tmp_path):
    """Version 1, signed by the bundle key: what every daemon starts with."""
    return make_candidate(int8_bundle, tmp_path / "bundles" / "v1", version="1", key=keys["bundle"])


def model_sha(bundle) -> str:
    return load_bundle(bundle).artifact().sha256


def results(subscriber, device: str) -> list[dict]:
    return [p for p in subscriber.unique("result").values() if p["device"] == device]


def start(edge_daemon, tmp_path, bundle, broker, keys, device: str):
    return edge_daemon(bundle, broker.url, *fleet_flags(keys), device=device, watch=tmp_path / device / "in",
                       state_dir=tmp_path / device / "state")


def test_refusals_keep_the_old_model_on_every_device(tmp_path, broker, keys, first, int8_bundle, edge_daemon):
    sub = Subscriber(broker.port)
    daemons = {device: start(edge_daemon, tmp_path, first, broker, keys, device) for device in ("dev1", "dev2")}
    # A bundle changed after signing (its threshold edited), packed as the operator would pack it.
    tampered = make_candidate(int8_bundle, tmp_path / "bundles" / "v2-tampered", version="2", key=keys["bundle"])
    manifest = json.loads((tampered / "medge.json").read_text())
    manifest["threshold"] = 0.5
    (tampered / "medge.json").write_text(json.dumps(manifest, indent=2) + "\n")
    failing = make_candidate(int8_bundle, tmp_path / "bundles" / "v3-selftest", version="3", key=keys["bundle"],
                             expected_shift=0.1)
    good = make_candidate(int8_bundle, tmp_path / "bundles" / "v4", version="4", key=keys["bundle"])
    served = tmp_path / "served"
    archives = {bundle.name: pack(bundle, served) for bundle in (tampered, failing, good)}
    try:
        with FolderServer(served) as server:
            for device in daemons:
                wait_for_state(sub, device, "idle")
                command = deploy_payload(archives["v2-tampered"], server.url_of(archives["v2-tampered"]), tampered,
                                         site="test", device=device, rollout="r-tampered")
                publish_command(broker.port, command, keys["operator"])
            for device in daemons:
                report = wait_for_state(sub, device, "refused")
                assert report["rollout"] == "r-tampered" and "signature does not match" in report["reason"]
                assert report["active"]["version"] == "1" and payload_problem("fleet", report) is None
            # an operator key the devices do not trust
            command = deploy_payload(archives["v4"], server.url_of(archives["v4"]), good, site="test", device="dev2",
                                     rollout="r-stranger")
            publish_command(broker.port, command, keys["stranger"])
            report = wait_for_state(sub, "dev2", "refused", command_id=command["id"])
            assert "not a trusted operator key" in report["reason"]
            # a manifest whose expected self-test scores were changed (and re-signed)
            command = deploy_payload(archives["v3-selftest"], server.url_of(archives["v3-selftest"]), failing,
                                     site="test", device="dev1", rollout="r-selftest")
            publish_command(broker.port, command, keys["operator"])
            report = wait_for_state(sub, "dev1", "refused", command_id=command["id"])
            assert "self-test failed" in report["reason"] and report["active"]["version"] == "1", report
        for device in daemons:
            drop_xrays(tmp_path / device / "in", 2)
        sub.wait_for(lambda s: all(len(results(s, d)) == 2 for d in daemons), 30, "results after the refusals")
        for device, daemon in daemons.items():
            assert {r["model"]["version"] for r in results(sub, device)} == {"1"}
            assert {r["model"]["sha256"] for r in results(sub, device)} == {model_sha(first)}
            assert daemon.running
        kinds = [(e["device"], e["kind"]) for e in sub.payloads("error")]
        assert kinds.count(("dev1", "fleet_bundle_refused")) == 2 and ("dev2", "fleet_command_refused") in kinds
        assert not list((tmp_path / "dev1" / "state" / "fleet" / "bundles").iterdir())  # refused ones are gone
        # the retained command is delivered again after a restart: a replay is not handled again
        def handled(s) -> tuple[int, int]:
            steps = [r for r in fleet_reports(s, "dev1") if r["state"] not in ("idle", "refused")]
            return len(steps), len([e for e in s.payloads("error") if e["device"] == "dev1"])

        before = handled(sub)
        assert daemons["dev1"].stop() == 0
        start(edge_daemon, tmp_path, first, broker, keys, "dev1")
        sub.wait_for(lambda s: len([p for p in s.payloads("status") if p.get("device") == "dev1"
                                    and p.get("state") == "online"]) >= 2, 30, "dev1 back online")
        time.sleep(2)
        assert handled(sub) == before
        assert fleet_reports(sub, "dev1")[-1]["command_id"] == command["id"]  # its last report, restated
    finally:
        sub.close()


def test_shadow_rollback_promotion_new_sha_and_rollback_command(tmp_path, broker, keys, first, int8_bundle,
                                                                onnx_bundle, edge_daemon):
    sub = Subscriber(broker.port)
    daemon = start(edge_daemon, tmp_path, first, broker, keys, "dev1")
    inbox = tmp_path / "dev1" / "in"
    # decides differently: every sample X-ray negative at this operating point
    stricter = make_candidate(int8_bundle, tmp_path / "bundles" / "v2", version="2", key=keys["bundle"],
                              threshold=0.999)
    same = make_candidate(int8_bundle, tmp_path / "bundles" / "v3", version="3", key=keys["bundle"])
    onnx = make_candidate(onnx_bundle, tmp_path / "bundles" / "v4", version="4", key=keys["bundle"])
    served = tmp_path / "served"
    archives = {bundle.name: pack(bundle, served) for bundle in (stricter, same, onnx)}
    sent = 0

    def feed(count: int) -> None:
        nonlocal sent
        drop_xrays(inbox, count, start=sent)
        sent += count
        sub.wait_for(lambda s: len(results(s, "dev1")) == sent, 30, f"{sent} results")

    def deploy(bundle, rollout: str, state: str, shadow: int = 0) -> dict:
        command = deploy_payload(archives[bundle.name], server.url_of(archives[bundle.name]), bundle, site="test",
                                 device="dev1", rollout=rollout, shadow=shadow)
        publish_command(broker.port, command, keys["operator"])
        wait_for_state(sub, "dev1", state, command_id=command["id"])
        return command

    try:
        with FolderServer(served) as server:
            wait_for_state(sub, "dev1", "idle")
            command = deploy(stricter, "r-shadow-bad", "shadow", shadow=6)
            feed(6)
            report = wait_for_state(sub, "dev1", "rolled_back", command_id=command["id"])
            assert report["shadow"]["seen"] == 6 and report["shadow"]["agreement"] < 0.95, report
            shadows = [p for p in sub.payloads("shadow") if p["rollout"] == "r-shadow-bad"]
            assert len(shadows) == 6 and not all(p["agree"] for p in shadows)
            negative = [c for c in load_bundle(stricter).classes if c != load_bundle(stricter).positive_class]
            assert {p["candidate"]["label"] for p in shadows} == set(negative)  # 0.999: nothing is positive
            assert all(payload_problem("shadow", p) is None for p in shadows)
            assert {r["model"]["version"] for r in results(sub, "dev1")} == {"1"}  # shadow answers never results

            command = deploy(same, "r-shadow-good", "shadow", shadow=3)
            feed(3)
            report = wait_for_state(sub, "dev1", "promoted", command_id=command["id"])
            assert report["shadow"] is None and report["active"]["version"] == "3"
            assert report["previous"]["version"] == "1"
            feed(2)
            assert [r["model"]["version"] for r in results(sub, "dev1")][-2:] == ["3", "3"]

            command = deploy(onnx, "r-onnx", "promoted")
            feed(2)
            latest = results(sub, "dev1")[-2:]
            assert {r["model"]["sha256"] for r in latest} == {model_sha(onnx)} != {model_sha(same)}
            assert {r["model"]["format"] for r in latest} == {"onnx-int8"}
            # the retained status and the heartbeat follow the switch
            sub.wait_for(lambda s: s.payloads("status")[-1].get("model", {}).get("version") == "4", 10, "status")
            sub.wait_for(lambda s: s.payloads("heartbeat")[-1]["model"]["version"] == "4", 10, "heartbeat model")
            assert sub.payloads("heartbeat")[-1]["fleet"]["state"] == "promoted"
            assert payload_problem("heartbeat", sub.payloads("heartbeat")[-1]) is None

            rollback = {"schema": "medge.command/1", **{k: v for k, v in command.items() if k not in ("bundle",)}}
            rollback.update(action="rollback", id="rollback-0001", rollout="r-back")
            publish_command(broker.port, rollback, keys["operator"])
            report = wait_for_state(sub, "dev1", "rolled_back", command_id="rollback-0001")
            assert report["active"]["version"] == "3"
            feed(1)
            assert results(sub, "dev1")[-1]["model"]["sha256"] == model_sha(same)
        assert daemon.running and daemon.stop() == 0
    finally:
        sub.close()


@pytest.mark.parametrize("kill_at", ["download", "switch"])
def test_sigkill_during_the_rollout_then_restart_runs_a_valid_model_and_loses_no_input(kill_at, tmp_path, broker, keys,
                                                                                     first, onnx_bundle, edge_daemon):
    """SIGKILL half way through the download (the restart resumes it with a Range request), or
    the moment the switch is reported (inputs streaming through it). The instant between the
    pointer's rename and the worker's swap is covered by the store tests and the start-up
    fallback in tests/test_fleet_device_units.py."""
    sub = Subscriber(broker.port)
    inbox = tmp_path / "dev1" / "in"
    daemon = start(edge_daemon, tmp_path, first, broker, keys, "dev1")
    onnx = make_candidate(onnx_bundle, tmp_path / "bundles" / "v2", version="2", key=keys["bundle"])
    archive = pack(onnx, tmp_path / "served")
    total = 40
    stream = threading.Thread(target=lambda: [drop_xrays(inbox, 1, start=i) or time.sleep(0.1) for i in range(total)])
    try:
        with FolderServer(archive.parent) as server:
            if kill_at == "download":
                server.bytes_per_s = archive.stat().st_size / 3  # about 3 s
            wait_for_state(sub, "dev1", "idle")
            command = deploy_payload(archive, server.url_of(archive), onnx, site="test", device="dev1", rollout="r-kill")
            stream.start()
            sub.wait_for(lambda s: len(results(s, "dev1")) >= 5, 30, "the stream under way")
            publish_command(broker.port, command, keys["operator"])
            downloads = tmp_path / "dev1" / "state" / "fleet" / "downloads"
            if kill_at == "download":
                wait_until(lambda: any(p.stat().st_size > 16384 for p in downloads.glob("*.part")), 30, "a partial download")
            else:
                wait_for_state(sub, "dev1", "promoted", command_id=command["id"])
            daemon.kill()
            server.bytes_per_s = None
            if kill_at == "switch":
                # as if the kill came right after the pointer's rename, before the command was
                # recorded as done: the restart starts with the new model and finishes the command
                record = tmp_path / "dev1" / "state" / "fleet" / "commands.json"
                handled = json.loads(record.read_text())
                handled[command["id"]] = {"state": "started", "attempts": 1}
                record.write_text(json.dumps(handled))
            restarted = start(edge_daemon, tmp_path, first, broker, keys, "dev1")
            report = wait_for_state(sub, "dev1", "promoted", command_id=command["id"], timeout=60)
            assert report["active"]["version"] == "2" and report["previous"]["version"] == "1"
            if kill_at == "switch":  # the restarted daemon finished the command it found under way
                sub.wait_for(lambda s: fleet_reports(s, "dev1")[-1]["reason"] == "already the active bundle", 30,
                             "the command finished after the restart")
            if kill_at == "download":
                ranges = server.ranges(archive.name)
                assert ranges[0] is None and ranges[-1] is not None and ranges[-1].startswith("bytes="), ranges
            stream.join(30)
            wait_until(lambda: len(list((inbox / "processed").glob("*.png"))) == total, 60, "every input processed")
            sub.wait_for(lambda s: len(results(s, "dev1")) >= total, 30, "every result")
        got = results(sub, "dev1")
        by_input: dict[str, list] = {}
        for result in got:
            by_input.setdefault(result["input_ref"], []).append(result["id"])
        assert len(by_input) == total and all(len(ids) == 1 for ids in by_input.values())  # none lost or doubled
        assert {r["model"]["version"] for r in got} <= {"1", "2"}
        drop_xrays(inbox, 1, start=total)
        sub.wait_for(lambda s: len(results(s, "dev1")) == total + 1, 30, "a result after the restart")
        assert results(sub, "dev1")[-1]["model"]["sha256"] == model_sha(onnx)
        assert restarted.running and restarted.stop() == 0
    finally:
        sub.close()
