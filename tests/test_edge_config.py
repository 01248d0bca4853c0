"""EdgeConfig: TOML < env MEDGE_* < flags, one typed object, errors that name the key."""
from pathlib import Path

import pytest
from click.testing import CliRunner

from medge.edge.config import EdgeConfig, load_config
from medge.edge.errors import ConfigError
from medge.main import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "edge.example.toml"


def test_the_shipped_example_config_loads_and_means_what_it_says(tmp_path):
    # The example points at a CA file on a real device; give it one so validation can pass.
    text = EXAMPLE.read_text().replace("/etc/medge/ca.crt", str(tmp_path / "ca.crt"))
    (tmp_path / "ca.crt").write_text("placeholder CA path for the loader\n")
    (tmp_path / "edge.toml").write_text(text)
    config = load_config(tmp_path / "edge.toml", env={})
    assert isinstance(config, EdgeConfig)
    assert config.site == "st-marys"
    assert config.mqtt.broker.startswith("mqtts://") and config.mqtt.tls and config.mqtt.port == 8883
    assert config.mqtt.tls_insecure is False
    assert config.watch.dir == Path("/var/spool/medge/incoming")
    assert config.processed_dir == Path("/var/spool/medge/incoming/processed")
    assert config.dicom.port is None and config.dicom.frames == "first"
    assert config.state.outbox_max == 10000
    assert config.topic("result") == f"medge/st-marys/{config.device}/result"
    assert config.source_names() == ["watch"]
    assert config.warnings == []  # no deprecated key in the shipped file
    assert config.input.max_pixels == 64_000_000 and config.watch.grace_s == 30.0
    assert (config.dicom.bind, config.dicom.require_called_ae, config.dicom.max_associations) == ("0.0.0.0", True, 10)


def test_precedence_is_file_then_environment_then_flags(tmp_path):
    (tmp_path / "edge.toml").write_text(
        'site = "from-file"\ndevice = "file-device"\n[mqtt]\nbroker = "mqtt://file-host:1883"\nheartbeat_s = 10\n'
        '[watch]\ndir = "incoming"\nstable_s = 2.5\n[state]\ndir = "/var/lib/x"\noutbox_max = 500\n')
    env = {"MEDGE_SITE": "from-env", "MEDGE_BROKER": "mqtt://env-host:1884", "MEDGE_OUTBOX_MAX": "700",
           "MEDGE_STATE_DIR": "/srv/state", "MEDGE_TRAIN_EPOCHS": "5"}
    config = load_config(tmp_path / "edge.toml", env=env, flags={"site": "from-flag", "mqtt.heartbeat_s": None})
    assert config.site == "from-flag"  # flag beats env beats file
    assert config.mqtt.broker == "mqtt://env-host:1884" and config.mqtt.host == "env-host" and config.mqtt.port == 1884
    assert config.state.outbox_max == 700 and config.state.dir == Path("/srv/state")
    assert config.device == "file-device"
    assert config.mqtt.heartbeat_s == 10.0  # an unset flag (None) hides nothing
    assert config.watch.dir == tmp_path / "incoming"  # relative to the config file
    assert config.watch.stable_s == 2.5


def test_section_qualified_environment_names_and_lists():
    env = {"MEDGE_WATCH_DIR": "/data/in", "MEDGE_MQTT_VERSION": "3.1.1", "MEDGE_DICOM_PORT": "11112",
           "MEDGE_ALLOWED_CALLERS": "CT1, MR2", "MEDGE_ROI": "10,20,300,200", "MEDGE_TLS_INSECURE": "no"}
    config = load_config(env=env)
    assert config.watch.dir == Path("/data/in")
    assert config.mqtt.mqtt_version == "3.1.1"
    assert config.dicom.port == 11112
    assert config.dicom.allowed_callers == ["CT1", "MR2"]
    assert config.camera.roi == [10, 20, 300, 200]
    assert config.mqtt.tls_insecure is False
    assert config.source_names() == ["watch", "dicom"]


