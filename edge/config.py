"""The edge daemon's one typed configuration, filled from TOML < environment < flags.

Every key has one home: a TOML section (`[mqtt] broker`), an environment variable
(`MEDGE_BROKER`, or section-qualified `MEDGE_MQTT_BROKER`; a key name that two sections share,
like `dir` of [watch] and [state], has only the qualified one: `MEDGE_WATCH_DIR`) and, for
most, a flag of `medge edge run`. These MEDGE_* variables are the daemon's only environment
scheme: `medge edge run/check` take nothing from click's MEDGE_EDGE_RUN_* names.

The input sources' sections ([watch], [dicom], [camera], ...) are not listed here: each source
module declares its settings (`edge/sources/registry.py`), and `EdgeConfig.watch` etc. reach
them by name. The password is deliberately not a flag: command lines are
visible to every user of the device (`ps`), so it comes from MEDGE_MQTT_PASSWORD or a file.
Validation errors are `ConfigError`s whose message starts with the key they are about.
"""
from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .comms.topics import topic as build_topic
from .drift import DriftSettings, validate_drift
from .errors import ConfigError
from .fleet.settings import FleetSettings, validate_fleet
from .ood import OodSettings, validate_ood
from .preprocess import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS

ENV_PREFIX = "MEDGE_"
MQTT_VERSIONS = ("5", "3.1.1")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# MQTT topic levels must not contain wildcards or separators.
TOPIC_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def default_device() -> str:
    name = socket.gethostname().split(".")[0] or "device"
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


def default_state_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY (e.g. /var/lib/medge).
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "medge"


# The one broker URL parser, for the daemon, the dashboard, the monitor and the demo.
# tcp:// and ssl:// are accepted as aliases of mqtt:// and mqtts:// (the dashboard always took
# them, as do mosquitto and paho's docs); credentials in the URL are refused: a URL is a flag,
# and flags are visible to every user of the machine (`ps`).
BROKER_SCHEMES = {"mqtt": (False, 1883), "tcp": (False, 1883), "mqtts": (True, 8883), "ssl": (True, 8883)}
BROKER_URL_FORM = "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"


@dataclass(frozen=True)
class BrokerAddress:
    tls: bool
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt[s]://HOST[:PORT]` (or tcp:// / ssl://) -> BrokerAddress; ConfigError(mqtt.broker: ...)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # an unclosed [IPv6 address, a port that is not a number
        raise ConfigError(f"mqtt.broker: {url!r} must look like {BROKER_URL_FORM}") from None
    if parts.scheme not in BROKER_SCHEMES or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"mqtt.broker: {url!r} must look like {BROKER_URL_FORM}")
    if parts.username or parts.password:
        raise ConfigError("mqtt.broker: no credentials in the URL; set mqtt.username and the password in "
                          "MEDGE_MQTT_PASSWORD or mqtt.password_file")
    tls, default_port = BROKER_SCHEMES[parts.scheme]
    return BrokerAddress(tls=tls, host=parts.hostname, port=port or default_port)


@dataclass
class MqttSettings:
    broker: str = "mqtt://127.0.0.1:1883"
    mqtt_version: str = "5"
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    topic_prefix: str = "medge"
    client_id: str | None = None
    heartbeat_s: float = 30.0

    @property
    def address(self) -> BrokerAddress:
        return parse_broker_url(self.broker)

    @property
    def tls(self) -> bool:
        return self.address.tls

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def public_url(self) -> str:
        """Scheme, host and port only: what logs and a browser may see."""
        return self.address.url

    def resolved_password(self) -> str | None:
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(f"mqtt.password_file: cannot read {self.password_file} ({error})") from None
        return self.password


@dataclass
class RuntimeSettings:
    runtime: str | None = None
    threads: int | None = None
    # Inputs decoded and preprocessed at once (edge/worker.py's pool); None: every core.
    workers: int | None = None


@dataclass
class StateSettings:
    dir: Path | None = None
    outbox_max: int = 10000
    pseudonym_key_file: Path | None = None


@dataclass
class LogSettings:
    level: str = "INFO"
    format: str = "text"


