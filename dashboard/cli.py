"""`medge dashboard` (web page) and `medge monitor` (terminal) over the medge MQTT topics."""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import click

from medge import DISCLAIMER
from medge.dashboard.events import MAX_MESSAGE_BYTES
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
                     mqtt_version, client_id=None):
    """The daemon's own broker settings type, filled from these flags and checked by the same
    rules (medge.edge.config.validate_mqtt); errors name the flag."""
    from medge.edge.config import MqttSettings, validate_mqtt

    path = lambda value: Path(value).expanduser() if value else None  # noqa: E731
    settings = MqttSettings(broker=broker, mqtt_version=mqtt_version, username=username,
                            password=None if password_file else os.environ.get("MEDGE_MQTT_PASSWORD") or None,
                            password_file=path(password_file), ca_file=path(ca_file), cert_file=path(cert_file),
                            key_file=path(key_file), tls_insecure=tls_insecure, topic_prefix=topic_prefix.strip("/"),
                            client_id=client_id)
    try:
        validate_mqtt(settings)
        settings.resolved_password()  # an unreadable password file fails now, in one line
    except ConfigError as error:
        # "mqtt.ca_file: ..." -> "--ca-file: ...": these flags are named after the config keys
        key, _, rest = str(error).partition(": ")
        flag = "--" + key.removeprefix("mqtt.").replace("_", "-") if key.startswith("mqtt.") else key
        raise ConfigError(f"{flag}: {rest}") from None
    return settings


def _stop_on_sigterm():
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)


class _DashboardGroup(click.Group):
    """`medge dashboard [OPTIONS]` serves the page; `medge dashboard hash-password` is a helper."""

    def format_usage(self, ctx, formatter):
        formatter.write_usage(ctx.command_path, "[OPTIONS]  |  hash-password USER")


@click.group("dashboard", cls=_DashboardGroup, invoke_without_command=True)
@broker_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve the page on (0.0.0.0 to reach it from other machines: then set a login).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="HTTP port (0: any free port).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Host name users reach the page by (repeatable); localhost, the bind address, this machine's "
                   "host name and IP addresses are always allowed, other Host headers get 403 (DNS rebinding).")
@click.option("--login-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File of USER:HASH lines (from `medge dashboard hash-password`): the page asks for a login.")
@click.option("--trusted-proxy-header", default=None, metavar="HEADER",
              help="Header (e.g. X-Forwarded-User) naming the user a reverse proxy signed in; trusted only "
                   "from --trusted-proxy addresses.")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, default=("127.0.0.1", "::1"), show_default=True,
              metavar="ADDRESS", help="Address of the reverse proxy whose --trusted-proxy-header is believed.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite history file [default: ~/.local/state/medge/dashboard.sqlite].")
@click.option("--retention-days", type=click.FloatRange(min=0.01), default=7.0, show_default=True,
              help="How long the history keeps events.")
@click.option("--max-message-kb", type=click.IntRange(1, 16384), default=MAX_MESSAGE_BYTES // 1024,
              show_default=True, help="Larger MQTT messages are dropped and listed as invalid.")
@click.option("--max-devices", type=click.IntRange(1), default=500, show_default=True,
              help="Devices shown at most; messages from further devices are listed as invalid.")
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
@click.option("--fleet-key", "fleet_keys", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The fleet operator's public key (PEM; repeatable): verify each site's signed target record. "
                   "Without it the targets show as unverified.")
