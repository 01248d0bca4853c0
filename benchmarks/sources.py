"""How fast the scanner and camera sources are, on this machine.

    python benchmarks/sources.py                       # receiver + camera, no model
    python benchmarks/sources.py --bundle BUNDLE       # plus C-STORE through the real daemon

1. DICOM receiver: dcmtk's storescu (a separate process) sends N copies of a bundled DICOM file
   in one association; the time per instance until Success, with the real decode behind it.
   With --bundle: the same through `medge edge run --dicom-port` (decode, classify, durable
   outbox write before Success), against a local Mosquitto.
2. Frame-quality check: milliseconds per frame (black/frozen/blur) at 640x480 and 1920x1080.
3. Camera source reading an MJPG .avi written from the bundled X-rays: frames read per second.

storescu runs with TCP_NODELAY=1: this dcmtk build leaves Nagle's algorithm on, which stalls
every C-STORE ~40 ms on the peer's side (delayed ACK) and would hide the receiver's own cost.
`--nagle` measures with dcmtk's default instead.

Prints a table and saves benchmarks/results/sources.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.fixtures: the same dcmtk peer and videos the tests use

from medge.broker import LocalBroker, free_port, wait_for_port  # noqa: E402
from medge.edge.errors import InputError  # noqa: E402
from medge.edge.frame_quality import FrameQuality  # noqa: E402
from medge.edge.sources.base import Outcome  # noqa: E402
from medge.edge.sources.camera import CameraSource  # noqa: E402
from medge.edge.sources.dicom_receiver import DicomReceiver, DicomSettings  # noqa: E402
from tests.fixtures.dicom import bundled_dicom, storescu  # noqa: E402
from tests.fixtures.video import scene, write_video  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
FILES = {  # name -> what it is
    "CT_small.dcm": "CT 128x128, explicit VR",
    "JPEG2000.dcm": "NM 1024x256, JPEG 2000",
    "examples_ybr_color.dcm": "US 320x240x30 frames, JPEG baseline",
}


def copies(name: str, count: int, folder: Path) -> list[Path]:
    """`count` copies of a bundled file, each its own instance (a new SOP Instance UID)."""
    import pydicom

    paths = []
    for index in range(count):
        dataset = pydicom.dcmread(bundled_dicom(name))
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        path = folder / f"{Path(name).stem}_{index:03d}.dcm"
        dataset.save_as(path)
        paths.append(path)
    return paths


def bench_receiver(count: int, folder: Path) -> dict:
    items: queue.Queue = queue.Queue()

    def worker():
        while True:
            item = items.get()
            try:
                item.load()
                item.done(Outcome(ok=True))
            except InputError as error:
                item.done(Outcome(ok=False, error=str(error)))

    threading.Thread(target=worker, daemon=True).start()
    receiver = DicomReceiver(DicomSettings(port=free_port(), bind="127.0.0.1"))
    receiver.start(items.put)
    figures = {}
    try:
        for name, what in FILES.items():
            paths = copies(name, count, folder)
            started = time.perf_counter()
            reply = storescu(receiver.port, *paths)
            seconds = time.perf_counter() - started
            assert reply.statuses == ["Success"] * count, reply.output[-2000:]
            figures[name] = {"what": what, "instances": count, "ms_per_instance": round(seconds / count * 1000, 1),
                             "instances_per_s": round(count / seconds, 1)}
    finally:
        receiver.stop()
    return figures


def bench_daemon(bundle: Path, count: int, folder: Path) -> dict:
    port = free_port()
    figures = {}
    with LocalBroker(kind="mosquitto", workdir=folder / "broker") as broker:
        import subprocess

        log = open(folder / "edge.log", "wb")
        daemon = subprocess.Popen([sys.executable, "-m", "medge", "edge", "run", str(bundle), "--broker", broker.url,
                                   "--dicom-port", str(port), "--state-dir", str(folder / "state"),
                                   "--site", "bench", "--device", "bench", "--log-level", "WARNING"],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            assert wait_for_port(port, timeout=120), (folder / "edge.log").read_text()[-2000:]
            for name, what in FILES.items():
                paths = copies(name, count, folder)
                started = time.perf_counter()
                reply = storescu(port, *paths)
                seconds = time.perf_counter() - started
                assert reply.statuses == ["Success"] * count, reply.output[-2000:]
                figures[name] = {"what": what + " (first frame classified)", "instances": count,
                                 "ms_per_instance": round(seconds / count * 1000, 1),
                                 "instances_per_s": round(count / seconds, 1)}
        finally:
            daemon.terminate()
            daemon.wait(60)
            log.close()
    return figures


def bench_quality(repeats: int = 200) -> dict:
    figures = {}
    for width, height in ((640, 480), (1920, 1080)):
        frames = [cv2.resize(cv2.cvtColor(scene(f"xray{i}"), cv2.COLOR_BGR2RGB), (width, height)) for i in range(3)]
        quality = FrameQuality()
        started = time.perf_counter()
        for index in range(repeats):
            quality.check(frames[index % 3])
        figures[f"{width}x{height}"] = {"ms_per_frame": round((time.perf_counter() - started) / repeats * 1000, 3)}
    return figures


def bench_camera(folder: Path, seconds_of_video: int = 60) -> dict:
    kinds = [f"xray{i % 3}" for i in range(seconds_of_video)]
    video = write_video(folder / "bench.avi", kinds, video_fps=10)
    done = threading.Event()
    source = CameraSource(str(video), fps=1.0,
                          on_event=lambda level, kind, message: done.set() if kind == "source_ended" else None)
    started = time.perf_counter()
    source.start(lambda item: (item.load(), item.done(Outcome(ok=True))))
    assert done.wait(300), source.health()
    seconds = time.perf_counter() - started
    health = source.health()
    source.stop()
    return {"video": f"MJPG 640x480, {seconds_of_video} s at 10 fps", "frames_read": health["frames_read"],
            "frames_per_s": round(health["frames_read"] / seconds, 1), "frames_classified": health["frames_classified"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a model bundle: also measure C-STORE through the daemon")
    parser.add_argument("--count", type=int, default=20, help="instances per file type")
    parser.add_argument("--nagle", action="store_true", help="leave storescu's Nagle algorithm on (dcmtk default)")
    args = parser.parse_args()
    if not args.nagle:
        os.environ["TCP_NODELAY"] = "1"  # read by dcmtk's network layer
    if not shutil.which("mosquitto") and args.bundle:
        print("note: mosquitto not found; LocalBroker falls back to amqtt")
    results = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "cpus": os.cpu_count(), "cv2": cv2.__version__},
               "storescu_tcp_nodelay": not args.nagle}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        results["dicom_receiver"] = bench_receiver(args.count, folder)
        if args.bundle:
            results["dicom_through_daemon"] = bench_daemon(args.bundle, args.count, folder)
        results["frame_quality"] = bench_quality()
        results["camera_file"] = bench_camera(folder)

    for section in ("dicom_receiver", "dicom_through_daemon"):
        for _name, row in results.get(section, {}).items():
            print(f"{section:22s} {row['what']:48s} {row['ms_per_instance']:8.1f} ms/instance "
                  f"{row['instances_per_s']:7.1f} /s")
    for size, row in results["frame_quality"].items():
        print(f"{'frame_quality':22s} {size:48s} {row['ms_per_frame']:8.3f} ms/frame")
    camera = results["camera_file"]
    print(f"{'camera_file':22s} {camera['video']:48s} {camera['frames_per_s']:8.1f} frames/s read")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sources.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {RESULTS / 'sources.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
