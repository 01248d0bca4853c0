"""What the site broker's durability costs: deploy/mosquitto/mosquitto.conf (TLS + client
certificates + passwords + ACLs, database written after every change) against the same config
with Mosquitto's usual periodic autosave (which loses up to that period's acknowledged
messages on a crash).

    python benchmarks/deploy_broker.py [--messages 2000]

For each variant: a device publishes result-sized JSON (QoS 1) one at a time, waiting for each
PUBACK as the edge daemon's outbox does, while a dashboard with a persistent session is offline
(so the broker must store every message). Reports PUBACK latency (p50/p95) and messages per
second, plus the TLS+password connect time. Prints a table and saves
benchmarks/results/deploy_broker.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.deploy import Client, SiteBroker, make_credentials  # noqa: E402

DURABLE = "autosave_on_changes true\nautosave_interval 1\n"
PERIODIC = "autosave_interval 1800\n"


class Broker(SiteBroker):
    def __init__(self, *args, persistence: str, **kwargs):
        self.persistence = persistence
        super().__init__(*args, **kwargs)

    def render(self) -> str:
        text = super().render()
        assert DURABLE in text
        return text.replace(DURABLE, self.persistence)


def result_payload(i: int) -> bytes:
    return json.dumps({
        "schema": "medge.result/1", "id": f"{i:032x}", "ts": "2026-01-01T00:00:00Z", "site": "site-a",
        "device": "xray-1", "source": "watch", "input_ref": f"{i:064x}", "status": "classified",
        "model": {"name": "pneumonia-cnn", "version": "1", "sha256": "0" * 64, "format": "tflite-int8",
                  "runtime": "litert"},
        "result": {"label": "pneumonia", "score": 0.8164, "threshold": 0.5, "positive": True,
                   "probabilities": {"normal": 0.1836, "pneumonia": 0.8164}},
        "timing_ms": {"decode": 12.1, "preprocess": 1.2, "inference": 3.4},
        "disclaimer": "Decision support only - not for diagnostic use.",
    }).encode()


def ack_to_disk_ms(device: Client, database: Path, samples: int, timeout_s: float = 2.0) -> list:
    """Milliseconds from each PUBACK until the message's bytes are in mosquitto.db."""
    found = []
    for i in range(samples):
        payload = b'{"probe": "%032x"}' % (time.perf_counter_ns() + i)
        assert device.publish("medge/site-a/xray-1/result", payload) == 0
        acked = time.perf_counter()
        while True:
            if database.exists() and payload in database.read_bytes():
                found.append((time.perf_counter() - acked) * 1000)
                break
            if time.perf_counter() - acked > timeout_s:
                found.append(None)
                break
    return found


def measure(credentials: Path, workdir: Path, persistence: str, messages: int) -> dict:
    broker = Broker(credentials, workdir, persistence=persistence).start()
    try:
        connects = []
        for _ in range(5):
            start = time.perf_counter()
            probe = Client(credentials, "xray-2", broker.port)
            assert probe.wait_connected()
            connects.append((time.perf_counter() - start) * 1000)
            probe.close()
        dashboard = Client(credentials, "dashboard", broker.port, client_id="bench-dashboard", clean_start=False,
                           session_expiry=3600)
        assert dashboard.wait_connected() and dashboard.subscribe("medge/#") == 1
        dashboard.close()
        device = Client(credentials, "xray-1", broker.port)
        assert device.wait_connected()
        ack_to_disk = ack_to_disk_ms(device, workdir / "db" / "mosquitto.db",
                                     samples=20 if persistence == DURABLE else 1)
        latencies = []
        started = time.perf_counter()
        for i in range(messages):
            t0 = time.perf_counter()
            assert device.publish("medge/site-a/xray-1/result", result_payload(i)) == 0
            latencies.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - started
        device.close()
        db = workdir / "db" / "mosquitto.db"
        return {
            "messages": messages,
            "payload_bytes": len(result_payload(0)),
            "puback_ms_p50": round(statistics.median(latencies), 2),
            "puback_ms_p95": round(sorted(latencies)[int(0.95 * len(latencies)) - 1], 2),
            # Each save rewrites the whole database, so its cost grows with what is stored
            # (here: everything queued for the offline dashboard).
            "puback_ms_p50_last_100": round(statistics.median(latencies[-100:]), 2),
            "messages_per_s": round(messages / elapsed, 1),
            "connect_ms_median": round(statistics.median(connects), 1),
            # The exposure window: Mosquitto sends the PUBACK before it saves, so a crash in
            # this interval loses an acknowledged message. None: not on disk within 2 s.
            "ack_to_disk_ms_p50": round(statistics.median(ack_to_disk), 2) if None not in ack_to_disk else None,
            "ack_to_disk_ms_max": round(max(ack_to_disk), 2) if None not in ack_to_disk else None,
            "db_bytes_after": db.stat().st_size if db.exists() else 0,
        }
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medge-bench-broker-") as tmp:
        tmp = Path(tmp)
        credentials = make_credentials(tmp / "credentials", "-s", "127.0.0.1", "-d", "xray-1", "-d", "xray-2",
                                       "-u", "dashboard")
        results = {
            "shipped (save after every change)": measure(credentials, tmp / "durable", DURABLE, args.messages),
            "periodic autosave (1800 s)": measure(credentials, tmp / "periodic", PERIODIC, args.messages),
        }
    print(f"{'variant':36} {'PUBACK p50 ms':>14} {'p95 ms':>8} {'p50 last 100':>13} {'msg/s':>8} "
          f"{'connect ms':>11} {'ack->disk p50/max ms':>21}")
    for name, row in results.items():
        window = (f"{row['ack_to_disk_ms_p50']}/{row['ack_to_disk_ms_max']}" if row["ack_to_disk_ms_p50"] is not None
                  else "> 2000")
        print(f"{name:36} {row['puback_ms_p50']:>14} {row['puback_ms_p95']:>8} {row['puback_ms_p50_last_100']:>13} "
              f"{row['messages_per_s']:>8} {row['connect_ms_median']:>11} {window:>21}")
    out = REPO / "benchmarks" / "results" / "deploy_broker.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "mosquitto": "2.0.11", "transport": "MQTT 5 over TLS 1.3, client certificate + password",
        "results": results,
    }, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