@click.pass_context
def dashboard_command(ctx, host, port, allowed_hosts, login_file, trusted_proxy_header, trusted_proxies, db,
                      retention_days, max_message_kb, max_devices, stale_after, error_burst, error_window,
                      ha_discovery, ha_prefix, client_id, log_level, fleet_keys, **broker):
    """Serve a live web dashboard of the edge devices' results, health and alerts.

    Subscribes to PREFIX/# on the broker (credentials and TLS stay in this process) and pushes
    updates to the page with server-sent events. History is kept in a local SQLite file.
    `medge dashboard hash-password USER` prints a line for --login-file.

    \b
    Examples:
      medge dashboard --broker mqtt://broker.local --port 8080
      MEDGE_MQTT_PASSWORD=... medge dashboard --broker mqtts://broker.local --ca-file ca.crt --username dash
      medge dashboard hash-password alice >> logins && medge dashboard --host 0.0.0.0 --login-file logins
    """
    if ctx.invoked_subcommand is not None:
        return
    from medge.dashboard.alerts import AlertRules
    from medge.dashboard.auth import Access, is_local_bind, load_login_file
    from medge.dashboard.server import make_server
    from medge.dashboard.service import DashboardService
    from medge.edge.fleet.commands import trusted_operator_keys

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _broker_settings(**broker, client_id=client_id)
    target_keys = trusted_operator_keys(list(fleet_keys))  # a bad key file: one line, before anything starts
    access = Access(bind=host, allowed_hosts=allowed_hosts, users=load_login_file(login_file) if login_file else {},
                    proxy_header=trusted_proxy_header, trusted_proxies=trusted_proxies)
    try:  # the port first: a busy port should fail before the history is opened
        server = make_server(None, host, port, access)
    except OSError as error:
        raise ConfigError(f"--port {port}: cannot serve on {host}:{port} ({error.strerror})") from None
    try:
        service = DashboardService(settings, db or _default_db(), AlertRules(error_burst, error_window),
                                   stale_after_s=stale_after, retention_days=retention_days,
                                   ha_discovery=ha_discovery, ha_prefix=ha_prefix,
                                   session_expiry_s=86400 if client_id else 0,
                                   max_message_bytes=max_message_kb * 1024, max_devices=max_devices,
                                   target_keys=target_keys)
    except BaseException:
        server.server_close()
        raise
    server.RequestHandlerClass.service = service
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    click.echo(f"medge dashboard: http://{url_host}:{server.server_address[1]}/  "
               f"(broker {settings.public_url}, history {service.store.path})")
    if not is_local_bind(host) and not access.login_required:
        click.secho(f"warning: serving on {host} without a login: anyone who can reach this port sees the page; "
                    "set --login-file or --trusted-proxy-header", fg="yellow", err=True)
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


@dashboard_command.command("hash-password")
@click.argument("user")
@click.password_option("--password", prompt="Password", help="Read from the terminal (or stdin) when not given.",
                       envvar=None)
def hash_password_command(user, password):
    """Print a USER:HASH line (scrypt) for `medge dashboard --login-file`.

    \b
    Example:
      medge dashboard hash-password alice >> /etc/medge/dashboard-logins
    """
    from medge.dashboard.auth import hash_password

    if ":" in user or not user.strip():
        raise ConfigError(f"USER {user!r}: must be non-empty and without ':'")
    if len(password) < 8:
        raise ConfigError("password: use at least 8 characters")
    click.echo(f"{user}:{hash_password(password)}")


@click.command("monitor")
@broker_options
@click.option("--json", "as_json", is_flag=True, help="Print each incoming event as one JSON line (for piping).")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds (default: run until Ctrl-C).")
@click.option("--once", is_flag=True,
              help="Connect, print what the broker holds (retained status) after --settle seconds, and exit.")
@click.option("--settle", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="With --once: seconds to collect messages after subscribing.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
              help="Exit 1 with the reason when the broker is not connected within this many seconds "
                   "[default: 10 with --once, else keep retrying].")
@click.option("--stale-after", type=click.FloatRange(min=1), default=90.0, show_default=True,
              help="Seconds without a heartbeat before an online device is marked stale.")
def monitor_command(as_json, duration, once, settle, timeout, stale_after, **broker):
    """Live terminal view of the devices, last results, alerts and counters.

    With --json, prints every event (results, status, heartbeats, errors, invalid payloads)
    as a JSON line instead, duplicates removed. The header says why the broker is not
    connected; --timeout (or --once) makes an unreachable broker an error (exit 1).

    \b
    Examples:
      medge monitor --broker mqtt://broker.local
      medge monitor --broker mqtt://broker.local --json | jq -c 'select(.kind == "result")'
      medge monitor --broker mqtt://broker.local --once --timeout 5     # for scripts and checks
    """
    from medge.dashboard.monitor import run_monitor

    _stop_on_sigterm()
    if once and timeout is None:
        timeout = 10.0
    run_monitor(_broker_settings(**broker), as_json=as_json, duration=duration, stale_after_s=stale_after,
                connect_timeout_s=timeout, once_settle_s=settle if once else None)
