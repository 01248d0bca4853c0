"""`medge demo`: the whole main job on embedded defaults, on one machine.

train on the bundled PneumoniaMNIST -> `convert --int8` through the accuracy gate -> a local
MQTT broker -> the edge daemon watching a folder -> the bundled full-size chest X-rays copied
into that folder -> results over MQTT -> the dashboard. Each stage runs as the real `medge`
command in its own process, exactly as a user would run it, and every process the demo
started is stopped on exit or Ctrl-C.

When it is not interactive (stdin is not a terminal, or CI is set) it stops by itself after
showing the results, so the README's `medge demo` works as a CI step; `--serve` keeps it up.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import click

from medge.broker import LocalBroker, free_port, stop_process, wait_for_port, wait_until
from medge.data import chest_xray_sample_files
from medge.edge.about import DISCLAIMER
from medge.edge.comms.topics import parse_topic
from medge.edge.errors import InputError, MedgeError
from medge.edge.folders import replaceable

SITE, DEVICE = "demo-site", "demo-edge-1"
# Written into --workdir: the demo only ever deletes a folder that holds it (or an empty one).
WORKDIR_MARKER = ".medge-demo"
# Every stage is a child Python: -P and PYTHONSAFEPATH keep the working directory off sys.path,
# so a folder named `medge` there (a clone's parent directory) cannot shadow the installed package.
STAGE_ENV = {**os.environ, "PYTHONSAFEPATH": "1"}


def _medge(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "medge", *args]


def check_workdir(workdir: Path) -> None:
    """Refuse (one line) a --workdir the demo may not delete: a file, or a folder it did not make."""
    if workdir.exists() and not workdir.is_dir():
        raise InputError(f"{workdir}: exists and is not a folder; choose another --workdir")
    if workdir.exists() and not replaceable(workdir, (WORKDIR_MARKER,)):
        raise InputError(f"{workdir}: not empty and not made by `medge demo`; refusing to delete it "
                         "(choose another --workdir, or an empty folder)")


def prepare_workdir(workdir: Path) -> None:
    """Start from an empty work folder, never deleting one the demo did not make."""
    check_workdir(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "logs").mkdir(parents=True)
    (workdir / WORKDIR_MARKER).write_text("made by `medge demo`, which deletes and recreates this folder\n")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Someone already listens on `port`, or it cannot be bound (what the dashboard will try)."""
    import socket

    if wait_for_port(port, host=host, timeout=0.2):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def interactive() -> bool:
    """A person at a terminal, not a CI job or a pipe: keep the demo running until Ctrl-C."""
    return sys.stdin is not None and sys.stdin.isatty() and not os.environ.get("CI")


class Stage:
    """Prints numbered stage headers so a long run reads as a story."""

    def __init__(self, total: int):
        self.total, self.index = total, 0

    def __call__(self, title: str):
        self.index += 1
        click.secho(f"\n[{self.index}/{self.total}] {title}", bold=True)


class Processes:
    """Every background process the demo starts, stopped in reverse order at the end."""

    def __init__(self):
        self.running: list[tuple[str, subprocess.Popen | LocalBroker]] = []

    def start(self, name: str, command: list[str], log: Path) -> subprocess.Popen:
        handle = open(log, "ab")
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=STAGE_ENV)
        handle.close()
        self.running.append((name, process))
        return process

    def add_broker(self, broker: LocalBroker):
        self.running.append(("broker", broker))

    def stop_all(self):
        for _name, process in reversed(self.running):
            if isinstance(process, LocalBroker):
                process.stop()
                continue
            stop_process(process, timeout=15)
        self.running.clear()


def _run_foreground(command: list[str]) -> None:
    """Run a medge stage with its progress on the terminal; a failure ends the demo."""
    done = subprocess.run(command, env=STAGE_ENV)
    if done.returncode != 0:
        raise MedgeError(f"demo: `medge {' '.join(command[4:])}` failed with exit code {done.returncode}")