@pytest.mark.parametrize("toml, key", [
    ('[mqtt]\nbroker = "http://host"\n', "mqtt.broker"),
    ('[mqtt]\nbrokr = "mqtt://host"\n', "mqtt.brokr"),
    ('colour = "red"\n', "colour"),
    ('[mqtt]\nmqtt_version = "4"\n', "mqtt.mqtt_version"),
    ('[mqtt]\nheartbeat_s = "often"\n', "mqtt.heartbeat_s"),
    ('[mqtt]\nca_file = "/nonexistent/ca.pem"\nbroker = "mqtts://h"\n', "mqtt.ca_file"),
    ('[mqtt]\ntls_insecure = true\n', "mqtt.broker"),  # a TLS option on a plain mqtt:// broker
    ('site = "a/b"\n', "site"),
    ('[dicom]\nframes = "middle"\n', "dicom.frames"),
    ('[dicom]\nport = 70000\n', "dicom.port"),
    ('[camera]\nroi = [1, 2, 3]\n', "camera.roi"),
    ('[state]\noutbox_max = 1.5\n', "state.outbox_max"),
    ('[log]\nlevel = "LOUD"\n', "log.level"),
    ('[log]\nformat = "xml"\n', "log.format"),
    ('[mqtt]\npassword = "x"\n', "mqtt.username"),
    ('mqtt = 3\n', "mqtt"),
    ('[mqtt]\nbroker = "mqtt://[::1"\n', "mqtt.broker"),  # urlsplit itself raises
])
def test_invalid_values_name_the_key(tmp_path, toml, key):
    (tmp_path / "edge.toml").write_text(toml)
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "edge.toml", env={})
    assert str(raised.value).startswith(key + ":"), str(raised.value)


def test_broken_toml_is_one_clear_line(tmp_path):
    (tmp_path / "edge.toml").write_text("[mqtt\nbroker=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "edge.toml", env={})
    (tmp_path / "edge.toml").write_bytes(b'site = "\xff"\n')  # not UTF-8
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "edge.toml", env={})
    with pytest.raises(ConfigError, match="config: cannot read"):
        load_config(tmp_path, env={})  # a directory, or a file the daemon may not read


def test_password_comes_from_env_or_file_never_a_flag(tmp_path):
    config = load_config(env={"MEDGE_MQTT_PASSWORD": "s3cret", "MEDGE_USERNAME": "dev"})
    assert config.mqtt.resolved_password() == "s3cret"
    (tmp_path / "pw").write_text("from-file\n")
    config = load_config(env={}, flags={"mqtt.username": "dev", "mqtt.password_file": str(tmp_path / "pw")})
    assert config.mqtt.resolved_password() == "from-file"
    with pytest.raises(ConfigError, match="^mqtt.password: not accepted on the command line"):
        load_config(env={}, flags={"mqtt.password": "x"})
    result = CliRunner().invoke(cli, ["edge", "run", "--password", "x"])
    assert result.exit_code != 0 and "No such option" in result.output


