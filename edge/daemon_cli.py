"""`medge edge run` and `medge edge check`: the daemon's command line.

Flags override the environment (MEDGE_*, read by edge/config.py: the one environment scheme;
click's automatic MEDGE_EDGE_RUN_* names are switched off here), which overrides the TOML file
(--config). Flags default to None so that an unset flag never hides a value from the file or
the environment. Each option's type and "[default: ...]" come from the settings dataclasses;
the sources' options come from their modules (SourceType.flags).
"""
from __future__ import annotations

import dataclasses
import functools

import click

from .config import EdgeConfig, all_sections, annotation_text, env_names, load_config
from .sources.base import Flag
from .sources.registry import source_types

# The daemon's own options: (dotted config key, Flag). Keys of sources are in their modules.
CORE_FLAGS = [
    ("site", Flag("site", ("--site",), "Site name (a topic level).")),
    ("device", Flag("device", ("--device",), "Device name (a topic level).", default_help="host name")),
    ("mqtt.broker", Flag("broker", ("--broker",), "mqtt://host:1883 or mqtts://host:8883.")),
    ("mqtt.mqtt_version", Flag("mqtt_version", ("--mqtt-version",), "MQTT protocol version.", choices=("5", "3.1.1"))),
    ("mqtt.username", Flag("username", ("--username",),
                           "Broker user (password: MEDGE_MQTT_PASSWORD or --password-file).")),
    ("mqtt.password_file", Flag("password_file", ("--password-file",), "File holding the broker password.")),
    ("mqtt.ca_file", Flag("ca_file", ("--ca-file",), "CA certificate(s) to verify the broker (mqtts).",
                          default_help="system CAs")),
    ("mqtt.cert_file", Flag("cert_file", ("--cert-file",), "Client certificate (mqtts).")),
    ("mqtt.key_file", Flag("key_file", ("--key-file",), "Client certificate key (mqtts).")),
    ("mqtt.tls_insecure", Flag("tls_insecure", ("--tls-insecure/--tls-verify",),
                               "Skip the broker certificate's host name check (never in production).")),
    ("mqtt.topic_prefix", Flag("topic_prefix", ("--topic-prefix",), "First topic level.")),
    ("mqtt.client_id", Flag("client_id", ("--client-id",), "MQTT client id.", default_help="medge-SITE-DEVICE")),
    ("mqtt.heartbeat_s", Flag("heartbeat_s", ("--heartbeat-s",), "Seconds between heartbeats.")),
    ("runtime.runtime", Flag("runtime", ("--runtime",), "auto, litert, tflite-runtime or onnxruntime.",
                             default_help="auto")),
    ("runtime.threads", Flag("threads", ("--threads",), "Inference threads.", default_help="the runtime's")),
    ("ood.mode", Flag("mode", ("--ood",), "Out-of-distribution guard: refuse (not_applicable), warn or off.",
                      choices=("refuse", "warn", "off"))),
    ("runtime.workers", Flag("workers", ("--workers",), "Inputs decoded and preprocessed in parallel.",
                             default_help="the number of cores")),
    ("state.dir", Flag("dir", ("--state-dir",), "Outbox and device key.",
                       default_help="$STATE_DIRECTORY or ~/.local/state/medge")),
    ("state.outbox_max", Flag("outbox_max", ("--outbox-max",), "Most unacknowledged messages kept.")),
    ("state.pseudonym_key_file", Flag("pseudonym_key_file", ("--pseudonym-key-file",),
                                      "HMAC key for input references.", default_help="STATE/pseudonym.key")),
    ("log.level", Flag("level", ("--log-level",), "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))),
    ("log.format", Flag("format", ("--log-format",), "Log format.", choices=("text", "json"))),
    ("input.max_pixels", Flag("max_pixels", ("--max-pixels",), "Refuse images with more pixels (decompression bombs).")),
    ("input.explain", Flag("explain", ("--explain/--no-explain",),
                           "Write an occlusion heatmap overlay beside each processed watch-folder file "
                           "(processed/NAME.heatmap.png).")),
    ("signature.trusted_keys", Flag("trusted_keys", ("--trusted-keys",),
                                    "Public keys (PEM) the bundle must be signed by: K1.pub,K2.pub.")),
    ("fleet.trusted_operator_keys", Flag("trusted_operator_keys", ("--fleet-keys",),
                                         "Fleet operator public keys (PEM) whose signed commands roll models out: "
                                         "K1.pub,K2.pub (docs/fleet.md).")),
    ("fleet.dir", Flag("dir", ("--fleet-dir",), "The fleet bundle store.", default_help="STATE/fleet")),
    ("pacs.cstore", Flag("cstore", ("--pacs",),
                         "Send an SR and an SC per DICOM input to this PACS by C-STORE: AE@HOST:PORT.")),
    ("pacs.stow", Flag("stow", ("--stow",),
                       "Send them by DICOMweb STOW-RS to this base URL (e.g. http://pacs:8042/dicom-web).")),
]


def all_flags() -> list[tuple[str, Flag]]:
    """(dotted key, Flag) for every option: the daemon's, then each registered source's."""
    flags = list(CORE_FLAGS)
    for name, source in source_types().items():
        flags += [(f"{name}.{flag.key}", flag) for flag in source.flags]
    return flags


def _field(dotted: str) -> dataclasses.Field | None:
    if "." not in dotted:
        return {item.name: item for item in dataclasses.fields(EdgeConfig)}.get(dotted)
    section, key = dotted.split(".", 1)
    return {item.name: item for item in dataclasses.fields(all_sections()[section])}.get(key)


def _default(item: dataclasses.Field):
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return item.default_factory()  # type: ignore[misc]
    return None


def _help(dotted: str, flag: Flag) -> str:
    item = _field(dotted)
    default = flag.default_help
    if default is None and item is not None:
        value = _default(item)
        if isinstance(value, bool):
            default = "on" if value else "off"
        elif value is not None and value != []:
            default = str(value)
    section, _, key = dotted.rpartition(".")
    env = env_names(section, key)[0]  # the qualified name, which always works
    extra = f"default: {default}; " if default is not None else ""
    return f"{flag.help} [{extra}env: {env}]"


def _click_type(dotted: str, flag: Flag):
    if flag.choices:
        return click.Choice(list(flag.choices), case_sensitive=False)
    annotation = annotation_text(_field(dotted).type)
    if "list" in annotation:
        return str  # a comma list, split by the config loader
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    if annotation.startswith("Path"):
        return click.Path()
    return str


def _param(flag: Flag) -> str:
    return "opt_" + flag.names[0].split("/")[0].lstrip("-").replace("-", "_")


def config_options(command):
    """The options shared by run and check, collected into one `flags` dict of dotted keys."""
    flags = all_flags()

    @functools.wraps(command)
    def wrapper(config_file, bundle, **values):
        given = {"bundle": bundle}
        for dotted, flag in flags:
            value = values.pop(_param(flag))
            if flag.multiple:
                # Repeatable and comma-separated both work: --allowed-caller A --allowed-caller B, or A,B.
                value = [part.strip() for entry in value for part in entry.split(",") if part.strip()] or None
            given[dotted] = value
        return command(load_config(config_file, flags=given), **values)

    for dotted, flag in reversed(flags):
        names = [*flag.names, _param(flag)]
        # allow_from_autoenv=False: the root group's auto_envvar_prefix would otherwise turn
        # MEDGE_EDGE_RUN_SITE into --site, a second scheme beating MEDGE_SITE.
        if "/" in flag.names[0]:
            option = click.option(*names, default=None, help=_help(dotted, flag), allow_from_autoenv=False)
        else:
            option = click.option(*names, type=_click_type(dotted, flag), default=None, multiple=flag.multiple,
                                  help=_help(dotted, flag), allow_from_autoenv=False)
        wrapper = option(wrapper)
    wrapper = click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
                           allow_from_autoenv=False,
                           help="TOML configuration file (see deploy/edge.example.toml).")(wrapper)
    wrapper = click.argument("bundle", required=False, type=click.Path())(wrapper)
    return wrapper


@click.group("edge")
def edge_group():
    """The point-of-care daemon: watch a folder / receive DICOM / read a camera, classify, publish over MQTT.

    Settings: TOML file (--config) < environment MEDGE_* (the names in each option's help;
    docs/edge.md) < flags. Results are decision support, not for diagnostic use.
    """


@edge_group.command("run")
@config_options
def run_command(config: EdgeConfig):
    """Run the daemon until SIGTERM/SIGINT (then finish in-flight work, publish offline, exit 0)."""
    import logging

    from .daemon import EdgeDaemon
    from .log import setup_logging

    setup_logging(config.log.level, config.log.format)
    for warning in config.warnings:
        logging.getLogger("medge.edge.config").warning("%s", warning)
    EdgeDaemon(config).run()


@edge_group.command("check")
@config_options
def check_command(config: EdgeConfig):
    """Check configuration, bundle, sources and broker; exit non-zero with the reasons."""
    from .checks import run_checks

    problems = 0
    for name, result in run_checks(config):
        problems += not result.ok
        click.echo(f"{'ok  ' if result.ok else 'FAIL'} {name}: {result.detail}")
    if problems:
        raise click.ClickException(f"{problems} check(s) failed")
    click.echo("all checks passed")
