"""What the dashboard can take: ingest rate, restart (history replay) time, and the delay from
a device's publish to the browser's event stream.

    python benchmarks/dashboard.py [--messages 5000] [--latency-messages 300]

1. ingest: schema-valid result payloads through the dashboard's own path (parse + JSON Schema
   check + SQLite insert + state fold), in process: messages per second.
2. restart: the history replay a restarted dashboard does over that database: seconds.
3. end to end: a real Mosquitto and a real `medge dashboard` process; a client publishes one
   result (QoS 1) at a time and reads it back from /api/events: p50/p95 ms.
Prints a table and saves benchmarks/results/dashboard.json.
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
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medge.broker import LocalBroker  # noqa: E402
from medge.dashboard.events import parse_message  # noqa: E402
from medge.dashboard.state import DashboardState  # noqa: E402
from medge.dashboard.store import HistoryStore  # noqa: E402
from tests.fixtures.dashboard import DashboardProcess, Publisher, result_payload  # noqa: E402


def ingest(work: Path, count: int) -> dict:
    messages = [json.dumps(result_payload("site", f"dev-{i % 8}", (i % 100) / 100)).encode() for i in range(count)]
    store, state = HistoryStore(work / "ingest.sqlite", max_events=count + 1), DashboardState()
    start = time.perf_counter()
    for index, payload in enumerate(messages):
        event = parse_message(f"medge/site/dev-{index % 8}/result", payload)
        if not state.is_duplicate(event):
            store.add(event)
            state.apply(event)
    ingest_s = time.perf_counter() - start
    store.close()
    start = time.perf_counter()
    reopened, replayed = HistoryStore(work / "ingest.sqlite", max_events=count + 1), DashboardState()
    for event in reopened.replay():
        replayed.apply(event)
    replay_s = time.perf_counter() - start
    assert len(replayed.results) == min(count, replayed.results.maxlen)
    return {"messages": count, "ingest_per_s": round(count / ingest_s), "replay_s": round(replay_s, 2),
            "db_mib": round((work / "ingest.sqlite").stat().st_size / 2**20, 1)}


def end_to_end(work: Path, count: int) -> dict:
    broker = LocalBroker(kind="mosquitto", workdir=work / "broker").start()
    dashboard = DashboardProcess(broker.url, work / "e2e.sqlite").start()
    publisher = Publisher(broker.port)
    delays = []
    try:
        with urllib.request.urlopen(dashboard.url + "/api/events", timeout=30) as stream:
            stream.readline()  # the snapshot's event line
            stream.readline()
            for _index in range(count):
                payload = result_payload("site", "dev-1", 0.3)
                sent = time.perf_counter()
                publisher.send("result", payload)
                while True:
                    line = stream.readline().decode()
                    if line.startswith("data: ") and payload["id"] in line and '"input_ref"' in line:
                        delays.append((time.perf_counter() - sent) * 1000)
                        break
    finally:
        publisher.close()
        dashboard.stop()
        broker.stop()
    delays.sort()
    return {"messages": count, "p50_ms": round(statistics.median(delays), 1),
            "p95_ms": round(delays[int(0.95 * (len(delays) - 1))], 1), "max_ms": round(delays[-1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--latency-messages", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medge-bench-dashboard-") as folder:
        work = Path(folder)
        results = {"ingest": ingest(work, args.messages), "end_to_end": end_to_end(work, args.latency_messages),
                   "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                               "platform": platform.platform()}}
    print(f"ingest (parse + schema + SQLite + state): {results['ingest']['ingest_per_s']} results/s "
          f"over {args.messages}; restart replay {results['ingest']['replay_s']} s "
          f"({results['ingest']['db_mib']} MiB history)")
    e2e = results["end_to_end"]
    print(f"publish -> browser event stream: p50 {e2e['p50_ms']} ms, p95 {e2e['p95_ms']} ms, max {e2e['max_ms']} ms "
          f"over {e2e['messages']} results")
    out = REPO / "benchmarks" / "results" / "dashboard.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
