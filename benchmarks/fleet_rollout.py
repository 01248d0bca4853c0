"""Fleet rollout benchmark: `medge fleet deploy` to 10 real `medge edge run` daemons on this
machine, against a real Mosquitto, under a continuous input stream into every watch folder.

Measures, with the committed PneumoniaMNIST int8 bundle (tflite-int8) re-versioned and given
the on-device self-test reference set (tests/fixtures/fleet.py), no shadow run:
- command -> all promoted: from the deploy commands' publication to the last device's
  `promoted` report at a subscriber (download, sha256, unpack, bundle signature, self-test on
  the device's runtime, switch), and the whole `deploy()` call (pack + serve + rollout);
- results lost or doubled across the switch: every input written gets exactly one result
  (distinct input references vs distinct result ids), and no device returns to the old model
  after its first result from the new one.

    python benchmarks/fleet_rollout.py                   # 10 devices, canary 0 then canary 1
    python benchmarks/fleet_rollout.py --devices 4 --rate 1

Prints a summary and writes benchmarks/results/fleet_rollout.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "fleet_rollout.json"
SITE = "bench"

from medge.broker import LocalBroker  # noqa: E402
from medge.edge.config import MqttSettings  # noqa: E402
from medge.fleet.deploy import DeployPlan, deploy  # noqa: E402
from medge.fleet.link import SiteLink  # noqa: E402
from tests.assets.make_bundles import INT8  # noqa: E402
from tests.fixtures.edge import small_xray  # noqa: E402
from tests.fixtures.fleet import fleet_flags, make_candidate, make_keys  # noqa: E402


class Collector:
    """Every result and fleet report of the site, with its arrival time."""

    def __init__(self, port: int):
        self.results: dict[str, dict] = {}  # result id -> {device, input_ref, version, at}
        self.order: dict[str, list[str]] = defaultdict(list)  # device -> model versions in arrival order
        self.reports: list[tuple[float, str, dict]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self.on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"medge/{SITE}/+/+", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        time.sleep(0.3)

    def on_message(self, client, userdata, message):
        now = time.monotonic()
        device, kind = message.topic.split("/")[2:4]
        try:
            payload = json.loads(message.payload)
        except ValueError:
            return
        with self.lock:
            if kind == "result" and payload["id"] not in self.results:
                version = payload["model"]["version"]
                self.results[payload["id"]] = {"device": device, "input_ref": payload.get("input_ref"),
                                               "version": version, "at": now}
                self.order[device].append(version)
            elif kind == "fleet":
                self.reports.append((now, device, payload))

    def state(self, device: str) -> str | None:
        with self.lock:
            states = [p.get("state") for _, d, p in self.reports if d == device]
        return states[-1] if states else None

    def promoted_at(self, rollout: str) -> dict[str, float]:
        with self.lock:
            return {d: at for at, d, p in self.reports if p.get("rollout") == rollout and p.get("state") == "promoted"}

    def promoted_reason(self, rollout: str) -> str | None:
        with self.lock:
            return next((p.get("reason") for _, _, p in self.reports
                         if p.get("rollout") == rollout and p.get("state") == "promoted"), None)

    def per_device(self) -> dict[str, dict]:
        with self.lock:
            ids, refs = Counter(), defaultdict(set)
            for row in self.results.values():
                ids[row["device"]] += 1
                refs[row["device"]].add(row["input_ref"])
            return {device: {"results": ids[device], "inputs": len(refs[device])} for device in ids}


class Feeder(threading.Thread):
    """Writes one real X-ray PNG per device every 1/rate s (temporary name, then a rename)."""

    def __init__(self, watches: dict[str, Path], rate: float):
        super().__init__(daemon=True)
        self.watches, self.rate = watches, rate
        self.written: Counter = Counter()
        self.stopping = threading.Event()
        self.images = [cv2.imencode(".png", small_xray(i, 64))[1].tobytes() for i in range(3)]

    def run(self):
        n = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            for device, watch in self.watches.items():
                path = watch / f"{device}-{n:06d}.png"
                temporary = watch / f".{path.name}.part"
                temporary.write_bytes(self.images[n % 3])
                os.replace(temporary, path)
                self.written[device] += 1
            n += 1
            self.stopping.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark timed out waiting for {what}")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0, help="inputs per second into each device's watch folder")
    parser.add_argument("--canaries", default="0,1", help="one rollout per value, each a new version: canary sizes")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of stream before and after each rollout")
    args = parser.parse_args()
    canaries = [int(value) for value in args.canaries.split(",")]
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="medge-fleet-bench-") as tmp:
        work = Path(tmp)
        keys = make_keys(work / "keys")
        bundles = [make_candidate(INT8, work / f"v{i}", version=str(i), key=keys["bundle"])
                   for i in range(1, len(canaries) + 2)]
        with LocalBroker(kind="mosquitto", workdir=work / "broker") as broker:
            collector = Collector(broker.port)
            devices = [f"dev-{i:02d}" for i in range(1, args.devices + 1)]
            watches, daemons = {}, []
            started = time.monotonic()
            for device in devices:
                watches[device] = work / device / "incoming"
                watches[device].mkdir(parents=True)
                log = open(work / f"{device}.log", "wb")
                daemons.append(subprocess.Popen(
                    [sys.executable, "-m", "medge", "edge", "run", str(bundles[0]), "--broker", broker.url,
                     "--site", SITE, "--device", device, "--watch", str(watches[device]),
                     "--state-dir", str(work / device / "state"), "--stable-s", "0.2", "--poll-s", "0.1",
                     "--heartbeat-s", "5", *fleet_flags(keys)],
                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True))
                log.close()
            try:
                wait(lambda: all(collector.state(d) == "idle" for d in devices), 300, "every daemon online")
                startup_s = time.monotonic() - started
                print(f"{len(devices)} daemons online in {startup_s:.1f} s; streaming {args.rate:g} inputs/s each")
                feeder = Feeder(watches, args.rate)
                feeder.start()
                time.sleep(args.settle)
                settings = MqttSettings(broker=broker.url, topic_prefix="medge")
                rollouts = []
                for index, canary in enumerate(canaries):
                    sent_at: list[float] = []
                    link = SiteLink(settings, SITE, name="bench").start()
                    send = link.send_command

                    def timed_send(command, send=send, sent_at=sent_at) -> None:
                        if not sent_at:  # the clock starts as the first command leaves
                            sent_at.append(time.monotonic())
                        send(command)

                    link.send_command = timed_send
                    called = time.monotonic()
                    try:
                        summary = deploy(link, DeployPlan(bundle=bundles[index + 1], key=keys["operator"], canary=canary,
                                                          timeout_s=120), lambda line: None)
                    finally:
                        link.stop()
                    returned = time.monotonic()
                    rollout = summary["rollout"]
                    wait(lambda rollout=rollout: len(collector.promoted_at(rollout)) == len(devices), 30,
                         "every promoted report at the subscriber")
                    last = max(collector.promoted_at(rollout).values())
                    figure = {"canary": canary, "version": str(index + 2), "rollout": summary["rollout"],
                              "command_to_all_promoted_s": round(last - sent_at[0], 3),
                              "deploy_call_s": round(returned - called, 3),
                              "per_device_s": summary["seconds"],
                              "promoted_reason_example": collector.promoted_reason(rollout)}
                    rollouts.append(figure)
                    print(f"rollout to v{index + 2} (canary {canary}): command -> all {len(devices)} promoted "
                          f"{figure['command_to_all_promoted_s']:.2f} s (deploy call {figure['deploy_call_s']:.2f} s)")
                    time.sleep(args.settle)
                feeder.stopping.set()
                feeder.join()
                written = dict(feeder.written)
                wait(lambda: all(collector.per_device().get(d, {}).get("inputs", 0) >= written[d] for d in devices),
                     120, "a result for every input written")
                time.sleep(1.0)  # anything doubled arrives late
            finally:
                for process in daemons:
                    process.terminate()
                for process in daemons:
                    try:
                        process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        process.kill()
            per_device = collector.per_device()
            lost = sum(max(0, written[d] - per_device[d]["inputs"]) for d in devices)
            doubled = sum(per_device[d]["results"] - per_device[d]["inputs"] for d in devices)
            went_back = [d for d in devices if any(
                later < earlier for earlier, later in zip(collector.order[d], collector.order[d][1:]))]
            by_version = Counter(row["version"] for row in collector.results.values())
            collector.client.loop_stop()

    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_1m_before": round(load_before[0], 2),
                    "note": "2 cores shared with other engineers' jobs while this ran"},
        "bundle": "tests/assets/bundles/pneumonia-int8 (PneumoniaMNIST, tflite-int8), re-versioned, self-test added",
        "devices": len(devices), "rate_per_device": args.rate, "startup_s": round(startup_s, 2),
        "rollouts": rollouts, "inputs_written": sum(written.values()),
        "results_received": sum(p["results"] for p in per_device.values()), "lost": lost, "doubled": doubled,
        "devices_back_on_an_older_model": went_back, "results_by_model_version": dict(sorted(by_version.items())),
        "target_s": 10.0,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['inputs_written']} inputs written, {results['results_received']} results: lost {lost}, "
          f"doubled {doubled}; by model version {results['results_by_model_version']}")
    print(f"saved {RESULTS.relative_to(REPO)}")
    return 0 if lost == 0 and doubled == 0 and not went_back else 1


if __name__ == "__main__":
    sys.exit(main())
