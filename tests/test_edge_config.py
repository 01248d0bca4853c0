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
    assert config.redacted()["mqtt.password"] == "***"
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
