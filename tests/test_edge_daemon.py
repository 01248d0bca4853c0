"""`medge edge run` as a real process against a real Mosquitto: delivery, outages, SIGKILL,
last will, clean shutdown, TLS with a password, and `medge edge check`."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time

import cv2
import jsonschema
import pytest

from medge.broker import LocalBroker, free_port
from medge.edge.schemas import load_schema
from tests.fixtures.broker import wait_until
from tests.fixtures.edge import (
    PHI,
    SessionSubscriber,
    make_tls_files,
    mosquitto_password_file,
    small_xray,
    write_atomically,
    xray_dicom,
    xray_files,
)


def validate(payload: dict) -> dict:
    jsonschema.validate(payload, load_schema(payload["schema"].split(".")[1].split("/")[0]))
    return payload


def png(path, index, size=96):
    ok, data = cv2.imencode(".png", small_xray(index, size))
    return write_atomically(path, data.tobytes())


def by_input(results: list[dict]) -> dict[str, set[str]]:
    """input_ref -> the distinct message ids published for it."""
    refs: dict[str, set[str]] = {}
    for result in results:
        refs.setdefault(result["input_ref"], set()).add(result["id"])
    return refs


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_folder_results_reach_a_subscriber_and_shutdown_is_clean(tmp_path, broker, int8_bundle, edge_daemon, version):
    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#", client_id=f"consumer-{version}")
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    shutil.copy(xray_files()[0], inbox / "chest.jpeg")  # backlog: arrived while the daemon was down
    daemon = edge_daemon(int8_bundle, broker.url, "--mqtt-version", version)
    try:
        consumer.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 20, "online")
        png(inbox / "chest.png", 1, 256)
        write_atomically(inbox / "empty.jpg", b"")  # a bad input between good ones
        xray_dicom(tmp_path / "study.dcm", index=2, patient=PHI)
        os.replace(tmp_path / "study.dcm", inbox / "study.dcm")
        consumer.wait_for(lambda s: len(s.unique("result")) == 3 and len(s.unique("error")) == 1, 30,
                          "3 results and 1 error event")
        consumer.wait_for(lambda s: any(h["counters"]["processed"] == 3 and h["counters"]["rejected"] == 1
                                        and h["counters"]["published"] >= 4
                                        for h in s.payloads("heartbeat")), 10, "a heartbeat counting the 3 inputs")
        assert daemon.stop() == 0  # SIGTERM
        consumer.wait_for(lambda s: s.payloads("status")[-1]["state"] == "offline", 10, "offline")
    finally:
        consumer.close()
    results = [validate(p) for p in consumer.unique("result").values()]
    assert {r["status"] for r in results} == {"classified"}
    assert {r["site"] for r in results} == {"test"} and {r["device"] for r in results} == {"dev1"}
    assert sum("dicom" in r for r in results) == 1
    manifest = json.loads((int8_bundle / "medge.json").read_text())
    assert {r["model"]["sha256"] for r in results} == {manifest["artifacts"][0]["sha256"]}
    assert all(set(r["probabilities"]) == set(manifest["classes"]) for r in results)
    assert all(r["timing_ms"]["total"] >= r["timing_ms"]["inference"] > 0 for r in results)
    for payload in consumer.payloads("status") + consumer.payloads("heartbeat"):
        validate(payload)
    online = [p for p in consumer.payloads("status") if p["state"] == "online"][0]
    assert online["model"]["sha256"] == manifest["artifacts"][0]["sha256"] and online["sources"] == ["watch"]
    assert consumer.payloads("status")[-1]["reason"] == "shutdown"
    heartbeat = consumer.payloads("heartbeat")[-1]
    assert heartbeat["counters"]["processed"] == 3 and heartbeat["counters"]["rejected"] == 1
    [error] = [validate(p) for p in consumer.unique("error").values()]
    assert error["kind"] == "rejected_input" and error["message"] == "input: empty file (0 bytes)"
    # The reason kept beside the file names the real file (the event, published, never does).
    assert (inbox / "rejected" / "empty.jpg.why.txt").read_text().strip() == "empty.jpg: empty file (0 bytes)"
    assert heartbeat["latency_ms"]["p50"] > 0 and heartbeat["rss_mb"] > 0
    # Nothing identifying left the device: not a tag value, not a file name.
    raw = "\n".join(json.dumps(p) for _, p, _ in consumer.messages)
    for value in list(PHI.values()) + ["Doe", "99812377", "chest.jpeg", "study.dcm", "empty.jpg"]:
        assert value not in raw, value
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["chest.jpeg", "chest.png", "study.dcm"]
    # The offline status is retained: a dashboard connecting now learns the device is down.
    late = SessionSubscriber(broker.port, "medge/test/dev1/status", client_id=f"late-{version}")
    try:
        late.wait_for(lambda s: len(s.messages) == 1, 10, "the retained status")
        topic, payload, retained = late.messages[0]
        assert retained and payload["state"] == "offline"
    finally:
        late.close()


def test_broker_killed_and_restarted_mid_stream_loses_nothing(tmp_path, broker, int8_bundle, edge_daemon):
    broker = broker
    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#")
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    daemon = edge_daemon(int8_bundle, broker.url)
    try:
        for index in range(8):
            png(inbox / f"before_{index}.png", index)
        consumer.wait_for(lambda s: len(s.unique("result")) == 8, 30, "the first 8 results")
        time.sleep(2.0)  # Mosquitto saves sessions every second: let it save the consumer's
        broker.kill()  # abrupt: the site broker loses power
        for index in range(12):
            png(inbox / f"during_{index}.png", index)
        wait_until(lambda: len(list((inbox / "processed").glob("during_*"))) == 12, 30, "results stored offline")
        broker.start()  # same port, its persistent store (the consumer's session) intact
        for index in range(5):
            png(inbox / f"after_{index}.png", index)
        consumer.wait_for(lambda s: len(s.unique("result")) == 25, 60, "all 25 results")
        assert daemon.running
        assert daemon.stop() == 0
    finally:
        consumer.close()
    refs = by_input(list(consumer.unique("result").values()))
    assert len(refs) == 25 and all(len(ids) == 1 for ids in refs.values())
    assert "cannot reach broker" in daemon.log_text() or "disconnected" in daemon.log_text()


def test_sigkill_mid_stream_then_restart_delivers_every_input_exactly_once(tmp_path, broker, int8_bundle,
                                                                            edge_daemon):
    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#")
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    first = edge_daemon(int8_bundle, broker.url)
    try:
        consumer.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 20, "online")
        count = 36
        for index in range(count):  # full-size X-rays: a stream the kill lands in the middle of
            shutil.copy(xray_files()[index % 3], tmp_path / f"x{index:02d}.jpeg")
            os.replace(tmp_path / f"x{index:02d}.jpeg", inbox / f"x{index:02d}.jpeg")
        consumer.wait_for(lambda s: len(s.unique("result")) >= 5, 30, "the first results")
        first.kill()  # SIGKILL: no cleanup, no offline message from the daemon itself
        consumer.wait_for(lambda s: s.payloads("status")[-1]["state"] == "offline", 10, "the last will")
        will = validate(consumer.payloads("status")[-1])
        assert will["reason"] == "connection lost"
        left = [p.name for p in inbox.glob("*.jpeg")]
        assert left, "the kill came after the whole stream: make it longer"

        second = edge_daemon(int8_bundle, broker.url)
        wait_until(lambda: len(list((inbox / "processed").glob("*.jpeg"))) == count, 60, "every input processed")
        consumer.wait_for(lambda s: len(by_input(list(s.unique("result").values()))) == count, 30, "every result")
        consumer.wait_for(lambda s: s.payloads("status")[-1]["state"] == "online", 10, "online again")
        assert second.stop() == 0
    finally:
        consumer.close()
    results = list(consumer.unique("result").values())
    refs = by_input(results)
    assert len(refs) == count
    assert all(len(ids) == 1 for ids in refs.values()), "an input was classified twice under different ids"
    assert len(results) == count
    assert list((inbox / "rejected").iterdir()) == []


@pytest.fixture
def tls_broker(tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    passwords = mosquitto_password_file(tmp_path / "passwd", "dev1", "correct horse")
    mosquitto_password_file(tmp_path / "passwd2", "reader", "battery staple")
    passwords.write_text(passwords.read_text() + (tmp_path / "passwd2").read_text())
    tls_port = free_port()
    extra = (f"allow_anonymous false\npassword_file {passwords}\n"
             f"listener {tls_port} 127.0.0.1\ncafile {tls['ca']}\ncertfile {tls['cert']}\nkeyfile {tls['key']}\n")
    with LocalBroker(kind="mosquitto", workdir=tmp_path / "broker", extra_config=extra) as running:
        running.tls_port = tls_port
        running.tls = tls
        yield running


def test_tls_with_username_and_password(tmp_path, tls_broker, int8_bundle, edge_daemon):
    consumer = SessionSubscriber(tls_broker.port, "medge/test/dev1/#", username="reader", password="battery staple")
    url = f"mqtts://127.0.0.1:{tls_broker.tls_port}"
    flags = ["--ca-file", str(tls_broker.tls["ca"]), "--username", "dev1"]
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    try:
        daemon = edge_daemon(int8_bundle, url, *flags, env={"MEDGE_MQTT_PASSWORD": "correct horse"})
        consumer.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 20, "online over TLS")
        shutil.copy(xray_files()[1], inbox / "a.jpeg")
        consumer.wait_for(lambda s: len(s.unique("result")) == 1, 30, "a result over TLS")
        assert daemon.stop() == 0
        assert "correct horse" not in daemon.log_text()
    finally:
        consumer.close()

    def check(password):
        return subprocess.run([sys.executable, "-m", "medge", "edge", "check", str(int8_bundle), "--broker", url,
                               *flags, "--watch", str(inbox), "--state-dir", str(tmp_path / "state")],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, MEDGE_MQTT_PASSWORD=password))

    good = check("correct horse")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok   broker:" in good.stdout and "ok   bundle:" in good.stdout and "all checks passed" in good.stdout
    bad = check("wrong")
    assert bad.returncode == 1
    assert "FAIL broker:" in bad.stdout and "refused" in bad.stdout and "Error: 1 check(s) failed" in bad.stderr


def test_an_unusable_ca_file_stops_the_daemon_with_one_line(tmp_path, int8_bundle):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    done = subprocess.run([sys.executable, "-m", "medge", "edge", "run", str(int8_bundle), "--broker",
                           "mqtts://127.0.0.1:8883", "--ca-file", str(tmp_path / "ca.pem"), "--watch",
                           str(tmp_path / "in"), "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("Error: mqtt.ca_file: cannot load the TLS files")
    assert "Traceback" not in done.stderr


def test_an_unusable_state_dir_is_one_line_naming_the_key(tmp_path):
    from types import SimpleNamespace

    from medge.edge.config import load_config
    from medge.edge.daemon import EdgeDaemon
    from medge.edge.errors import ConfigError

    (tmp_path / "file").write_text("x")
    (tmp_path / "bundle").mkdir()
    config = load_config(env={}, flags={"bundle": str(tmp_path / "bundle"), "watch.dir": str(tmp_path / "in"),
                                        "state.dir": str(tmp_path / "file" / "state")})
    classifier = SimpleNamespace(bundle=SimpleNamespace(name="m", version="1"), runtime_name="stub",
                                 artifact=SimpleNamespace(sha256="0" * 64, format="tflite-int8"))
    with pytest.raises(ConfigError, match=r"^state\.dir: cannot use"):
        EdgeDaemon(config, classifier=classifier).run()


# ------------------------------------------------------------------------------ poison inputs


class MemoryCgroup:
    """A memory cgroup (v1 or v2) of our own, limited to `limit` bytes; `add(pid)` moves a
    process into it. Needs root and a writable cgroup tree: the test skips, saying why, otherwise."""

    def __init__(self, limit: int):
        import uuid
        from pathlib import Path

        self.path = None
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        v1 = [line.split(":", 2)[2] for line in lines if line.split(":")[1] == "memory"]
        if v1 and Path("/sys/fs/cgroup/memory").is_dir():
            parent, self.limit_file = Path("/sys/fs/cgroup/memory" + v1[0]), "memory.limit_in_bytes"
        else:
            v2 = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
            parent, self.limit_file = Path("/sys/fs/cgroup" + (v2[0] if v2 else "/")), "memory.max"
        path = parent / f"medge-test-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
            self.path = path
            (path / self.limit_file).write_text(str(limit))
            swap = path / ("memory.memsw.limit_in_bytes" if self.limit_file.endswith("in_bytes") else "memory.swap.max")
            if swap.exists():
                swap.write_text(str(limit) if swap.name.startswith("memory.memsw") else "0")
        except OSError as error:
            self.remove()
            pytest.skip(f"cannot create a memory-limited cgroup under {parent} ({error}); run as root with "
                        "a writable cgroup tree")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        if self.path is not None:
            try:
                self.path.rmdir()
            except OSError:
                pass


def test_an_input_that_kills_the_daemon_is_quarantined_and_its_neighbours_get_results(tmp_path, broker,
                                                                                       int8_bundle, edge_daemon):
    """The review's crash loop: under a memory limit a decompression bomb OOM-kills the daemon on
    every restart and its 10 neighbours never get results. Here the pixel limit is lifted, so the
    30000x30000 TIFF really is decoded and really kills the daemon (the kernel's OOM killer in a
    512 MB cgroup); the test restarts it as systemd's Restart=on-failure would. After the second
    death with the same input in progress it is quarantined: moved to rejected/ with its reason,
    an error event; the 10 good X-rays (5 older, 5 newer) each get exactly one result."""
    from tests.fixtures.edge import write_tiff

    cgroup = MemoryCgroup(512 * 1024 * 1024)
    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#")
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    now = time.time()
    names = [f"older_{i}.jpeg" for i in range(5)] + ["bomb.tif"] + [f"newer_{i}.jpeg" for i in range(5)]
    for index, name in enumerate(names):
        if name == "bomb.tif":
            write_tiff(inbox / name, 30000, 30000)
        else:
            shutil.copy(xray_files()[index % 3], inbox / name)
        os.utime(inbox / name, (now - 100 + index, now - 100 + index))  # the folder's order: oldest first
    starts, deaths = 0, []
    try:
        daemon = None
        deadline = time.monotonic() + 240
        while not (inbox / "rejected" / "bomb.tif").exists() and time.monotonic() < deadline:
            if daemon is None or not daemon.running:
                if daemon is not None:
                    deaths.append(daemon.process.returncode)
                assert starts < 5, f"still crash-looping after {starts} starts: {deaths}"
                daemon = edge_daemon(int8_bundle, broker.url, "--max-pixels", "1000000000")
                cgroup.add(daemon.process.pid)
                starts += 1
            time.sleep(0.2)
        assert (inbox / "rejected" / "bomb.tif").exists(), daemon.log_text()
        consumer.wait_for(lambda s: len(by_input(list(s.unique("result").values()))) == 10, 60, "10 results")
        consumer.wait_for(lambda s: any(e["kind"] == "poison_input" for e in s.unique("error").values()), 20,
                          "the quarantine event")
        assert daemon.running
        assert daemon.stop() == 0
    finally:
        consumer.close()
        cgroup.remove()
    assert deaths == [-9, -9], deaths  # SIGKILL by the OOM killer, twice, then no more
    why = (inbox / "rejected" / "bomb.tif.why.txt").read_text()
    assert "quarantined" in why and "died 2 times" in why
    [event] = [validate(e) for e in consumer.unique("error").values() if e["kind"] == "poison_input"]
    assert "bomb" not in event["message"] and event["input_ref"]
    results = list(consumer.unique("result").values())
    refs = by_input(results)
    assert len(refs) == 10 and all(len(ids) == 1 for ids in refs.values()), "lost or classified twice"
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == sorted(n for n in names if n != "bomb.tif")


# ------------------------------------------------------------------------------ silent stalls


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 3 MB tmpfs (the device's state filesystem, small enough to fill); needs root."""
    mount_point = tmp_path / "small_fs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


