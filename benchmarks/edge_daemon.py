"""Edge daemon benchmark: the real `medge edge run` process against a real Mosquitto.

Measures, with the int8 (tflite-int8) PneumoniaMNIST bundle:
- start-to-online: from process start to the retained `online` status at a subscriber;
- throughput folder -> acknowledged publish (results received by a subscriber), against a bare
  loop doing the same decode + preprocess + invoke in one process, for full-size chest X-ray
  JPEGs (decode-bound, what a scanner exports) and for small 64x64 PNGs (model-bound);
- per-image time of Keras `model.predict` on the float model, for the "20x" comparison;
- the daemon's resident memory (VmRSS) at steady state and over a 10,000-image soak.

    python benchmarks/edge_daemon.py                      # trains + converts a quick model first
    python benchmarks/edge_daemon.py --run RUN --bundle BUNDLE --soak 10000

Prints a table and writes benchmarks/results/edge_daemon.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "edge_daemon.json"
SPEED_RESULTS = REPO / "benchmarks" / "results" / "edge_daemon_speed.json"


# ------------------------------------------------------------------------------ helpers


class Counter:
    """Subscriber that records when each result and status message arrives."""

    def __init__(self, port: int, topic: str):
        self.results: dict[str, float] = {}
        self.online_at: float | None = None
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self.on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        time.sleep(0.3)

    def on_message(self, client, userdata, message):
        now = time.perf_counter()
        payload = json.loads(message.payload)
        with self.lock:
            if message.topic.endswith("/result"):
                self.results.setdefault(payload["id"], now)
            elif message.topic.endswith("/status") and payload.get("state") == "online" and self.online_at is None:
                self.online_at = now

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def wait(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit("benchmark timed out (see the daemon log)")
            time.sleep(0.005)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Variant:
    """One way of running the daemon: a bundle (its spec's jpeg_reduction), a worker count, and
    optionally the code of another revision (PYTHONPATH), e.g. today's daemon before issue 15."""

    name: str
    bundle: Path
    workers: int | None = None  # None: the daemon's default (every core)
    pythonpath: str | None = None


def start_daemon(bundle: Path, broker_url: str, watch: Path, state: Path, device: str, log: Path,
                 variant: Variant | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "medge", "edge", "run", str(bundle), "--broker", broker_url, "--site", "bench",
            "--device", device, "--watch", str(watch), "--state-dir", str(state), "--stable-s", "0",
            "--poll-s", "0.05", "--heartbeat-s", "5", "--outbox-max", "100000"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if variant is not None and variant.workers is not None:
        args += ["--workers", str(variant.workers)]
    if variant is not None and variant.pythonpath:
        env["PYTHONPATH"] = variant.pythonpath
    handle = open(log, "ab")
    process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    handle.close()
    return process


def stop_daemon(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


def xray_jpegs() -> list[Path]:
    from medge.data import chest_xray_sample_files

    return list(chest_xray_sample_files())


def small_pngs(count: int, size: int = 64) -> list[bytes]:
    sources = [cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (size, size), interpolation=cv2.INTER_AREA)
               for p in xray_jpegs()]
    return [cv2.imencode(".png", sources[i % 3])[1].tobytes() for i in range(count)]


def stage(files: list[tuple[str, bytes]], staging: Path) -> list[Path]:
    staging.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files:
        path = staging / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def drop(paths: list[Path], watch: Path) -> float:
    """Move staged files into the watch folder (renames: each appears complete)."""
    started = time.perf_counter()
    for path in paths:
        os.replace(path, watch / path.name)
    return started


# ------------------------------------------------------------------------------ measurements


def measure_start(bundle, broker, workdir: Path, trials: int, variant: Variant | None = None) -> list[float]:
    times = []
    for trial in range(trials):
        device = f"start{trial}{variant.name if variant else ''}"
        counter = Counter(broker.port, f"medge/bench/{device}/status")
        watch = workdir / device
        watch.mkdir()
        started = time.perf_counter()
        process = start_daemon(bundle, broker.url, watch, workdir / f"state-{device}", device,
                               workdir / "daemon-start.log", variant)
        counter.wait(lambda c=counter: c.online_at is not None, 60)
        times.append(counter.online_at - started)
        stop_daemon(process)
        counter.close()
    return times


def daemon_throughput(bundle, broker, workdir: Path, name: str, files: list[tuple[str, bytes]],
                      variant: Variant | None = None) -> dict:
    counter = Counter(broker.port, f"medge/bench/{name}/#")
    watch = workdir / f"watch-{name}"
    watch.mkdir()
    paths = stage(files, workdir / f"staging-{name}")
    process = start_daemon(bundle, broker.url, watch, workdir / f"state-{name}", name, workdir / f"daemon-{name}.log",
                           variant)
    counter.wait(lambda: counter.online_at is not None, 60)
    # Warm-up: a few images first so one-time costs (first decode, XNNPACK set-up) are excluded.
    warm = stage([(f"warm{i}.png", data) for i, (_, data) in enumerate(files[:3])], workdir / f"warm-{name}")
    drop(warm, watch)
    counter.wait(lambda: counter.count() == 3, 60)
    rss_samples = []
    cpu_before = cpu_seconds(process.pid)
    started = drop(paths, watch)
    total = len(paths) + 3
    while counter.count() < total:
        rss_samples.append(rss_mb(process.pid))
        time.sleep(0.2)
        if process.poll() is not None:
            raise SystemExit(f"daemon exited early: see {workdir}/daemon-{name}.log")
    finished = max(counter.results.values())
    cpu = cpu_seconds(process.pid) - cpu_before
    rss_samples.append(rss_mb(process.pid))
    assert stop_daemon(process) == 0
    counter.close()
    seconds = finished - started
    return {"images": len(paths), "seconds": round(seconds, 3), "images_per_s": round(len(paths) / seconds, 1),
            "ms_per_image": round(seconds * 1000 / len(paths), 3),
            "cpu_ms_per_image": round(cpu * 1000 / len(paths), 3),
            "rss_mb_median": round(statistics.median(rss_samples), 1), "rss_mb_max": round(max(rss_samples), 1)}


def bare_loop(bundle: Path, files: list[tuple[str, bytes]], workdir: Path, name: str) -> dict:
    """The same decode + preprocess + invoke, one process, no daemon, no MQTT, no disk writes."""
    from medge.edge.bundle import load_bundle
    from medge.edge.classify import Classifier
    from medge.edge.preprocess import decode_image

    classifier = Classifier(load_bundle(bundle))
    paths = stage(files, workdir / f"bare-{name}")
    for path in paths[:3]:
        classifier.classify(decode_image(path).pixels)
    started, cpu_started = time.perf_counter(), time.process_time()
    for path in paths:
        classifier.classify(decode_image(path).pixels)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"images": len(paths), "seconds": round(seconds, 3), "images_per_s": round(len(paths) / seconds, 1),
            "ms_per_image": round(seconds * 1000 / len(paths), 3), "cpu_ms_per_image": round(cpu * 1000 / len(paths), 3)}


def keras_per_image(run: Path, files: list[tuple[str, bytes]], workdir: Path) -> dict:
    """Keras model.predict on the float model, one image per call (as a naive service would)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from medge.edge.preprocess import decode_image, preprocess
    from medge.train.run import load_run

    loaded = load_run(run)
    model = loaded.load_model()
    paths = stage(files, workdir / "keras")
    for path in paths[:3]:
        model.predict(preprocess(decode_image(path).pixels, loaded.spec)[np.newaxis], verbose=0)
    predict_ms, total_ms = [], []
    for path in paths:
        started = time.perf_counter()
        x = preprocess(decode_image(path).pixels, loaded.spec)[np.newaxis]
        before = time.perf_counter()
        model.predict(x, verbose=0)
        after = time.perf_counter()
        predict_ms.append((after - before) * 1000)
        total_ms.append((after - started) * 1000)
    return {"images": len(paths), "predict_ms_median": round(statistics.median(predict_ms), 3),
            "decode_preprocess_predict_ms_median": round(statistics.median(total_ms), 3)}


def soak(bundle, broker, workdir: Path, count: int, batch: int = 500) -> dict:
    counter = Counter(broker.port, "medge/bench/soak/#")
    watch = workdir / "watch-soak"
    watch.mkdir()
    process = start_daemon(bundle, broker.url, watch, workdir / "state-soak", "soak", workdir / "daemon-soak.log")
    counter.wait(lambda: counter.online_at is not None, 60)
    images = small_pngs(3)
    samples = []
    started = time.perf_counter()
    done = 0
    while done < count:
        size = min(batch, count - done)
        paths = stage([(f"s{done + i:06d}.png", images[(done + i) % 3]) for i in range(size)],
                      workdir / "staging-soak")
        drop(paths, watch)
        done += size
        counter.wait(lambda target=done: counter.count() >= target, 600)
        samples.append({"images": done, "rss_mb": round(rss_mb(process.pid), 1),
                        "seconds": round(time.perf_counter() - started, 1)})
        shutil.rmtree(watch / "processed", ignore_errors=True)  # keep the folder walk small, like log rotation
    assert stop_daemon(process) == 0
    counter.close()
    baseline = next((s["rss_mb"] for s in samples if s["images"] >= min(2000, count)), samples[0]["rss_mb"])
    return {"images": count, "samples": samples, "rss_mb_at_2000": baseline, "rss_mb_end": samples[-1]["rss_mb"],
            "growth_mb_after_2000": round(samples[-1]["rss_mb"] - baseline, 1),
            "seconds": samples[-1]["seconds"]}


# ------------------------------------------------------------------------------ issue 15: speed


def bundle_variant(bundle: Path, workdir: Path, jpeg_reduction: str) -> Path:
    """A copy of `bundle` whose spec says `jpeg_reduction` (same model file: same scores)."""
    target = workdir / f"bundle-jpeg-{jpeg_reduction}"
    if not target.exists():
        shutil.copytree(bundle, target)
        (target / "medge.sig").unlink(missing_ok=True)
        manifest = json.loads((target / "medge.json").read_text())
        manifest["preprocessing"]["jpeg_reduction"] = jpeg_reduction
        (target / "medge.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return target


def baseline_tree(revision: str, workdir: Path) -> str:
    """A `medge` package of another revision (`git archive`, read-only), for PYTHONPATH."""
    source, package = workdir / f"rev-{revision}", workdir / f"rev-{revision}-pkg"
    source.mkdir()
    archive = subprocess.run(["git", "archive", revision], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    shutil.copytree(source / "cli", package / "medge")
    for folder in ("data", "edge", "train", "convert", "dashboard", "fleet"):
        if (source / folder).is_dir():
            (package / "medge" / folder).symlink_to(source / folder)
    return str(package)


def rendering(image28: np.ndarray, side: int, seed: int) -> bytes:
    """A 28x28 test-split image as a full-size JPEG: cubic upscale, film-grain noise, quality 92."""
    big = cv2.resize(image28, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    noise = np.random.default_rng(seed).normal(0, 3, big.shape).astype(np.int16)
    return cv2.imencode(".jpg", np.clip(big + noise, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


RENDERED_MEGAPIXELS = (0.9, 2.0, 4.0, 9.0, 16.0, 30.0, 54.0)


def full_size_jpegs() -> list[tuple[str, bytes]]:
    """The bundled X-rays (1.5-9.7 MP) and test-split renderings from 0.9 to 54 MP: ten full-size JPEGs."""
    from medge.data import PNEUMONIAMNIST

    files = [(path.name, path.read_bytes()) for path in xray_jpegs()]
    test = np.load(PNEUMONIAMNIST)["test_images"]
    for index, megapixels in enumerate(RENDERED_MEGAPIXELS):
        side = int(round((megapixels * 1e6) ** 0.5))
        files.append((f"test{index}-{megapixels:g}MP.jpeg", rendering(test[index * 37], side, index)))
    return files


def agreement(bundle_off: Path, bundle_auto: Path, count: int) -> dict:
    """Full vs reduced decode through the device's own code (decode_image -> classify), on the
    ten full-size JPEGs and `count` test-split renderings (sides 448-2000 px: every reduction,
    the margin's edge included). Decisions and the largest score difference."""
    from medge.convert.decode_check import decode_agreement
    from medge.data import PNEUMONIAMNIST
    from medge.edge.bundle import load_bundle
    from medge.edge.classify import Classifier

    reduced = load_bundle(bundle_auto)
    classifier = Classifier(load_bundle(bundle_off))
    test = np.load(PNEUMONIAMNIST)["test_images"]
    sides = (448, 700, 1000, 1400, 2000)
    images = full_size_jpegs() + [(f"r{i}.jpeg", rendering(test[i % len(test)], sides[i % len(sides)], 1000 + i))
                                  for i in range(count)]
    record = decode_agreement(classifier.predictor.predict, reduced.spec, reduced.classes, reduced.task,
                              reduced.threshold, reduced.positive_class, images=images)
    record["decisions_identical"] = round(1.0 - record["decision_flips"] / record["images"], 4)
    return record


def read_decode_classify(classifier, path: Path, spec) -> None:
    from medge.edge.preprocess import decode_image

    classifier.classify(decode_image(path, spec=spec).pixels)


def bare(bundle: Path, paths: list[Path], workers: int) -> dict:
    """decode (as the bundle's spec says) + preprocess + invoke over files on disk, no daemon: on
    one thread, or on `workers` threads (the limit every core allows)."""
    from medge.edge.bundle import load_bundle
    from medge.edge.classify import Classifier

    loaded = load_bundle(bundle)
    classifier, spec = Classifier(loaded), loaded.spec
    for path in paths[:3]:
        read_decode_classify(classifier, path, spec)
    started, cpu_started = time.perf_counter(), time.process_time()
    if workers == 1:
        for path in paths:
            read_decode_classify(classifier, path, spec)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda path: read_decode_classify(classifier, path, spec), paths))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"images": len(paths), "workers": workers, "seconds": round(seconds, 3),
            "images_per_s": round(len(paths) / seconds, 2), "ms_per_image": round(seconds * 1000 / len(paths), 3),
            "cpu_ms_per_image": round(cpu * 1000 / len(paths), 3)}


