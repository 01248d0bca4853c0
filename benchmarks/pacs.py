"""What answering in DICOM costs per input: SR + SC writing and their durable queueing, against
the classification path, on full-size real chest X-rays written as 12-bit CRs with patient tags.

    python benchmarks/pacs.py --bundle BUNDLE            # a tflite-int8 bundle
    python benchmarks/pacs.py --bundle BUNDLE --orthanc  # plus delivery to a real Orthanc
    python benchmarks/pacs.py --bundle BUNDLE --inputs 0 --outage-s 300   # the issue's outage target

Per input, in one process, as the daemon's worker does it:
- classification path: parse the received dataset, decode (modality/VOI LUT), preprocess +
  int8 inference, result payload, durable outbox commit (SQLite, synchronous=FULL);
- added before the scanner is answered (the daemon's hook): the input's write job (its header
  without pixels, the display frame downscaled to 1024 px as PNG, the payloads), committed durably;
- off the scanner's path (the writer thread): the Comprehensive SR, the Secondary Capture with
  the burned-in text, both serialised and committed to the delivery queue in place of the job.
With --orthanc: objects per second delivered by C-STORE and by STOW-RS to a local Orthanc (the
delivery runs on its own thread, off the scanner's path). With --outage-s: the real daemon, a real
Mosquitto and Orthanc; the PACS is down that long while --outage-instances CRs arrive through
dcmtk's storescu (the daemon SIGKILLed and restarted once midway); then every study in Orthanc
is counted: objects lost (no SR or SC) and duplicated.

Prints a table and writes benchmarks/results/pacs.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fixtures: the same DICOM writer and Orthanc the tests use

from medge.data import chest_xray_sample_files  # noqa: E402
from medge.edge.bundle import load_bundle  # noqa: E402
from medge.edge.classify import Classifier  # noqa: E402
from medge.edge.outbox import Outbox, StoredOutcome  # noqa: E402
from medge.edge.pacs.delivery import PacsDelivery, decode_frame  # noqa: E402
from medge.edge.pacs.delivery_queue import DeliveryQueue  # noqa: E402
from medge.edge.pacs.objects import read_dicom, write_objects  # noqa: E402
from medge.edge.pacs.result import Finding, ModelIdentity  # noqa: E402
from medge.edge.pacs.secondary_capture import build_sc  # noqa: E402
from medge.edge.pacs.sr import build_sr  # noqa: E402
from medge.edge.payloads import encode, result_payload  # noqa: E402
from medge.edge.preprocess import decode_dicom_dataset  # noqa: E402
from medge.edge.sources.base import InputItem  # noqa: E402
from tests.fixtures.dicom import CR_IMAGE, write_xray_dicom  # noqa: E402
from tests.fixtures.edge import PHI  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "pacs.json"


def full_size_crs(folder: Path) -> list[tuple[str, bytes]]:
    """The bundled chest X-rays at their own resolution as 12-bit CR files with patient tags."""
    out = []
    for index, path in enumerate(chest_xray_sample_files()):
        pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        target = write_xray_dicom(folder / f"cr{index}.dcm", pixels, modality="CR", sop_class=CR_IMAGE, tags=PHI)
        out.append((f"{pixels.shape[1]}x{pixels.shape[0]}", target.read_bytes()))
    return out


def new_instance(data: bytes):
    """The received dataset of a new instance (what the receiver hands over): parsed lazily."""
    import pydicom
    from pydicom.uid import generate_uid

    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return dataset


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def measure(bundle_path: Path, crs: list[tuple[str, bytes]], inputs: int, workdir: Path) -> dict:
    bundle = load_bundle(bundle_path)
    classifier = Classifier(bundle)
    model = {"name": str(bundle.name), "version": str(bundle.version), "sha256": classifier.artifact.sha256,
             "format": classifier.artifact.format}
    finding = bundle.positive_class or bundle.classes[-1]
    outbox = Outbox(workdir / "outbox.sqlite3")
    queue = DeliveryQueue(workdir / "pacs.sqlite3")
    # The daemon's hook, with its queue; the writer is run by hand below so that it can be timed.
    hook = PacsDelivery([], queue, finding=finding, device="d1")
    per_size: dict[str, dict] = {}
    for size, data in crs:
        rows = []
        for index in range(inputs + 2):  # the first two warm caches and imports up, not counted
            dataset = new_instance(data)
            started = time.perf_counter()
            decoded = decode_dicom_dataset(dataset, "cr")
            classification = classifier.classify(decoded.frames[0])
            payload = result_payload(site="bench", device="d1", source="dicom", input_ref="x" * 16, model=model,
                                     classification=classification, timing_ms={"total": 0.0}, modality="CR",
                                     body_part="CHEST", is_dicom=True)
            messages = [(payload["id"], "result", "medge/bench/d1/result", encode(payload))]
            outbox.add(messages, f"dicom:{index}", StoredOutcome(ok=True, error=None, result_ids=[payload["id"]]))
            classified = time.perf_counter()
            # What the scanner waits for in addition: the write job, stored durably.
            hook(InputItem(source="dicom", ref="x", load=lambda d=decoded: d, dataset=dataset), decoded, messages)
            queued = time.perf_counter()
            # Off the scanner's path: the writer thread's work for this job.
            job = queue.jobs(1)[0]
            objects = write_objects(read_dicom(job.header), [decode_frame(job.pixels)], json.loads(job.payloads),
                                    finding, "d1")
            queue.job_done(job.seq, objects, [])
            written = time.perf_counter()
            # The writers alone, for the breakdown.
            result = Finding.from_payload(payload, finding)
            identity = ModelIdentity.from_payload(model)
            t0 = time.perf_counter()
            build_sr(dataset, [result], identity, "d1")
            t1 = time.perf_counter()
            build_sc(dataset, decoded.frames[0], [result], identity)
            t2 = time.perf_counter()
            if index >= 2:
                rows.append({"classify": (classified - started) * 1e3, "job": (queued - classified) * 1e3,
                             "writer": (written - queued) * 1e3, "sr": (t1 - t0) * 1e3, "sc": (t2 - t1) * 1e3,
                             "sr_bytes": len(objects[0][2]), "sc_bytes": len(objects[1][2])})
        classify_ms = median([r["classify"] for r in rows])
        job_ms = median([r["job"] for r in rows])
        writer_ms = median([r["writer"] for r in rows])
        per_size[size] = {
            "inputs": len(rows), "classification_path_ms": classify_ms,
            "added_before_answer_ms": job_ms, "added_vs_classification": round(job_ms / classify_ms, 3),
            "background_writer_ms": writer_ms, "background_vs_classification": round(writer_ms / classify_ms, 3),
            "sr_build_ms": median([r["sr"] for r in rows]), "sc_build_ms": median([r["sc"] for r in rows]),
            "sr_kb": round(rows[0]["sr_bytes"] / 1024, 1), "sc_kb": round(rows[0]["sc_bytes"] / 1024, 1),
        }
        print(f"CR {size}: classification path {classify_ms:.1f} ms; added before the scanner is answered "
              f"{job_ms:.1f} ms ({job_ms / classify_ms:.0%}); background writer {writer_ms:.1f} ms "
              f"({writer_ms / classify_ms:.0%}: SR {per_size[size]['sr_build_ms']:.1f} ms, "
              f"SC {per_size[size]['sc_build_ms']:.1f} ms)")
    outbox.close()
    queue.close()
    return per_size


def delivery_rate(workdir: Path, crs, count: int) -> dict:
    """Objects per second to a real Orthanc by C-STORE and by STOW-RS (batches of 20)."""
    from medge.edge.pacs.delivery_queue import Delivery
    from medge.edge.pacs.senders import CStoreSender, StowSender
    from tests.fixtures.orthanc import Orthanc

    payload = {"status": "classified", "class": "pneumonia", "score": 0.9, "threshold": 0.5, "positive": True,
               "model": {"name": "bench", "version": "1", "sha256": "ab" * 32, "format": "tflite-int8"}}
    objects = []
    for index in range(count // 2):
        dataset = new_instance(crs[index % len(crs)][1])
        objects += write_objects(dataset, decode_dicom_dataset(dataset, "cr").frames, [payload], "pneumonia", "d1")
    deliveries = [Delivery(seq, uid, "t", kind, data, 0) for seq, (uid, kind, data) in enumerate(objects)]
    rates = {}
    for name in ("cstore", "stow"):
        pacs = Orthanc(workdir / f"orthanc-{name}").start()  # an empty PACS for each sender
        try:
            sender = CStoreSender(pacs.address) if name == "cstore" else StowSender(pacs.dicomweb_url)
            started = time.perf_counter()
            for offset in range(0, len(deliveries), 20):
                answers = sender.send(deliveries[offset: offset + 20])
                assert all(answer is None for answer in answers.values()), answers
            seconds = time.perf_counter() - started
            assert pacs.instance_count() == len(deliveries)
        finally:
            pacs.stop()
        rates[name] = {"objects": len(deliveries), "objects_per_s": round(len(deliveries) / seconds, 1)}
        print(f"delivery by {name}: {rates[name]['objects_per_s']} objects/s ({len(deliveries)} objects)")
    return rates


def outage(bundle: Path, workdir: Path, instances: int, outage_s: float) -> dict:
    """The issue's target: the PACS down for `outage_s` while `instances` CRs arrive (the daemon
    also killed and restarted once during the outage); then count what the PACS holds."""
    import paho.mqtt.client as mqtt

    from medge.broker import LocalBroker, free_port, wait_for_port
    from tests.fixtures.dicom import storescu
    from tests.fixtures.edge import EdgeProcess, small_xray
    from tests.fixtures.orthanc import Orthanc

    folder = workdir / "outage"
    folder.mkdir()
    crs = [write_xray_dicom(folder / f"cr{i:03d}.dcm", small_xray(i, 256), modality="CR", sop_class=CR_IMAGE,
                            tags={**PHI, "PatientID": f"MRN-{i:05d}"}) for i in range(instances)]
    import pydicom

    studies = [str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID) for path in crs]
    broker = LocalBroker(kind="mosquitto", workdir=folder / "broker", persistence=False).start()
    pacs = Orthanc(folder / "orthanc").start()
    heartbeats: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: heartbeats.append(json.loads(m.payload))
    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe("medge/+/+/heartbeat")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    port = free_port()
    args = [str(bundle), "--broker", broker.url, "--site", "bench", "--device", "d1", "--dicom-port", str(port),
            "--state-dir", str(folder / "state"), "--heartbeat-s", "1", "--pacs", pacs.address]
    env = {"MEDGE_PACS_RETRY_MIN_S": "1", "MEDGE_PACS_RETRY_MAX_S": "30"}

    def start_daemon(n: int) -> EdgeProcess:
        daemon = EdgeProcess(args, folder / f"edge-{n}.log", env=env).start()
        if not wait_for_port(port, timeout=120):
            raise SystemExit(f"the daemon did not start:\n{daemon.log_text()[-2000:]}")
        return daemon

    daemon = None
    try:
        for path in crs:
            pacs.upload(path)
        pacs.stop()
        down_at = time.monotonic()
        daemon = start_daemon(0)
        statuses = []
        batches = 10
        for batch in range(batches):
            part = crs[batch * instances // batches: (batch + 1) * instances // batches]
            statuses += storescu(port, *part, calling="XRAYCART").statuses
            if batch == batches // 2:
                daemon.kill()  # a crash during the outage
                daemon = start_daemon(1)
            time.sleep(max(0.0, down_at + outage_s * (batch + 1) / batches - time.monotonic()))
        queued_peak = max((h["counters"].get("pacs_queued", 0) for h in heartbeats), default=0)
        pacs.start()
        back_at = time.monotonic()
        deadline = back_at + 600
        while time.monotonic() < deadline:
            last = heartbeats[-1]["counters"] if heartbeats else {}
            if last.get("pacs_queued") == 0 and last.get("pacs_writing") == 0 and time.monotonic() - back_at > 2:
                break
            time.sleep(1)
        drained_s = time.monotonic() - back_at
        daemon.stop()
        counts = {"SR": [], "OT": []}
        for study in studies:
            kinds = [i["Modality"] for i in pacs.instances_of_study(study)]
            for kind in counts:
                counts[kind].append(kinds.count(kind))
        lost = sum(1 for kind in counts for n in counts[kind] if n == 0)
        duplicates = sum(n - 1 for kind in counts for n in counts[kind] if n > 1)
        result = {"instances": instances, "outage_s": outage_s, "scanner_success": statuses.count("Success"),
                  "queued_peak": queued_peak, "drained_after_s": round(drained_s, 1), "objects_lost": lost,
                  "objects_duplicated": duplicates, "pacs_instances": pacs.instance_count()}
        print(f"outage {outage_s:.0f} s, {instances} instances (daemon killed once): scanner got Success for "
              f"{result['scanner_success']}, peak queue {queued_peak}, drained {drained_s:.0f} s after the PACS "
              f"came back; lost {lost}, duplicates {duplicates}")
        return result
    finally:
        client.loop_stop()
        if daemon is not None and daemon.running:
            daemon.kill()
        pacs.stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="tflite-int8 bundle")
    parser.add_argument("--inputs", type=int, default=20, help="inputs per X-ray size")
    parser.add_argument("--orthanc", action="store_true", help="also measure delivery to a local Orthanc")
    parser.add_argument("--outage-s", type=float, default=0,
                        help="also run the outage scenario: the PACS down this long (the issue: 300)")
    parser.add_argument("--outage-instances", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="medge-bench-pacs-"))
    crs = full_size_crs(workdir)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform()}, "bundle": str(args.bundle)}
    if args.inputs:
        results["per_input"] = measure(args.bundle, crs, args.inputs, workdir)
    if args.orthanc:
        results["delivery"] = delivery_rate(workdir, crs, 40)
    if args.outage_s:
        results["outage"] = outage(args.bundle, workdir, args.outage_instances, args.outage_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