def test_cli_reports_a_bad_value_as_one_line_naming_the_key(tmp_path):
    result = CliRunner().invoke(cli, ["edge", "run", str(tmp_path), "--watch", str(tmp_path), "--stable-s", "-1"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: watch.stable_s: must be >= 0, not -1.0"
    result = CliRunner().invoke(cli, ["edge", "run", "--watch", str(tmp_path), "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert "bundle: no model bundle given" in result.output


def test_check_fails_with_reasons_for_a_missing_bundle_and_an_unreachable_broker(tmp_path):
    from medge.broker import free_port

    result = CliRunner().invoke(cli, ["edge", "check", str(tmp_path / "nope"), "--watch", str(tmp_path / "in"),
                                      "--state-dir", str(tmp_path / "state"),
                                      "--broker", f"mqtt://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(line.startswith("FAIL bundle:") and "not found" in line for line in lines), result.output
    assert any(line.startswith("FAIL broker:") and "cannot reach" in line for line in lines), result.output
    assert any(line.startswith("ok   sources: watch") for line in lines), result.output
    assert lines[-1] == "Error: 2 check(s) failed"


def test_the_daemon_has_one_environment_scheme(tmp_path):
    """MEDGE_SITE sets the site; click's MEDGE_EDGE_RUN_SITE / MEDGE_EDGE_CHECK_SITE set nothing."""
    from medge.broker import free_port

    args = ["edge", "check", "--watch", str(tmp_path / "in"), "--state-dir", str(tmp_path / "state"),
            "--broker", f"mqtt://127.0.0.1:{free_port()}"]
    env = {"MEDGE_SITE": "config-scheme", "MEDGE_EDGE_CHECK_SITE": "click-scheme", "MEDGE_EDGE_RUN_SITE": "click-run",
           "MEDGE_EDGE_CHECK_STABLE_S": "-5", "MEDGE_DICOM_PORT": "", "MEDGE_EDGE_CHECK_DICOM_PORT": "11112"}
    result = CliRunner().invoke(cli, args, env=env)
    config_line = next(line for line in result.output.splitlines() if " config:" in line)
    assert "site config-scheme," in config_line and "sources: watch" in config_line, result.output
    # The flag still beats the environment.
    result = CliRunner().invoke(cli, args + ["--site", "flag"], env=env)
    assert "site flag," in result.output


def test_help_defaults_come_from_the_settings_and_name_the_variable():
    result = CliRunner().invoke(cli, ["edge", "run", "--help"], terminal_width=200)
    text = " ".join(result.output.split())
    assert "[default: 1.0; env: MEDGE_WATCH_STABLE_S]" in text
    assert "[default: 10; env: MEDGE_DICOM_MAX_ASSOCIATIONS]" in text
    assert "[default: 0.0.0.0; env: MEDGE_DICOM_BIND]" in text
    assert "[default: 64000000; env: MEDGE_INPUT_MAX_PIXELS]" in text


def test_max_pixels_moved_to_input_and_the_old_key_still_works_with_a_warning(tmp_path):
    (tmp_path / "old.toml").write_text("[log]\nmax_pixels = 1000000\n")
    config = load_config(tmp_path / "old.toml", env={})
    assert config.input.max_pixels == 1_000_000
    assert config.warnings == [f"log.max_pixels in {tmp_path / 'old.toml'} is deprecated: it is now "
                               "input.max_pixels (read as such)"]
    (tmp_path / "new.toml").write_text("[input]\nmax_pixels = 2000000\n")
    config = load_config(tmp_path / "new.toml", env={})
    assert config.input.max_pixels == 2_000_000 and config.warnings == []
    assert load_config(env={"MEDGE_MAX_PIXELS": "3000000"}).input.max_pixels == 3_000_000
    with pytest.raises(ConfigError, match="^input.max_pixels: must be >= 64"):
        load_config(env={}, flags={"input.max_pixels": 10})


def test_every_source_comes_from_the_registry_and_environment_names_never_collide():
    from medge.edge.config import _keys, env_names
    from medge.edge.sources.registry import source_types

    types = source_types()
    assert list(types) == ["watch", "dicom", "camera"]
    config = load_config(env={})
    for name, source in types.items():
        assert isinstance(getattr(config, name), source.settings)  # config.watch, config.dicom, ...
    owners: dict[str, str] = {}
    for section, key, _ in _keys():
        for variable in env_names(section, key):
            dotted = f"{section}.{key}" if section else key
            assert owners.setdefault(variable, dotted) == dotted, f"{variable} names two keys"


NEW_SOURCE_MODULE = '''
"""A source that takes every file of one folder once, at start: the whole of a new source."""
from dataclasses import dataclass
from pathlib import Path

from medge.edge.checks import CheckResult
from medge.edge.errors import ConfigError
from medge.edge.preprocess import decode_image
from medge.edge.sources.base import Flag, InputItem, Source, SourceType


@dataclass
class ImportSettings:
    dir: Path | None = None
    limit: int = 100


class FolderImport(Source):
    name = "import"

    def __init__(self, settings):
        self.settings = settings

    def start(self, submit):
        for path in sorted(self.settings.dir.iterdir())[: self.settings.limit]:
            submit(InputItem(source="import", ref=path.name, load=lambda path=path: decode_image(path)))

    def stop(self):
        pass


def validate(settings):
    if settings.limit < 1:
        raise ConfigError(f"import.limit: must be >= 1, not {settings.limit}")


SOURCE = SourceType(
    name="import", settings=ImportSettings, switch="dir", validate=validate, order=40,
    build=lambda settings, config, on_event: FolderImport(settings),
    check=lambda settings, config: CheckResult.of([] if settings.dir.is_dir() else [f"import.dir: {settings.dir} is not a folder"],
                                                  f"import {settings.dir}"),
    flags=(Flag("dir", ("--import-dir",), "Folder imported once at start."), Flag("limit", ("--import-limit",), "Most files.")),
)
'''


@pytest.fixture
def new_source_module(tmp_path, monkeypatch):
    """One new module, `import_once.py`, in the sources package's search path: nothing else changes."""
    import importlib

    import medge.edge.daemon_cli
    import medge.edge.sources as sources_package
    from medge.edge.sources.registry import source_types

    extra = tmp_path / "more_sources"
    extra.mkdir()
    (extra / "import_once.py").write_text(NEW_SOURCE_MODULE)
    monkeypatch.setattr(sources_package, "__path__", [*sources_package.__path__, str(extra)])
    source_types.cache_clear()
    importlib.reload(medge.edge.daemon_cli)  # its options are built from the registry at import
    yield
    monkeypatch.undo()
    source_types.cache_clear()
    importlib.reload(medge.edge.daemon_cli)


def test_a_new_source_is_one_new_module(new_source_module, tmp_path):
    from medge.edge.sources import build_sources

    folder = tmp_path / "to-import"
    folder.mkdir()
    (tmp_path / "edge.toml").write_text(f'[import]\ndir = "{folder}"\nlimit = 5\n')
    config = load_config(tmp_path / "edge.toml", env={"MEDGE_IMPORT_LIMIT": "7"})  # TOML, environment
    assert config.source_names() == ["import"] and config.source_settings["import"].limit == 7
    with pytest.raises(ConfigError, match="^import.limit: must be >= 1"):
        load_config(env={}, flags={"import.dir": str(folder), "import.limit": 0})
    [source] = build_sources(config)
    assert source.name == "import"
    # Its flags and its check, in `medge edge check`, with the others' help and errors untouched.
    result = CliRunner().invoke(cli, ["edge", "check", "--import-dir", str(tmp_path / "missing"),
                                      "--state-dir", str(tmp_path / "state"), "--broker", "mqtt://127.0.0.1:1"])
    assert f"FAIL sources: import.dir: {tmp_path / 'missing'} is not a folder" in result.output, result.output
    help_text = CliRunner().invoke(cli, ["edge", "run", "--help"], terminal_width=200).output
    assert "--import-limit INTEGER" in help_text and "[default: 100; env: MEDGE_IMPORT_LIMIT]" in help_text
    result = CliRunner().invoke(cli, ["edge", "run", "--state-dir", str(tmp_path / "s"), str(tmp_path)])
    assert "set watch.dir, dicom.port, camera.src, import.dir" in result.output


def test_check_reports_each_failing_source_probe(tmp_path):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        result = CliRunner().invoke(cli, ["edge", "check", "--watch", str(tmp_path / "in"), "--dicom-port", str(port),
                                          "--dicom-bind", "127.0.0.1", "--camera", str(tmp_path / "no-camera.avi"),
                                          "--state-dir", str(tmp_path / "state"), "--broker", "mqtt://127.0.0.1:1"])
    finally:
        busy.close()
    [line] = [line for line in result.output.splitlines() if line[5:].startswith("sources:")]
    assert line.startswith("FAIL sources: "), result.output
    assert f"dicom.port {port} is not free on 127.0.0.1" in line
    assert "no-camera.avi" in line  # the camera source refuses a video file that does not exist