def idle_latency(broker, workdir: Path, variant: Variant, name: str, data: bytes, trials: int) -> dict:
    """One file at a time into an idle daemon: rename into the watch folder -> result at a subscriber."""
    device = f"idle-{name}"
    counter = Counter(broker.port, f"medge/bench/{device}/#")
    watch = workdir / f"watch-{device}"
    watch.mkdir()
    process = start_daemon(variant.bundle, broker.url, watch, workdir / f"state-{device}", device,
                           workdir / f"daemon-{device}.log", variant)
    counter.wait(lambda: counter.online_at is not None, 60)
    staging = workdir / f"staging-{device}"
    staging.mkdir()
    latencies = []
    for trial in range(trials + 2):  # the first two warm up (first decode, XNNPACK set-up)
        path = staging / f"i{trial:03d}{Path(name).suffix or '.jpeg'}"
        path.write_bytes(data)
        time.sleep(0.25)  # idle: the daemon has finished everything before
        started = time.perf_counter()
        os.replace(path, watch / path.name)
        counter.wait(lambda target=trial + 1: counter.count() >= target, 60)
        with counter.lock:
            arrived = max(counter.results.values())
        if trial >= 2:
            latencies.append((arrived - started) * 1000.0)
    rss = rss_mb(process.pid)
    assert stop_daemon(process) == 0
    counter.close()
    return {"trials": trials, "median_ms": round(statistics.median(latencies), 2),
            "min_ms": round(min(latencies), 2), "max_ms": round(max(latencies), 2), "rss_mb": round(rss, 1)}


