"""`medge dashboard` (web page) and `medge monitor` (terminal) over the medge MQTT topics."""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import click

from medge import DISCLAIMER
from medge.edge.errors import ConfigError


def _default_db() -> Path:
    state_home = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state_home / "medge" / "dashboard.sqlite"


def broker_options(command):
    """The MQTT connection options both commands share (same names as the edge daemon's)."""
    options = [
        click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True,
                     help="Broker URL: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)."),
        click.option("--username", default=None, help="MQTT username."),
        click.option("--password-file", type=click.Path(dir_okay=False), default=None,
                     help="File holding the MQTT password (or set MEDGE_MQTT_PASSWORD; never a flag)."),
        click.option("--ca-file", type=click.Path(dir_okay=False), default=None, help="CA certificate (TLS)."),
        click.option("--cert-file", type=click.Path(dir_okay=False), default=None, help="Client certificate (TLS)."),
        click.option("--key-file", type=click.Path(dir_okay=False), default=None, help="Client key (TLS)."),
        click.option("--tls-insecure", is_flag=True, help="Do not check the broker's host name (testing only)."),
        click.option("--topic-prefix", default="medge", show_default=True, help="Topic prefix the devices use."),
        click.option("--mqtt-version", type=click.Choice(["5", "3.1.1"]), default="5", show_default=True,
                     help="MQTT protocol version (3.1.1 for brokers without MQTT 5)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _broker_settings(broker, username, password_file, ca_file, cert_file, key_file, tls_insecure, topic_prefix,
                     mqtt_version, **extra):
    from medge.dashboard.mqtt import BrokerSettings

    password = os.environ.get("MEDGE_MQTT_PASSWORD")
    if password_file:
        try:
            password = Path(password_file).read_text().strip()
        except OSError as error:
            raise ConfigError(f"--password-file {password_file}: {error.strerror}") from None
    for name, value in (("--ca-file", ca_file), ("--cert-file", cert_file), ("--key-file", key_file)):
        if value and not Path(value).is_file():
            raise ConfigError(f"{name} {value}: no such file")
    return BrokerSettings(url=broker, username=username, password=password, ca_file=ca_file, cert_file=cert_file,
                          key_file=key_file, tls_insecure=tls_insecure, topic_prefix=topic_prefix.strip("/"),
                          mqtt_version=mqtt_version, **extra)


def _stop_on_sigterm():
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)


@click.command("dashboard")
@broker_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve the page on (0.0.0.0 to reach it from other machines).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="HTTP port (0: any free port).")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite history file [default: ~/.local/state/medge/dashboard.sqlite].")
@click.option("--retention-days", type=click.FloatRange(min=0.01), default=7.0, show_default=True,
              help="How long the history keeps events.")
@click.option("--stale-after", type=click.FloatRange(min=1), default=90.0, show_default=True,
              help="Seconds without a heartbeat before an online device is marked stale.")
@click.option("--error-burst", type=click.IntRange(min=1), default=5, show_default=True,
              help="Errors from one device within --error-window seconds that raise an alert.")
@click.option("--error-window", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Window in seconds for --error-burst.")
@click.option("--ha-discovery", is_flag=True,
              help="Publish Home Assistant MQTT discovery configs for every device seen.")
@click.option("--ha-prefix", default="homeassistant", show_default=True, help="Home Assistant discovery prefix.")
@click.option("--client-id", default=None,
              help="MQTT client id; with it the broker keeps a session and queues results while the dashboard is down.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
def dashboard_command(host, port, db, retention_days, stale_after, error_burst, error_window, ha_discovery,
                      ha_prefix, client_id, log_level, **broker):
    """Serve a live web dashboard of the edge devices' results, health and alerts.

    Subscribes to PREFIX/# on the broker (credentials and TLS stay in this process) and pushes
    updates to the page with server-sent events. History is kept in a local SQLite file.

    \b
    Examples:
      medge dashboard --broker mqtt://broker.local --port 8080
      MEDGE_MQTT_PASSWORD=... medge dashboard --broker mqtts://broker.local --ca-file ca.crt --username dash
    """
    from medge.dashboard.alerts import AlertRules
    from medge.dashboard.server import make_server
    from medge.dashboard.service import DashboardService

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _broker_settings(**broker, client_id=client_id, session_expiry_s=86400 if client_id else 0)
    try:  # the port first: a busy port should fail before the history is opened
        server = make_server(None, host, port)
    except OSError as error:
        raise ConfigError(f"--port {port}: cannot serve on {host}:{port} ({error.strerror})") from None
    try:
        service = DashboardService(settings, db or _default_db(), AlertRules(error_burst, error_window),
                                   stale_after_s=stale_after, retention_days=retention_days,
                                   ha_discovery=ha_discovery, ha_prefix=ha_prefix)
    except BaseException:
        server.server_close()
        raise
    server.RequestHandlerClass.service = service
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    click.echo(f"medge dashboard: http://{url_host}:{server.server_address[1]}/  "
               f"(broker {settings.public_url}, history {service.store.path})")
    click.echo(DISCLAIMER)
    _stop_on_sigterm()
    service.start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        service.stop()


@click.command("monitor")
@broker_options
@click.option("--json", "as_json", is_flag=True, help="Print each incoming event as one JSON line (for piping).")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds (default: run until Ctrl-C).")
@click.option("--stale-after", type=click.FloatRange(min=1), default=90.0, show_default=True,
              help="Seconds without a heartbeat before an online device is marked stale.")
def monitor_command(as_json, duration, stale_after, **broker):
    """Live terminal view of the devices, last results, alerts and counters.

    With --json, prints every event (results, status, heartbeats, errors, invalid payloads)
    as a JSON line instead, duplicates removed.

    \b
    Examples:
      medge monitor --broker mqtt://broker.local
      medge monitor --broker mqtt://broker.local --json | jq -c 'select(.kind == "result")'
    """
    from medge.dashboard.monitor import run_monitor

    _stop_on_sigterm()
    run_monitor(_broker_settings(**broker), as_json=as_json, duration=duration, stale_after_s=stale_after)