class NotifySocket:
    """A real sd_notify socket, as systemd gives a Type=notify unit: collects every datagram."""

    def __init__(self, path):
        import socket
        import threading

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except OSError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def watchdogs_since(self, since: float) -> int:
        return sum(1 for at, text in list(self.received) if at >= since and "WATCHDOG=1" in text)

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def fill(folder) -> int:
    """Write until the filesystem is full; returns the bytes written."""
    written = 0
    with open(folder / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\xff" * 65536)
                handle.flush()
                written += 65536
        except OSError:
            pass
        try:
            os.fsync(handle.fileno())
        except OSError:
            pass
    return written


def test_a_full_state_disk_degrades_loudly_and_recovers_by_itself(tmp_path, broker, int8_bundle, edge_daemon,
                                                                   small_tmpfs):
    """The review's silent stall: the state filesystem fills while running. Now the stuck store
    is an error event, a retained `degraded` status and a heartbeat that says so; the systemd
    watchdog is no longer fed; and once space returns everything waiting is stored and
    published, nothing lost, and the status is `online` again."""
    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#")
    notify = NotifySocket(tmp_path / "notify.sock")
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    try:
        daemon = edge_daemon(int8_bundle, broker.url, state_dir=small_tmpfs / "state",
                             env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"})
        consumer.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 30, "online")
        wait_until(lambda: notify.watchdogs_since(0) >= 2, 20, "watchdog notifications")
        png(inbox / "before.png", 0)
        consumer.wait_for(lambda s: len(s.unique("result")) == 1, 30, "a first result")
        assert fill(small_tmpfs) > 0
        for index in range(20):
            png(inbox / f"full_{index:02d}.png", index)
        consumer.wait_for(lambda s: s.payloads("status")[-1]["state"] == "degraded", 30, "a degraded status")
        degraded_at = time.monotonic()
        consumer.wait_for(lambda s: any(e["kind"] == "stage_stuck" for e in s.payloads("error")), 10,
                          "an error event naming the stuck stage")
        consumer.wait_for(lambda s: any(h.get("health", {}).get("state") == "degraded"
                                        and h["health"]["inputs_waiting"] > 0 for h in s.payloads("heartbeat")),
                          10, "a heartbeat that tells the truth")
        time.sleep(4)  # two watchdog intervals: none may come while the store is stuck
        assert notify.watchdogs_since(degraded_at + 1.5) == 0
        assert daemon.running and len(list((inbox / "processed").glob("full_*"))) < 20
        (small_tmpfs / "filler").unlink()  # space returns
        for index in range(10):
            png(inbox / f"after_{index:02d}.png", index)
        consumer.wait_for(lambda s: len(by_input(list(s.unique("result").values()))) == 31, 60, "all 31 results")
        consumer.wait_for(lambda s: s.payloads("status")[-1]["state"] == "online", 20, "online again")
        recovered_at = time.monotonic()
        wait_until(lambda: notify.watchdogs_since(recovered_at) >= 1, 10, "the watchdog fed again")
        assert daemon.stop() == 0
    finally:
        consumer.close()
        notify.close()
    degraded = [validate(p) for p in consumer.payloads("status") if p["state"] == "degraded"]
    assert degraded[0]["reason"].startswith("store: cannot store results in the outbox")
    [stuck] = [validate(e) for e in consumer.unique("error").values() if e["kind"] == "stage_stuck"][:1]
    assert "store" in stuck["message"] and stuck["level"] == "error"
    assert any(e["kind"] == "stage_recovered" for e in consumer.unique("error").values())
    for heartbeat in consumer.payloads("heartbeat"):
        validate(heartbeat)
    refs = by_input(list(consumer.unique("result").values()))
    assert len(refs) == 31 and all(len(ids) == 1 for ids in refs.values())
    assert len(list((inbox / "processed").iterdir())) == 31 and not list((inbox / "rejected").iterdir())


def test_a_corrupt_outbox_is_moved_aside_and_rebuilt_with_an_event_counting_the_loss(tmp_path, broker, int8_bundle,
                                                                                     edge_daemon):
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    offline = edge_daemon(int8_bundle, f"mqtt://127.0.0.1:{free_port()}")  # no broker: results stay stored
    for index in range(40):
        png(inbox / f"stored_{index:02d}.png", index)
    wait_until(lambda: len(list((inbox / "processed").glob("*.png"))) == 40, 60, "40 results stored")
    assert offline.stop() == 0
    outbox = tmp_path / "state" / "outbox.sqlite3"
    data = bytearray(outbox.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle:middle + 8192] = random.Random(0).randbytes(8192)  # two pages overwritten mid-file
    outbox.write_bytes(bytes(data))

    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#")
    try:
        daemon = edge_daemon(int8_bundle, broker.url)
        consumer.wait_for(lambda s: any(e["kind"] == "outbox_rebuilt" for e in s.unique("error").values()), 30,
                          "the rebuild event")
        png(inbox / "new.png", 1)
        wait_until(lambda: (inbox / "processed" / "new.png").exists(), 30, "a new input processed")
        [event] = [validate(e) for e in consumer.unique("error").values() if e["kind"] == "outbox_rebuilt"]
        recovered = int(event["message"].split(" message(s) recovered (")[1].split(" result(s)")[0])
        unreadable = int(event["message"].split("up to ")[1].split(" stored message(s)")[0])
        assert 0 < recovered < 40 and unreadable > 0 and recovered + unreadable >= 40, event["message"]
        consumer.wait_for(lambda s: len(s.unique("result")) == recovered + 1, 30, "the recovered results and the new one")
        assert daemon.stop() == 0
    finally:
        consumer.close()
    assert event["level"] == "error" and "moved aside to outbox.sqlite3.corrupt-" in event["message"]
    kept = [p for p in (tmp_path / "state").glob("outbox.sqlite3.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and kept[0].stat().st_size == len(data)  # kept for inspection, as it was


def test_a_frozen_broker_makes_the_publish_stage_stuck_and_the_watchdog_silent_until_it_thaws(
        tmp_path, broker, int8_bundle, edge_daemon):
    """Connected but nothing acknowledged (the broker's process hangs: SIGSTOP): the daemon says
    `degraded` (systemd STATUS=, no WATCHDOG=1) after input.stall_s, and recovers by itself."""
    import signal

    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#")
    notify = NotifySocket(tmp_path / "notify.sock")
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    try:
        edge_daemon(int8_bundle, broker.url, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000",
                                                  "MEDGE_STALL_S": "3"})
        consumer.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 30, "online")
        broker.process.send_signal(signal.SIGSTOP)
        try:
            for index in range(3):
                png(inbox / f"frozen_{index}.png", index)
            wait_until(lambda: any("STATUS=degraded: publish:" in text for _, text in notify.received), 30,
                       "STATUS=degraded naming the publish stage")
            stuck_at = time.monotonic()
            time.sleep(3)
            assert notify.watchdogs_since(stuck_at + 0.5) == 0
        finally:
            broker.process.send_signal(signal.SIGCONT)
        consumer.wait_for(lambda s: len(s.unique("result")) == 3, 60, "the 3 results after the thaw")
        wait_until(lambda: any(text == "STATUS=online" for at, text in notify.received if at > stuck_at), 30,
                   "STATUS=online again")
        thawed_at = time.monotonic()
        wait_until(lambda: notify.watchdogs_since(thawed_at) >= 1, 10, "the watchdog fed again")
    finally:
        consumer.close()
        notify.close()
    assert any(e["kind"] == "stage_stuck" and "publish" in e["message"] for e in consumer.unique("error").values())