@dataclass
class InputSettings:
    """Limits on every input, whichever source it came from."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    # Files larger than this are refused before a byte is read (a 3 GB sparse file costs nothing).
    max_file_mb: float = DEFAULT_MAX_FILE_BYTES / (1024 * 1024)
    # An input handed over longer than this without an outcome, or a stage failing, makes the
    # daemon `degraded` (error event, status, heartbeat) and silences the systemd watchdog.
    stall_s: float = 60.0
    # An occlusion heatmap overlay (edge/explain.py) beside each classified watch-folder file:
    # processed/NAME.heatmap.png. Off by default (it costs ~0.1-0.2 s and ~0.5 MB per input);
    # heatmaps stay on the device either way, never on MQTT.
    explain: bool = False

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)


# Keys that moved: still read (with a warning in EdgeConfig.warnings), written under the new name.
MOVED_KEYS = {"log.max_pixels": "input.max_pixels"}


def default_source_settings() -> dict:
    from .sources.registry import source_types

    return {name: source.settings() for name, source in source_types().items()}


@dataclass
class SignatureSettings:
    # Ed25519 public keys (PEM) a bundle may be signed by; several, so a site can rotate its
    # signing key. With any configured, an unsigned or badly signed bundle is refused.
    trusted_keys: list[Path] = field(default_factory=list)
    # Refuse to start without trusted keys (the shipped deploy config and systemd unit set it).
    required: bool = False


@dataclass
class PacsSettings:
    # Results back into the PACS for DICOM inputs (edge/pacs, docs/pacs.md): a Comprehensive SR
    # and a Secondary Capture per input, sent by C-STORE to AE@HOST:PORT and/or STOW-RS to a URL.
    cstore: str | None = None
    stow: str | None = None
    calling_ae: str | None = None  # [default: dicom.ae_title]
    outputs: list[str] = field(default_factory=lambda: ["sr", "sc"])
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    timeout_s: float = 30.0


@dataclass
class EdgeConfig:
    bundle: Path | None = None
    site: str = "default"
    device: str = field(default_factory=default_device)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    state: StateSettings = field(default_factory=StateSettings)
    log: LogSettings = field(default_factory=LogSettings)
    input: InputSettings = field(default_factory=InputSettings)
    signature: SignatureSettings = field(default_factory=SignatureSettings)
    pacs: PacsSettings = field(default_factory=PacsSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    ood: OodSettings = field(default_factory=OodSettings)
    # One settings object per registered source, by section name: config.watch, config.dicom, ...
    source_settings: dict = field(default_factory=default_source_settings)
    # Deprecation notes from loading (a moved key was used); the daemon logs them, check prints them.
    warnings: list = field(default_factory=list)

    def __getattr__(self, name: str):
        # Only called when normal lookup fails: the sources' sections by name.
        sources = self.__dict__.get("source_settings")
        if sources is not None and name in sources:
            return sources[name]
        raise AttributeError(f"EdgeConfig has no setting or section {name!r}")

    # ------------------------------------------------------------------ derived paths
    @property
    def state_dir(self) -> Path:
        return self.state.dir or default_state_dir()

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / "outbox.sqlite3"

    @property
    def pseudonym_key_path(self) -> Path:
        return self.state.pseudonym_key_file or self.state_dir / "pseudonym.key"

    @property
    def processed_dir(self) -> Path | None:
        return self.watch.processed  # kept for callers; the watch source owns the rule

    @property
    def rejected_dir(self) -> Path | None:
        return self.watch.rejected

    def topic(self, kind: str) -> str:
        """`topic("result")` -> medge/{site}/{device}/result (built by edge/comms/topics.py)."""
        return build_topic(self.mqtt.topic_prefix, self.site, self.device, kind)

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"medge-{self.site}-{self.device}"

    def source_names(self) -> list[str]:
        from .sources.registry import source_types

        return [name for name, source in source_types().items() if source.enabled(self.source_settings[name])]


# ---------------------------------------------------------------------------- loading

# The daemon's own sections; the sources' sections come from their modules (all_sections()).
SECTIONS = {
    "mqtt": MqttSettings,
    "runtime": RuntimeSettings, "state": StateSettings, "log": LogSettings, "input": InputSettings, "signature": SignatureSettings,
    "pacs": PacsSettings, "drift": DriftSettings, "fleet": FleetSettings,
    "ood": OodSettings,
}
TOP_LEVEL = ("bundle", "site", "device")


def _keys():
    """(section or "", key, type annotation) for every configurable key."""
    hints = {"bundle": "Path | None", "site": "str", "device": "str"}
    for key in TOP_LEVEL:
        yield "", key, hints[key]
    for section, cls in all_sections().items():
        for item in fields(cls):
            yield section, item.name, annotation_text(item.type)


def annotation_text(annotation) -> str:
    """A field's type as text ("Path | None"), also for modules without postponed annotations."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b[A-Za-z_]\w*\.", "", str(annotation))


def all_sections() -> dict[str, type]:
    """Every [section] and its settings dataclass: the daemon's, then each source's."""
    from .sources.registry import source_types

    return {**SECTIONS, **{name: source.settings for name, source in source_types().items()}}


def ambiguous_keys() -> set[str]:
    """Key names used by more than one section (or a section and the top level): such keys
    get only the section-qualified variable, so a new section can never take over a name."""
    seen: dict[str, int] = {}
    for _, key, _ in _keys():
        seen[key] = seen.get(key, 0) + 1
    return {key for key, count in seen.items() if count > 1}