def fixed_costs(bundle: Path, broker, workdir: Path, runs: int = 400) -> dict:
    """Each step the daemon spends on one small input besides decode + preprocess + invoke, in
    microseconds per input (median of `runs`), measured with the daemon's own code."""
    from medge.edge.bundle import load_bundle
    from medge.edge.classify import Classifier
    from medge.edge.outbox import Outbox, StoredOutcome
    from medge.edge.payloads import encode, result_payload
    from medge.edge.preprocess import decode_image
    from medge.edge.pseudonym import Pseudonymizer
    from medge.edge.quarantine import CrashGuard

    classifier = Classifier(load_bundle(bundle))
    png = small_pngs(1)[0]
    folder = workdir / "fixed"
    (folder / "processed").mkdir(parents=True)
    classification = classifier.classify(decode_image(png).pixels)

    def timed(step, count=runs) -> float:
        samples = []
        for index in range(count):
            started = time.perf_counter()
            step(index)
            samples.append(time.perf_counter() - started)
        return round(statistics.median(samples) * 1e6, 1)

    pseudonymizer = Pseudonymizer(b"k" * 32)
    model = {"name": "m", "version": "1", "sha256": "0" * 64, "format": "tflite-int8"}

    def payload(index):
        return encode(result_payload(site="bench", device="d", source="watch", input_ref="0" * 32, model=model,
                                     modality=None, body_part=None, is_dicom=False, classification=classification,
                                     timing_ms={"decode": 0.1, "preprocess": 0.1, "inference": 0.1, "total": 0.3}))

    message = payload(0)
    outbox = Outbox(folder / "outbox.db", 1_000_000)

    def commit(index, group=1):
        outbox.add_many([([(f"m{index}-{k}", "result", "t", message)], f"watch:f{index}-{k}",
                          StoredOutcome(ok=True, error=None, result_ids=[f"m{index}-{k}"])) for k in range(group)])

    for index in range(runs):
        (folder / f"f{index}.png").write_bytes(png)
    guard = CrashGuard(folder / "in_progress", b"k" * 32)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        costs = {
            "decode_preprocess_invoke_png64": timed(lambda i: classifier.classify(decode_image(png).pixels)),
            "hmac_pseudonym": timed(lambda i: pseudonymizer.ref(f"file{i}.png")),
            "payload_json": timed(payload),
            "quarantine_record_begin_end": timed(lambda i: (guard.begin(f"k{i}"), guard.end(f"k{i}"))),
            "ledger_lookup": timed(lambda i: outbox.stored_outcome(f"watch:nope{i}")),
            "outbox_room_check": timed(lambda i: outbox.has_room()),
            "sqlite_commit_fsync_1": timed(commit, 100),
            "sqlite_commit_fsync_per_input_of_16": round(timed(lambda i: commit(10_000 + i, 16), 50) / 16, 1),
            "rename_to_processed": timed(lambda i: os.replace(folder / f"f{i}.png", folder / "processed" / f"f{i}.png")),
            "mqtt_publish_qos1_puback": timed(lambda i: client.publish("medge/bench/fixed/result", message,
                                                                       qos=1).wait_for_publish(5), 200),
        }
    finally:
        client.loop_stop()
        client.disconnect()
        guard.close()
        outbox.close()
    return costs


