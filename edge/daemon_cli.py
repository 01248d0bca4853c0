"""`medge edge run` and `medge edge check`: the daemon's command line.

Flags override the environment (MEDGE_*), which overrides the TOML file (--config). Flags
default to None so that an unset flag never hides a value from the file or the environment.
"""
from __future__ import annotations

import functools
import socket
from pathlib import Path

import click

from .config import EdgeConfig, load_config
from .errors import MedgeError

# (flag, dotted config key, click type, help)
OPTIONS = [
    ("--site", "site", str, "Site name (a topic level). [default: default]"),
    ("--device", "device", str, "Device name (a topic level). [default: host name]"),
    ("--broker", "mqtt.broker", str, "mqtt://host:1883 or mqtts://host:8883."),
    ("--mqtt-version", "mqtt.mqtt_version", click.Choice(["5", "3.1.1"]), "MQTT protocol version. [default: 5]"),
    ("--username", "mqtt.username", str, "Broker user (password: MEDGE_MQTT_PASSWORD or --password-file)."),
    ("--password-file", "mqtt.password_file", click.Path(dir_okay=False), "File holding the broker password."),
    ("--ca-file", "mqtt.ca_file", click.Path(dir_okay=False), "CA certificate(s) to verify the broker (mqtts)."),
    ("--cert-file", "mqtt.cert_file", click.Path(dir_okay=False), "Client certificate (mqtts)."),
    ("--key-file", "mqtt.key_file", click.Path(dir_okay=False), "Client certificate key (mqtts)."),
    ("--topic-prefix", "mqtt.topic_prefix", str, "First topic level. [default: medge]"),
    ("--client-id", "mqtt.client_id", str, "MQTT client id. [default: medge-SITE-DEVICE]"),
    ("--heartbeat-s", "mqtt.heartbeat_s", float, "Seconds between heartbeats. [default: 30]"),
    ("--watch", "watch.dir", click.Path(file_okay=False), "Scanner export folder to watch."),
    ("--processed-dir", "watch.processed_dir", click.Path(file_okay=False), "[default: WATCH/processed]"),
    ("--rejected-dir", "watch.rejected_dir", click.Path(file_okay=False), "[default: WATCH/rejected]"),
    ("--stable-s", "watch.stable_s", float, "A file is complete when unchanged this long. [default: 1.0]"),
    ("--poll-s", "watch.poll_s", float, "Seconds between folder scans. [default: 0.5]"),
    ("--dicom-port", "dicom.port", int, "Run a DICOM C-STORE receiver on this port."),
    ("--ae-title", "dicom.ae_title", str, "The receiver's AE title. [default: MEDGE]"),
    ("--frames", "dicom.frames", click.Choice(["first", "all", "max"]), "Multi-frame policy. [default: first]"),
    ("--camera", "camera.src", str, "Camera: device index, stream URL or video file."),
    ("--fps", "camera.fps", float, "Camera frames classified per second. [default: 1]"),
    ("--roi", "camera.roi", str, "Camera region of interest x,y,w,h."),
    ("--runtime", "runtime.runtime", str, "auto, litert, tflite-runtime or onnxruntime."),
    ("--threads", "runtime.threads", int, "Inference threads."),
    ("--state-dir", "state.dir", click.Path(file_okay=False), "Outbox and device key. [default: ~/.local/state/medge]"),
    ("--outbox-max", "state.outbox_max", int, "Most unacknowledged messages kept. [default: 10000]"),
    ("--pseudonym-key-file", "state.pseudonym_key_file", click.Path(dir_okay=False), "HMAC key for input references."),
    ("--log-level", "log.level", click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), "[default: INFO]"),
    ("--log-format", "log.format", click.Choice(["text", "json"]), "[default: text]"),
    ("--max-pixels", "log.max_pixels", int, "Refuse images with more pixels (decompression bombs)."),
]


def config_options(command):
    """The options shared by run and check, collected into one `flags` dict of dotted keys."""
    @functools.wraps(command)
    def wrapper(config_file, bundle, tls_insecure, allowed_caller, **values):
        flags = {key: values.pop(_param_name(flag)) for flag, key, _, _ in OPTIONS}
        flags["bundle"] = bundle
        flags["mqtt.tls_insecure"] = tls_insecure
        # Repeatable and comma-separated both work: --allowed-caller A --allowed-caller B, or A,B.
        callers = [name.strip() for value in allowed_caller for name in value.split(",") if name.strip()]
        flags["dicom.allowed_callers"] = callers or None
        return command(load_config(config_file, flags=flags), **values)

    for flag, _key, kind, help_text in reversed(OPTIONS):
        wrapper = click.option(flag, _param_name(flag), type=kind, default=None, help=help_text)(wrapper)
    wrapper = click.option("--allowed-callers", "--allowed-caller", "allowed_caller", multiple=True,
                           help="Calling AE titles allowed to send: AE1,AE2 (repeatable). [default: anyone]")(wrapper)
    wrapper = click.option("--tls-insecure/--tls-verify", "tls_insecure", default=None,
                           help="Skip the broker certificate's host name check (never the default).")(wrapper)
    wrapper = click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
                           help="TOML configuration file (see deploy/edge.example.toml).")(wrapper)
    wrapper = click.argument("bundle", required=False, type=click.Path())(wrapper)
    return wrapper


