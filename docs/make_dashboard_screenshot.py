"""Takes docs/dashboard.png from a real run: three `medge edge run` daemons classify real
PneumoniaMNIST test images and chest X-rays into a real Mosquitto, `medge dashboard` shows
them, and headless Chromium photographs the page. One daemon runs an older model version
(the mismatch warning) and is killed at the end (its last will: the offline alert).

    python docs/make_dashboard_screenshot.py BUNDLE --older-bundle OLDER_BUNDLE [--minutes 3]
"""
from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from medge.broker import LocalBroker, free_port, wait_for_port
from medge.data import PNEUMONIAMNIST, chest_xray_sample_files

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEVICES = [("radiology", "cr-room-1"), ("radiology", "cr-room-2"), ("emergency", "portable-dx")]


def medge(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "medge", *args], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--older-bundle", type=Path, help="Run by the last device (version mismatch).")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "dashboard.png")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medge-shot-"))
    rng = random.Random(7)
    images = np.load(PNEUMONIAMNIST)["test_images"]
    xrays = list(chest_xray_sample_files())

    broker = LocalBroker(kind="mosquitto", workdir=work / "broker").start()
    port = free_port()
    processes = [medge("dashboard", "--broker", broker.url, "--port", str(port), "--db", str(work / "h.sqlite"),
                       log=work / "dashboard.log")]
    daemons, inboxes = [], []
    for index, (site, device) in enumerate(DEVICES):
        bundle = args.older_bundle if args.older_bundle and index == len(DEVICES) - 1 else args.bundle
        inbox = work / device / "incoming"
        inbox.mkdir(parents=True)
        inboxes.append(inbox)
        daemons.append(medge("edge", "run", str(bundle), "--broker", broker.url, "--site", site, "--device", device,
                             "--watch", str(inbox), "--state-dir", str(work / device / "state"), "--stable-s", "0.3",
                             "--heartbeat-s", "5", log=work / f"{device}.log"))
    processes += daemons
    try:
        assert wait_for_port(port, timeout=30), (work / "dashboard.log").read_text()
        deadline = time.monotonic() + args.minutes * 60
        count = 0
        while time.monotonic() < deadline:
            inbox = inboxes[rng.choice([0, 0, 1, 1, 2])]
            count += 1
            name = inbox / f"image-{count:04d}"
            if count % 25 == 0:
                shutil.copy(rng.choice(xrays), name.with_suffix(".jpeg"))
            elif count == 40:
                name.with_suffix(".txt").write_text("exported report, not an image")
            else:
                pixels = cv2.resize(images[rng.randrange(len(images))], (224, 224), interpolation=cv2.INTER_CUBIC)
                cv2.imwrite(str(name.with_suffix(".png")), pixels)
            time.sleep(rng.uniform(0.5, 2.5))
        daemons[-1].send_signal(signal.SIGKILL)  # a power cut on the portable unit: its last will
        time.sleep(3)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#results-body tr")
            time.sleep(2)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"{args.out}: {count} inputs from {len(DEVICES)} devices ({work})")
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        broker.stop()


if __name__ == "__main__":
    main()
