"""The edge daemon's one typed configuration, filled from TOML < environment < flags.

Every key has one home: a TOML section (`[mqtt] broker`), an environment variable
(`MEDGE_BROKER`, or section-qualified `MEDGE_MQTT_BROKER`; `MEDGE_WATCH_DIR` and
`MEDGE_STATE_DIR` must be qualified because both sections have a `dir`) and, for most, a
flag of `medge edge run`. The password is deliberately not a flag: command lines are
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

from .errors import ConfigError
from .preprocess import DEFAULT_MAX_PIXELS

ENV_PREFIX = "MEDGE_"
FRAME_POLICIES = ("first", "all", "max")
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
    def tls(self) -> bool:
        return urlsplit(self.broker).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.broker).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.broker)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    def resolved_password(self) -> str | None:
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(f"mqtt.password_file: cannot read {self.password_file} ({error})") from None
        return self.password


@dataclass
class WatchSettings:
    dir: Path | None = None
    processed_dir: Path | None = None
    rejected_dir: Path | None = None
    stable_s: float = 1.0
    poll_s: float = 0.5


@dataclass
class DicomSettings:
    port: int | None = None
    ae_title: str = "MEDGE"
    allowed_callers: list[str] = field(default_factory=list)
    frames: str = "first"


@dataclass
class CameraSettings:
    src: str | None = None
    fps: float = 1.0
    roi: list[int] | None = None


@dataclass
class RuntimeSettings:
    runtime: str | None = None
    threads: int | None = None


@dataclass
class StateSettings:
    dir: Path | None = None
    outbox_max: int = 10000
    pseudonym_key_file: Path | None = None


@dataclass
class LogSettings:
    level: str = "INFO"
    format: str = "text"
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class EdgeConfig:
    bundle: Path | None = None
    site: str = "default"
    device: str = field(default_factory=default_device)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    dicom: DicomSettings = field(default_factory=DicomSettings)
    camera: CameraSettings = field(default_factory=CameraSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    state: StateSettings = field(default_factory=StateSettings)
    log: LogSettings = field(default_factory=LogSettings)

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
        if self.watch.dir is None:
            return None
        return self.watch.processed_dir or self.watch.dir / "processed"

    @property
    def rejected_dir(self) -> Path | None:
        if self.watch.dir is None:
            return None
        return self.watch.rejected_dir or self.watch.dir / "rejected"

    def topic(self, kind: str) -> str:
        """`topic("result")` -> medge/{site}/{device}/result."""
        return f"{self.mqtt.topic_prefix}/{self.site}/{self.device}/{kind}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"medge-{self.site}-{self.device}"

    def source_names(self) -> list[str]:
        names = []
        if self.watch.dir is not None:
            names.append("watch")
        if self.dicom.port is not None:
            names.append("dicom")
        if self.camera.src is not None:
            names.append("camera")
        return names

    def redacted(self) -> dict:
        """The effective configuration for logs and `edge check`: secrets never printed."""
        out = {}
        for section, key, _ in _keys():
            value = getattr(getattr(self, section), key) if section else getattr(self, key)
            if key == "password" and value:
                value = "***"
            out[f"{section}.{key}" if section else key] = str(value) if isinstance(value, Path) else value
        return out


# ---------------------------------------------------------------------------- loading

SECTIONS = {
    "mqtt": MqttSettings, "watch": WatchSettings, "dicom": DicomSettings, "camera": CameraSettings,
    "runtime": RuntimeSettings, "state": StateSettings, "log": LogSettings,
}
TOP_LEVEL = ("bundle", "site", "device")
# Keys of different sections that share a name: their env vars must name the section.
AMBIGUOUS = {"dir"}


def _keys():
    """(section or "", key, type annotation) for every configurable key."""
    hints = {"bundle": "Path | None", "site": "str", "device": "str"}
    for key in TOP_LEVEL:
        yield "", key, hints[key]
    for section, cls in SECTIONS.items():
        for item in fields(cls):
            yield section, item.name, item.type


def key_name(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def env_names(section: str, key: str) -> list[str]:
    names = []
    if section:
        qualified = f"{ENV_PREFIX}{section}_{key}".upper()
        if not key.startswith(section + "_"):
            names.append(qualified)
    if key not in AMBIGUOUS:
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
        for name, value in data.items():
            if name in SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{name}: expected a [{name}] section")
                for key, inner in value.items():
                    if f"{name}.{key}" not in keys:
                        raise ConfigError(f"{name}.{key}: unknown key in [{name}] of {config_file}")
                    _set(config, name, key, keys[f"{name}.{key}"][2], inner, from_text=False)
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


def validate(config: EdgeConfig) -> None:
    """Raise ConfigError naming the first key whose value cannot work."""
    for name, value in (("site", config.site), ("device", config.device), ("mqtt.topic_prefix", config.mqtt.topic_prefix)):
        if not value or not TOPIC_SAFE.match(value):
            raise ConfigError(f"{name}: {value!r} must be letters, digits, '.', '_' or '-' (it is an MQTT topic level)")
    mqtt = config.mqtt
    try:
        parts = urlsplit(mqtt.broker)
    except ValueError:  # e.g. an unclosed [IPv6 address
        raise ConfigError(f"mqtt.broker: {mqtt.broker!r} must look like mqtt://host:1883 or mqtts://host:8883") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"mqtt.broker: {mqtt.broker!r} must look like mqtt://host:1883 or mqtts://host:8883")
    try:
        parts.port  # noqa: B018 - the property raises on a bad port
    except ValueError:
        raise ConfigError(f"mqtt.broker: {mqtt.broker!r} has an invalid port") from None
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
    watch = config.watch
    if watch.stable_s < 0:
        raise ConfigError(f"watch.stable_s: must be >= 0, not {watch.stable_s}")
    if watch.poll_s <= 0:
        raise ConfigError(f"watch.poll_s: must be > 0, not {watch.poll_s}")
    if watch.dir is None and (watch.processed_dir or watch.rejected_dir):
        raise ConfigError("watch.dir: processed_dir/rejected_dir are set but no watch folder")
    dicom = config.dicom
    if dicom.port is not None and not 1 <= dicom.port <= 65535:
        raise ConfigError(f"dicom.port: {dicom.port} is not a TCP port")
    if not 1 <= len(dicom.ae_title) <= 16:
        raise ConfigError(f"dicom.ae_title: {dicom.ae_title!r} must be 1 to 16 characters")
    if dicom.frames not in FRAME_POLICIES:
        raise ConfigError(f"dicom.frames: {dicom.frames!r} must be one of {', '.join(FRAME_POLICIES)}")
    camera = config.camera
    if camera.fps <= 0:
        raise ConfigError(f"camera.fps: must be > 0, not {camera.fps}")
    if camera.roi is not None and (len(camera.roi) != 4 or camera.roi[2] <= 0 or camera.roi[3] <= 0):
        raise ConfigError(f"camera.roi: {camera.roi} must be [x, y, width, height] with a positive size")
    if config.runtime.threads is not None and config.runtime.threads < 1:
        raise ConfigError(f"runtime.threads: must be >= 1, not {config.runtime.threads}")
    if config.state.outbox_max < 10:
        raise ConfigError(f"state.outbox_max: must be >= 10, not {config.state.outbox_max}")
    config.log.level = config.log.level.upper()
    if config.log.level not in LOG_LEVELS:
        raise ConfigError(f"log.level: {config.log.level!r} must be one of {', '.join(LOG_LEVELS)}")
    if config.log.format not in LOG_FORMATS:
        raise ConfigError(f"log.format: {config.log.format!r} must be text or json")
    if config.log.max_pixels < 64:
        raise ConfigError(f"log.max_pixels: must be >= 64, not {config.log.max_pixels}")