def _param_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


@click.group("edge")
def edge_group():
    """The point-of-care daemon: watch a folder / receive DICOM / read a camera, classify, publish over MQTT.

    Settings: TOML file (--config) < environment MEDGE_* < flags. Results are decision
    support, not for diagnostic use.
    """


@edge_group.command("run")
@config_options
def run_command(config: EdgeConfig):
    """Run the daemon until SIGTERM/SIGINT (then finish in-flight work, publish offline, exit 0)."""
    from .daemon import EdgeDaemon
    from .log import setup_logging

    setup_logging(config.log.level, config.log.format)
    EdgeDaemon(config).run()


@edge_group.command("check")
@config_options
def check_command(config: EdgeConfig):
    """Check configuration, bundle, sources and broker; exit non-zero with the reasons."""
    problems = 0
    for name, check in CHECKS:
        try:
            detail = check(config)
        except MedgeError as error:
            detail, failed = str(error), True
        except Exception as error:  # a check must report, never crash
            detail, failed = f"{type(error).__name__}: {error}", True
        else:
            failed = detail is not None and detail.startswith("FAIL ")
            detail = detail[5:] if failed else detail
        problems += failed
        click.echo(f"{'FAIL' if failed else 'ok  '} {name}: {detail}")
    if problems:
        raise click.ClickException(f"{problems} check(s) failed")
    click.echo("all checks passed")


# -------------------------------------------------------------------------------- checks
# Each returns a one-line detail; "FAIL ..." (or raising MedgeError) marks a failure.


def _check_config(config: EdgeConfig) -> str:
    return f"site {config.site}, device {config.device}, broker {config.mqtt.broker}, sources: " + (
        ", ".join(config.source_names()) or "none")


def _check_bundle(config: EdgeConfig) -> str:
    if config.bundle is None:
        return "FAIL no bundle given"
    from .bundle import load_bundle
    from .classify import Classifier

    bundle = load_bundle(config.bundle)
    classifier = Classifier(bundle, runtime=config.runtime.runtime, threads=config.runtime.threads)
    return (f"{bundle.name} {bundle.version}: every sha256 matches; {classifier.artifact.format} "
            f"on {classifier.runtime_name}")


def _writable(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".medge-check"
        probe.write_text("ok")
        probe.unlink()
        return None
    except OSError as error:
        return f"{path} is not writable ({error.strerror or error})"


def _check_sources(config: EdgeConfig) -> str:
    names = config.source_names()
    if not names:
        return "FAIL no input source (set watch.dir, dicom.port or camera.src)"
    problems = []
    if config.watch.dir is not None:
        for folder in (config.watch.dir, config.processed_dir, config.rejected_dir):
            problem = _writable(folder)
            if problem:
                problems.append(problem)
    if config.dicom.port is not None:
        try:
            import pynetdicom  # noqa: F401
        except ImportError:
            problems.append("dicom.port is set but pynetdicom is not installed (pip install 'medge[dicom]')")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", config.dicom.port))
            except OSError as error:
                problems.append(f"dicom.port {config.dicom.port} is not free ({error.strerror or error})")
    if config.camera.src is not None:
        problems += _check_camera(config)
    if problems:
        return "FAIL " + "; ".join(problems)
    return ", ".join(names)


def _check_camera(config: EdgeConfig) -> list[str]:
    import cv2

    src = config.camera.src
    capture = cv2.VideoCapture(int(src) if src.isdigit() else src)
    try:
        if not capture.isOpened():
            from .sources.camera import redact

            return [f"camera.src {redact(src)!r} cannot be opened"]
        return []
    finally:
        capture.release()


def _check_state(config: EdgeConfig) -> str:
    problem = _writable(config.state_dir)
    return f"FAIL {problem}" if problem else f"{config.state_dir} (outbox max {config.state.outbox_max})"


def _check_broker(config: EdgeConfig) -> str:
    from .comms import probe_broker

    problem = probe_broker(config)
    return f"FAIL {problem}" if problem else f"{config.mqtt.broker} accepted the connection (MQTT {config.mqtt.mqtt_version})"


CHECKS = [("config", _check_config), ("bundle", _check_bundle), ("sources", _check_sources),
          ("state", _check_state), ("broker", _check_broker)]