def key_name(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def env_names(section: str, key: str) -> list[str]:
    """The MEDGE_* variables that set `section.key`, the qualified one first."""
    names = []
    if section:
        qualified = f"{ENV_PREFIX}{section}_{key}".upper()
        if not key.startswith(section + "_"):
            names.append(qualified)
    if not section or key.startswith(section + "_") or key not in ambiguous_keys():
        names.append(f"{ENV_PREFIX}{key}".upper())
    return names


def _coerce(name: str, annotation: str, value: Any, from_text: bool):
    """Turn a TOML/env/flag value into the field's type; ConfigError names the key."""
    optional = "None" in annotation
    if value is None or (from_text and optional and str(value).strip().lower() in ("", "none", "off")):
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required")
    base = annotation.replace("| None", "").strip()
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if base == "Path":
            return Path(str(value)).expanduser()
        if base == "list[Path]":
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError("expected a list of paths")
            return [Path(str(part)).expanduser() for part in value]
        if base in ("list[str]", "list[int]"):
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError("expected a list")
            return [int(part) if base == "list[int]" else str(part) for part in value]
        if base == "str":
            if isinstance(value, (dict, list)):
                raise ValueError("expected a string")
            return str(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: invalid value {value!r} ({error})") from None
    raise ConfigError(f"{name}: unsupported type {annotation}")  # pragma: no cover - programming error


def _set(config: EdgeConfig, section: str, key: str, annotation: str, value, from_text: bool):
    target = getattr(config, section) if section else config
    setattr(target, key, _coerce(key_name(section, key), annotation, value, from_text))


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config: file {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config: {path} is not valid TOML ({error})") from None
    except OSError as error:
        raise ConfigError(f"config: cannot read {path} ({error.strerror or error})") from None


def load_config(config_file: str | Path | None = None, env: dict | None = None,
                flags: dict | None = None) -> EdgeConfig:
    """TOML file < env MEDGE_* < flags (dotted keys, e.g. {"mqtt.broker": ...}; None = unset)."""
    env = os.environ if env is None else env
    config = EdgeConfig()
    keys = {key_name(section, key): (section, key, annotation) for section, key, annotation in _keys()}

    if config_file is not None:
        data = read_toml(Path(config_file))
        sections = all_sections()
        for name, value in data.items():
            if name in sections:
                if not isinstance(value, dict):
                    raise ConfigError(f"{name}: expected a [{name}] section")
                for key, inner in value.items():
                    dotted = f"{name}.{key}"
                    if dotted in MOVED_KEYS:
                        config.warnings.append(f"{dotted} in {config_file} is deprecated: it is now "
                                               f"{MOVED_KEYS[dotted]} (read as such)")
                        dotted = MOVED_KEYS[dotted]
                    if dotted not in keys:
                        raise ConfigError(f"{dotted}: unknown key in [{name}] of {config_file}")
                    section, key, annotation = keys[dotted]
                    _set(config, section, key, annotation, inner, from_text=False)
            elif name in TOP_LEVEL:
                _set(config, "", name, keys[name][2], value, from_text=False)
            else:
                raise ConfigError(f"{name}: unknown key in {config_file}")
        # Relative paths in a config file are relative to the file, as a reader would expect.
        _resolve_relative(config, Path(config_file).resolve().parent)

    for _name, (section, key, annotation) in keys.items():
        for variable in env_names(section, key):
            if variable in env and env[variable] != "":
                _set(config, section, key, annotation, env[variable], from_text=True)
                break

    for name, value in (flags or {}).items():
        if value is None:
            continue
        name = MOVED_KEYS.get(name, name)
        if name not in keys:
            raise ConfigError(f"{name}: unknown key")
        section, key, annotation = keys[name]
        if key == "password":
            raise ConfigError("mqtt.password: not accepted on the command line; use MEDGE_MQTT_PASSWORD or mqtt.password_file")
        _set(config, section, key, annotation, value, from_text=isinstance(value, str))

    validate(config)
    return config


def _resolve_relative(config: EdgeConfig, base: Path) -> None:
    for section, key, annotation in _keys():
        if "Path" not in annotation:
            continue
        target = getattr(config, section) if section else config
        value = getattr(target, key)
        if isinstance(value, Path) and not value.is_absolute():
            setattr(target, key, base / value)
        elif isinstance(value, list):
            setattr(target, key, [item if item.is_absolute() else base / item for item in value])


def validate(config: EdgeConfig) -> None:
    """Raise ConfigError naming the first key whose value cannot work."""
    for name, value in (("site", config.site), ("device", config.device), ("mqtt.topic_prefix", config.mqtt.topic_prefix)):
        if not value or not TOPIC_SAFE.match(value):
            raise ConfigError(f"{name}: {value!r} must be letters, digits, '.', '_' or '-' (it is an MQTT topic level)")
    validate_mqtt(config.mqtt)
    from .sources.registry import source_types

    for name, source in source_types().items():
        source.validate(config.source_settings[name])
    if config.runtime.threads is not None and config.runtime.threads < 1:
        raise ConfigError(f"runtime.threads: must be >= 1, not {config.runtime.threads}")
    if config.runtime.workers is not None and config.runtime.workers < 1:
        raise ConfigError(f"runtime.workers: must be >= 1, not {config.runtime.workers}")
    if config.state.outbox_max < 10:
        raise ConfigError(f"state.outbox_max: must be >= 10, not {config.state.outbox_max}")
    config.log.level = config.log.level.upper()
    if config.log.level not in LOG_LEVELS:
        raise ConfigError(f"log.level: {config.log.level!r} must be one of {', '.join(LOG_LEVELS)}")
    if config.log.format not in LOG_FORMATS:
        raise ConfigError(f"log.format: {config.log.format!r} must be text or json")
    if config.input.max_pixels < 64:
        raise ConfigError(f"input.max_pixels: must be >= 64, not {config.input.max_pixels}")
    if config.input.max_file_mb <= 0:
        raise ConfigError(f"input.max_file_mb: must be > 0, not {config.input.max_file_mb}")
    if config.input.stall_s <= 0:
        raise ConfigError(f"input.stall_s: must be > 0, not {config.input.stall_s}")
    if config.signature.required and not config.signature.trusted_keys:
        raise ConfigError("signature.trusted_keys: signature.required is set but no trusted public key is configured")
    validate_pacs(config.pacs)
    validate_drift(config.drift)
    validate_fleet(config.fleet)
    validate_ood(config.ood)


def validate_pacs(pacs: PacsSettings) -> None:
    from .pacs.senders import StowSender, parse_ae_address
    from .sources.dicom_receiver import validate_ae_title

    if pacs.cstore is not None:
        parse_ae_address(pacs.cstore, "pacs.cstore")
    if pacs.stow is not None:
        StowSender(pacs.stow)
    if pacs.calling_ae is not None:
        validate_ae_title(pacs.calling_ae, "pacs.calling_ae")
    unknown = [kind for kind in pacs.outputs if kind not in ("sr", "sc")]
    if unknown or not pacs.outputs:
        raise ConfigError(f"pacs.outputs: {pacs.outputs!r} must list sr and/or sc")
    if not 0 < pacs.retry_min_s <= pacs.retry_max_s:
        raise ConfigError(f"pacs.retry_min_s: must be > 0 and <= pacs.retry_max_s ({pacs.retry_max_s}), "
                          f"not {pacs.retry_min_s}")
    if pacs.timeout_s <= 0:
        raise ConfigError(f"pacs.timeout_s: must be > 0, not {pacs.timeout_s}")


def validate_mqtt(mqtt: MqttSettings) -> None:
    """The broker settings' checks, shared by the daemon, the dashboard and the monitor."""
    if not mqtt.topic_prefix or not TOPIC_SAFE.match(mqtt.topic_prefix):
        raise ConfigError(f"mqtt.topic_prefix: {mqtt.topic_prefix!r} must be letters, digits, '.', '_' or '-' "
                          "(it is an MQTT topic level)")
    parse_broker_url(mqtt.broker)
    if mqtt.mqtt_version not in MQTT_VERSIONS:
        raise ConfigError(f"mqtt.mqtt_version: {mqtt.mqtt_version!r} must be one of {', '.join(MQTT_VERSIONS)}")
    if mqtt.password is not None and mqtt.password_file is not None:
        raise ConfigError("mqtt.password_file: set either the password or the password file, not both")
    if (mqtt.password is not None or mqtt.password_file is not None) and not mqtt.username:
        raise ConfigError("mqtt.username: a password is set but no username")
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        path = getattr(mqtt, key)
        if path is not None and not path.is_file():
            raise ConfigError(f"mqtt.{key}: {path} does not exist")
    if (mqtt.cert_file is None) != (mqtt.key_file is None):
        raise ConfigError("mqtt.cert_file: a client certificate needs both cert_file and key_file")
    if not mqtt.tls and (mqtt.ca_file or mqtt.cert_file or mqtt.tls_insecure):
        raise ConfigError(f"mqtt.broker: TLS options are set but {mqtt.broker!r} is not mqtts://")
    if mqtt.heartbeat_s <= 0:
        raise ConfigError(f"mqtt.heartbeat_s: must be > 0, not {mqtt.heartbeat_s}")