def loadavg() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def speed_comparison(bundle: Path, broker, workdir: Path, args) -> dict:
    """Issue 15, side by side in one run: today's daemon (full decode, one worker; the code of
    --baseline-rev when given), the new daemon (reduced decode, every core) and the bare loops,
    interleaved repeat by repeat so the shared machine's load falls on all of them alike."""
    off, auto = bundle_variant(bundle, workdir, "off"), bundle_variant(bundle, workdir, "auto")
    baseline_path = baseline_tree(args.baseline_rev, workdir) if args.baseline_rev else None
    today = Variant("today", off, workers=None if baseline_path else 1, pythonpath=baseline_path)
    if baseline_path is not None:
        # That revision's code may not read this tree's bundles: it runs its own committed bundle
        # (the same small CNN on 28x28 input: the same invoke cost, other weights).
        own = workdir / f"rev-{args.baseline_rev}" / bundle.resolve().relative_to(REPO)
        today = Variant("today", own if own.is_dir() else off, pythonpath=baseline_path)
    new = Variant("new", auto, workers=None)
    cores = len(os.sched_getaffinity(0))
    results: dict = {"cores": cores, "baseline_rev": args.baseline_rev, "loadavg_before": loadavg()}

    jpegs = full_size_jpegs()
    results["full_size_jpegs"] = [{"name": name, "megapixels": round(np.prod(
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8).shape[:2]) * 64 / 1e6, 1)}
        for name, data in jpegs]
    jpeg_files = [(f"x{i:04d}.jpeg", jpegs[i % len(jpegs)][1]) for i in range(args.jpeg_images)]
    png_files = [(f"p{i:04d}.png", data) for i, data in enumerate(small_pngs(args.images))]
    for kind, files, bares in (("xray_jpeg", jpeg_files, (("bare_full_1core", off, 1), ("bare_reduced_all_cores", auto, cores))),
                               ("small_png", png_files, (("bare_1core", auto, 1), ("bare_all_cores", auto, cores)))):
        repeats = []
        for repeat in range(args.repeats):
            tag = f"{kind}-{repeat}"
            paths = stage(files, workdir / f"bare-{tag}")
            row = {"loadavg": loadavg()}
            for name, bare_bundle, workers in bares:
                row[name] = bare(bare_bundle, paths, workers)
            for variant in (today, new):
                row[f"daemon_{variant.name}"] = daemon_throughput(variant.bundle, broker, workdir,
                                                                  f"{tag}-{variant.name}", files, variant)
            limit = row[bares[-1][0]]["images_per_s"]
            row["new_vs_today"] = round(row["daemon_new"]["images_per_s"] / row["daemon_today"]["images_per_s"], 2)
            row["new_vs_bare_all_cores"] = round(row["daemon_new"]["images_per_s"] / limit, 3)
            row["new_vs_bare_1core"] = round(row["daemon_new"]["images_per_s"] / row[bares[0][0]]["images_per_s"], 3)
            row["today_vs_bare_1core"] = round(row["daemon_today"]["images_per_s"] / row[bares[0][0]]["images_per_s"], 3)
            repeats.append(row)
            print(f"{kind} #{repeat + 1} (load {row['loadavg'][0]}): today {row['daemon_today']['images_per_s']} img/s, "
                  f"new {row['daemon_new']['images_per_s']} img/s ({row['new_vs_today']}x), "
                  + ", ".join(f"{name} {row[name]['images_per_s']} img/s" for name, _, _ in bares)
                  + f" -> new/bare(all cores) {row['new_vs_bare_all_cores']:.0%}, new/bare(1 core) "
                    f"{row['new_vs_bare_1core']:.0%}, today/bare(1 core) {row['today_vs_bare_1core']:.0%}; RSS new "
                    f"{row['daemon_new']['rss_mb_max']} MB, today {row['daemon_today']['rss_mb_max']} MB")
        middle = sorted(repeats, key=lambda r: r["new_vs_today"])[len(repeats) // 2]
        results[kind] = dict(middle, repeats=repeats)

    results["decode_agreement"] = agreement(off, auto, args.agreement_images)
    print(f"decode agreement on {results['decode_agreement']['images']} full-size JPEGs: decisions identical "
          f"{results['decode_agreement']['decisions_identical']:.2%}, max |score diff| "
          f"{results['decode_agreement']['max_abs_score_diff']:.4f}")

    latency = {}
    xray = max(xray_jpegs(), key=lambda path: path.stat().st_size)
    for label, data in (("xray_jpeg", xray.read_bytes()), ("png64", small_pngs(1)[0])):
        for variant in (today, new):
            latency[f"{label}_{variant.name}"] = idle_latency(broker, workdir, variant, f"{label}-{variant.name}"
                                                              + (".jpeg" if label == "xray_jpeg" else ".png"),
                                                              data, args.latency_trials)
        print(f"idle latency {label}: today {latency[f'{label}_today']['median_ms']} ms, "
              f"new {latency[f'{label}_new']['median_ms']} ms (median of {args.latency_trials})")
    results["idle_latency"] = latency

    start = {variant.name: measure_start(variant.bundle, broker, workdir, args.start_trials, variant)
             for variant in (today, new)}
    results["start_to_online_s"] = {name: {"median": round(statistics.median(times), 3), "max": round(max(times), 3)}
                                    for name, times in start.items()}
    print("start -> online: " + ", ".join(f"{name} median {statistics.median(times):.2f} s" for name, times in start.items()))
    results["fixed_costs_us"] = fixed_costs(auto, broker, workdir)
    print("fixed cost per input (us): " + ", ".join(f"{k} {v}" for k, v in results["fixed_costs_us"].items()))
    results["loadavg_after"] = loadavg()
    return results


# ------------------------------------------------------------------------------ main


def quick_model(workdir: Path) -> tuple[Path, Path]:
    """A small real CNN on the bundled PneumoniaMNIST, converted to tflite-int8 (about a minute)."""
    from medge.convert.gate import GateLimits
    from medge.convert.pipeline import ConvertConfig, convert
    from medge.train.config import TrainConfig
    from medge.train.pipeline import train

    run = train(TrainConfig(out=workdir / "run", epochs=4, limit=1500, filters=(16, 32), dense_units=32,
                            bootstrap=200, verbose=False, name="pneumonia-cnn"))
    result = convert(ConvertConfig(run=run, out=workdir / "bundle", formats="tflite-int8", progress=False,
                                   limits=GateLimits(max_auc_drop=0.05, max_sensitivity_drop=0.15, min_agreement=0.85)),
                     log=lambda message: None)
    return run, result.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="training run folder (for the Keras comparison)")
    parser.add_argument("--bundle", type=Path, help="tflite-int8 bundle (default: converted from --run or a quick model)")
    parser.add_argument("--images", type=int, default=300, help="images per throughput measurement")
    parser.add_argument("--soak", type=int, default=10000, help="images in the RSS soak (0 = skip)")
    parser.add_argument("--start-trials", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="throughput measurements per image kind (median kept)")
    parser.add_argument("--out", type=Path, default=None, help=f"default {RESULTS} ({SPEED_RESULTS} with --speed)")
    speed = parser.add_argument_group("issue 15 (--speed): today's daemon vs the new one vs the bare loops")
    speed.add_argument("--speed", action="store_true", help="run the side-by-side speed comparison (no TensorFlow)")
    speed.add_argument("--jpeg-images", type=int, default=60, help="full-size JPEGs per throughput measurement")
    speed.add_argument("--agreement-images", type=int, default=600, help="test-split renderings for decode agreement")
    speed.add_argument("--latency-trials", type=int, default=15)
    speed.add_argument("--baseline-rev", help="git revision whose daemon is 'today' (e.g. the commit before issue "
                                              "15); default: this tree with jpeg_reduction off and --workers 1")
    args = parser.parse_args()

    from medge.broker import LocalBroker

    workdir = Path(tempfile.mkdtemp(prefix="medge-bench-edge-"))
    run, bundle = args.run, args.bundle
    if bundle is None and args.speed:
        bundle = REPO / "tests" / "assets" / "bundles" / "pneumonia-int8"
    if bundle is None:
        run, bundle = quick_model(workdir)
    args.out = args.out or (SPEED_RESULTS if args.speed else RESULTS)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()},
                     "bundle": str(bundle), "workdir": str(workdir)}
    broker = LocalBroker(kind="mosquitto", workdir=workdir / "broker", persistence=False).start()
    try:
        if args.speed:
            results["speed"] = speed_comparison(bundle, broker, workdir, args)
            if args.soak:
                results["soak"] = soak(bundle_variant(bundle, workdir, "auto"), broker, workdir, args.soak)
                print(f"soak {args.soak} images: RSS {results['soak']['rss_mb_at_2000']} MB at 2000 -> "
                      f"{results['soak']['rss_mb_end']} MB ({results['soak']['growth_mb_after_2000']:+.1f} MB)")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            print(f"saved {args.out}")
            return
        start = measure_start(bundle, broker, workdir, args.start_trials)
        results["start_to_online_s"] = {"median": round(statistics.median(start), 3), "max": round(max(start), 3),
                                        "trials": [round(t, 3) for t in start]}
        print(f"start -> online: median {statistics.median(start):.2f} s, max {max(start):.2f} s")

        jpegs = [(f"x{i:04d}.jpeg", xray_jpegs()[i % 3].read_bytes()) for i in range(args.images)]
        pngs = [(f"p{i:04d}.png", data) for i, data in enumerate(small_pngs(args.images))]
        for name, files in (("xray_jpeg", jpegs), ("small_png", pngs)):
            repeats = []
            for repeat in range(args.repeats):
                # The bare loop runs before and after the daemon and the faster run counts: the
                # machine is shared, and the ratio must not flatter the daemon.
                tag = f"{name}-{repeat}"
                bare_runs = [bare_loop(bundle, files, workdir, f"{tag}-before")]
                daemon = daemon_throughput(bundle, broker, workdir, tag, files)
                bare_runs.append(bare_loop(bundle, files, workdir, f"{tag}-after"))
                bare = max(bare_runs, key=lambda run: run["images_per_s"])
                ratio = daemon["images_per_s"] / bare["images_per_s"]
                # CPU time per image is what a busy shared machine does not distort.
                cpu_ratio = min(b["cpu_ms_per_image"] for b in bare_runs) / daemon["cpu_ms_per_image"]
                repeats.append({"daemon": daemon, "bare_loop": bare, "daemon_vs_bare": round(ratio, 3),
                                "cpu_efficiency_vs_bare": round(cpu_ratio, 3)})
                print(f"{name} #{repeat + 1}: daemon {daemon['images_per_s']:.1f} img/s ({daemon['ms_per_image']:.2f} ms, "
                      f"CPU {daemon['cpu_ms_per_image']:.2f} ms), bare loop {bare['images_per_s']:.1f} img/s "
                      f"(CPU {min(b['cpu_ms_per_image'] for b in bare_runs):.2f} ms) -> {ratio:.0%} wall, "
                      f"{cpu_ratio:.0%} CPU; daemon RSS median "
                      f"{daemon['rss_mb_median']:.1f} MB (max {daemon['rss_mb_max']:.1f})")
            middle = sorted(repeats, key=lambda r: r["daemon_vs_bare"])[len(repeats) // 2]
            results[f"throughput_{name}"] = dict(middle, repeats=repeats)
        if run is not None:
            keras = keras_per_image(run, pngs[:60], workdir)
            daemon_ms = results["throughput_small_png"]["daemon"]["ms_per_image"]
            keras["daemon_ms_per_image_small_png"] = daemon_ms
            keras["speedup_vs_predict"] = round(keras["predict_ms_median"] / daemon_ms, 1)
            keras["speedup_vs_decode_preprocess_predict"] = round(keras["decode_preprocess_predict_ms_median"] / daemon_ms, 1)
            results["keras_predict"] = keras
            print(f"keras model.predict: {keras['predict_ms_median']:.2f} ms/image -> daemon (everything, folder to "
                  f"acked) is {keras['speedup_vs_predict']:.1f}x faster per image")
        if args.soak:
            results["soak"] = soak(bundle, broker, workdir, args.soak)
            print(f"soak {args.soak} images in {results['soak']['seconds']:.0f} s: RSS {results['soak']['rss_mb_at_2000']} MB "
                  f"at 2000 -> {results['soak']['rss_mb_end']} MB at {args.soak} "
                  f"({results['soak']['growth_mb_after_2000']:+.1f} MB)")
    finally:
        broker.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