class ResultListener:
    """Subscribes to the demo device's topics and prints each result as it arrives."""

    def __init__(self, port: int, names_by_ref: dict[str, str], mqtt_version: str, name_of=None):
        from medge.edge.comms.mqtt import make_client
        from medge.edge.comms.topics import subscription
        from medge.edge.config import MqttSettings

        self.results: list[dict] = []
        self.online = threading.Event()
        self.names_by_ref = names_by_ref
        self.name_of = name_of or (lambda ref: None)  # looks up refs of files dropped in later
        self._lock = threading.Lock()
        self.client = make_client(MqttSettings(broker=f"mqtt://127.0.0.1:{port}", mqtt_version=mqtt_version),
                                  "medge-demo-listener")
        self.client.on_connect = lambda client, *_: client.subscribe(subscription("medge", SITE, DEVICE), qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message):
        try:
            payload = json.loads(message.payload)
        except ValueError:
            return
        kind = parse_topic(message.topic).kind
        if kind == "status" and payload.get("state") == "online":
            self.online.set()
        elif kind == "result":
            with self._lock:
                if any(seen["id"] == payload["id"] for seen in self.results):
                    return  # a QoS 1 duplicate
                self.results.append(payload)
            ref = payload.get("input_ref", "?")
            name = self.names_by_ref.get(ref) or self.name_of(ref) or ref
            flag = click.style(" POSITIVE", fg="red", bold=True) if payload.get("positive") else ""
            click.echo(f"  result  {name:<28} -> {payload.get('class'):<10} score {payload.get('score', 0):.3f} "
                       f"(threshold {payload.get('threshold', 0):.3f}, {payload['timing_ms']['total']:.0f} ms){flag}")
        elif kind == "error":
            click.echo(f"  error   {payload.get('message')}")

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def _dashboard_results(port: int) -> int:
    """How many results the dashboard holds; -1 when it does not answer (yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=5) as response:
            return len(json.load(response).get("results", []))
    except (OSError, ValueError):
        return -1


def _names_in(inbox: Path, pseudonyms):
    """ref -> file name for whatever was dropped into the inbox (it may have moved on to processed/)."""
    def name_of(ref: str) -> str | None:
        for path in inbox.rglob("*"):
            if path.is_file() and pseudonyms.ref(path.name) == ref:
                return path.name
        return None

    return name_of


def _interrupt(signum, frame):
    # SIGTERM (e.g. from a supervisor or a test) cleans up exactly like Ctrl-C does.
    raise KeyboardInterrupt


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("medge-demo"),
              show_default=True, help="Where the run, bundle, watch folder, state and logs go.")
@click.option("--epochs", type=click.IntRange(1), default=8, show_default=True, help="Training epochs.")
@click.option("--quick", is_flag=True, help="A shorter training (5 epochs instead of 8): for tests and a first look.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Dashboard port (0 = any free port). A port already in use stops the demo before it starts.")
@click.option("--broker", "broker_kind", type=click.Choice(["auto", "mosquitto", "amqtt"]), default="auto",
              show_default=True, help="Local broker: Mosquitto when installed, else the embedded amqtt.")
@click.option("--serve/--no-serve", default=None,
              help="Keep the dashboard, daemon and broker running until Ctrl-C "
                   "[default: when interactive: stdin is a terminal and CI is not set].")
def demo_command(workdir: Path, epochs: int, quick: bool, port: int, broker_kind: str, serve: bool | None):
    """Train, quantize, deploy and watch a pneumonia classifier on this machine.

    Uses the bundled PneumoniaMNIST and real full-size chest X-rays; needs no network. Prints
    the accuracy-gate table, every published result and the dashboard URL. --workdir is
    deleted and recreated only if the demo made it (or it is empty).
    """
    stage = Stage(6)
    started = time.monotonic()
    automatic = serve is None
    serve = interactive() if automatic else serve
    workdir = workdir.resolve()
    # Both checks before anything is deleted or started: a refusal changes nothing.
    check_workdir(workdir)
    if port and port_in_use(port):
        raise InputError(f"demo: port {port} is already in use (another dashboard or demo?); "
                         "stop it, or use --port 0 for any free port")
    prepare_workdir(workdir)
    run_dir, bundle_dir, inbox = workdir / "run", workdir / "bundle", workdir / "inbox"
    processes = Processes()
    listener = None
    signal.signal(signal.SIGTERM, _interrupt)
    click.secho(f"medge demo - {DISCLAIMER}", fg="yellow")
    try:
        stage("Train a CNN on the bundled PneumoniaMNIST (real pediatric chest X-rays, 28x28)")
        train_args = ["train", "--out", str(run_dir), "--epochs", str(5 if quick else epochs)]
        if quick:
            train_args += ["--bootstrap", "200"]
        _run_foreground(_medge(*train_args))

        stage("Quantize to int8 and check it on the edge runtime (the accuracy gate)")
        # --ood warn: a minutes-long demo model may miss an OOD floor; the guard is still built and reported
        _run_foreground(_medge("convert", str(run_dir), "--int8", "--out", str(bundle_dir), "--force", "--ood", "warn"))

        stage("Start a local MQTT broker")
        broker = LocalBroker(kind=broker_kind, workdir=workdir / "broker")
        broker.start()
        processes.add_broker(broker)
        click.echo(f"  {broker.kind} on {broker.url}")

        stage("Start the dashboard")
        dashboard_port = port or free_port()
        dashboard = processes.start("dashboard", _medge(
            "dashboard", "--broker", broker.url, "--mqtt-version", broker.mqtt_version, "--port", str(dashboard_port),
            "--db", str(workdir / "dashboard.sqlite")), workdir / "logs" / "dashboard.log")
        if not wait_for_port(dashboard_port, timeout=20) or dashboard.poll() is not None:
            raise MedgeError(f"demo: the dashboard did not start; see {workdir / 'logs' / 'dashboard.log'}")
        click.echo(f"  http://127.0.0.1:{dashboard_port}/")

        stage("Start the edge daemon watching a scanner export folder")
        inbox.mkdir()
        state_dir = workdir / "state"
        from medge.edge.pseudonym import Pseudonymizer, load_or_create_key

        # The demo holds the device key so it can show file names beside the pseudonymous refs
        # the daemon publishes; the wire itself never carries a file name.
        pseudonyms = Pseudonymizer(load_or_create_key(state_dir / "pseudonym.key"))
        samples = chest_xray_sample_files()
        listener = ResultListener(broker.port, {pseudonyms.ref(path.name): path.name for path in samples},
                                  broker.mqtt_version, name_of=_names_in(inbox, pseudonyms))
        processes.start("edge daemon", _medge(
            "edge", "run", str(bundle_dir), "--watch", str(inbox), "--broker", broker.url,
            "--mqtt-version", broker.mqtt_version, "--site", SITE, "--device", DEVICE, "--state-dir", str(state_dir),
            "--pseudonym-key-file", str(state_dir / "pseudonym.key"), "--heartbeat-s", "5"),
            workdir / "logs" / "edge.log")
        if not listener.online.wait(timeout=60):
            raise MedgeError(f"demo: the edge daemon did not come online; see {workdir / 'logs' / 'edge.log'}")
        click.echo(f"  {DEVICE} is online (site {SITE})")

        stage(f"Copy {len(samples)} real chest X-rays into {inbox}")
        for path in samples:
            shutil.copy2(path, inbox / path.name)
        if not wait_until(lambda: len(listener.results) >= len(samples), timeout=120):
            raise MedgeError(f"demo: only {len(listener.results)} of {len(samples)} results arrived; "
                             f"see {workdir / 'logs' / 'edge.log'}")
        wait_until(lambda: _dashboard_results(dashboard_port) >= len(samples), timeout=20)
        shown = _dashboard_results(dashboard_port)

        click.secho(f"\nDone in {_duration(time.monotonic() - started)}.", bold=True)
        click.echo(f"  run (metrics, plots, report.md): {run_dir}")
        click.echo(f"  bundle (int8 model, medge.json, gate report): {bundle_dir}")
        click.echo(f"  results published: {len(listener.results)}; on the dashboard: {shown}")
        click.echo(f"  dashboard: http://127.0.0.1:{dashboard_port}/")
        click.secho(f"  {DISCLAIMER}", fg="yellow")
        if serve:
            # The listener stays subscribed: every later result is printed here too.
            click.echo("\nDashboard, daemon and broker keep running; drop more images into "
                       f"{inbox} and watch their results here. Ctrl-C to stop.")
            while True:
                time.sleep(1)
        elif automatic:
            click.echo("\nNot interactive (stdin is not a terminal, or CI is set): stopping. "
                       "`medge demo --serve` keeps it running.")
    except KeyboardInterrupt:
        click.echo("\nStopping...")
    finally:
        if listener is not None:
            listener.close()
        processes.stop_all()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
