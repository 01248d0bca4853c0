"""deploy/systemd: the unit passes systemd's own checks (systemd-analyze verify and security),
keeps its hardening, and its user/folder files work with systemd-sysusers/tmpfiles."""
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from medge.edge.config import load_config

SYSTEMD = Path(__file__).resolve().parents[1] / "deploy" / "systemd"
UNIT = SYSTEMD / "medge-edge.service"
EXAMPLE_CONFIG = SYSTEMD.parent / "edge.example.toml"
INSTALLED_MEDGE = "/opt/medge/venv/bin/medge"


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed (apt-get install -y systemd; .ci/run does this)")
    return path


def unit_settings(text: str) -> dict[str, list[str]]:
    """[Service]/[Unit] key -> every value, in order (systemd keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.fixture
def unit_dir(tmp_path) -> Path:
    """The unit and its drop-ins, with ExecStart pointing at this machine's real `medge`
    (verify checks that the binary exists; on a device it is the virtualenv's)."""
    medge = shutil.which("medge")
    assert medge, "the medge console script is not installed (pip install -e .)"
    text = UNIT.read_text()
    assert INSTALLED_MEDGE in text
    (tmp_path / UNIT.name).write_text(text.replace(INSTALLED_MEDGE, medge))
    shutil.copytree(SYSTEMD / "medge-edge.service.d", tmp_path / "medge-edge.service.d")
    return tmp_path


def analyze(unit_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([systemd_tool("systemd-analyze"), *args, f"./{UNIT.name}"], cwd=unit_dir,
                          capture_output=True, text=True, timeout=120)


def test_systemd_analyze_verify_passes_without_warnings(unit_dir):
    done = analyze(unit_dir, "verify")
    assert done.returncode == 0, done.stderr
    # Unknown or misspelt keys only warn ("Unknown key ..., ignoring"), so warnings fail too.
    assert done.stderr.strip() == "" and done.stdout.strip() == "", done.stderr + done.stdout


def test_systemd_analyze_verify_sees_the_drop_ins(unit_dir):
    # The same check with a broken drop-in fails, so the clean result above covers them.
    (unit_dir / "medge-edge.service.d" / "zz-typo.conf").write_text("[Service]\nProtectSytem=strict\n")
    done = analyze(unit_dir, "verify")
    assert "Unknown key" in done.stderr


@pytest.mark.parametrize("drop_ins", [(), ("camera.conf",), ("dicom-port-104.conf",)])
def test_security_exposure_stays_low(unit_dir, drop_ins):
    """systemd's own scoring (0 = locked down, 10 = unprotected); 'OK' is below 4."""
    for name in {p.name for p in (unit_dir / "medge-edge.service.d").iterdir()} - set(drop_ins):
        (unit_dir / "medge-edge.service.d" / name).unlink()
    done = analyze(unit_dir, "security", "--offline=true", "--threshold=25")
    assert done.returncode == 0, done.stderr + done.stdout
    exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout).group(1))
    assert exposure <= 2.5, done.stdout


def test_unit_keeps_its_service_contract_and_hardening():
    settings = unit_settings(UNIT.read_text())
    one = {key: values[-1] for key, values in settings.items()}
    assert one["User"] == "medge" and one["Group"] == "medge"
    assert one["Type"] == "notify"  # the daemon sends READY=1 / WATCHDOG=1 (medge.edge.sd_notify)
    assert one["Restart"] == "on-failure"
    assert int(one["WatchdogSec"]) > 0
    assert one["EnvironmentFile"].lstrip("-") == "/etc/medge/edge.env"
    assert one["ExecStart"].split()[1:] == ["edge", "run", "--config", "/etc/medge/edge.toml"]
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
                       "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes",
                       "LockPersonality": "yes", "SystemCallArchitectures": "native"}.items():
        assert one.get(key) == value, f"{key}={one.get(key)}"
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    # Writable: only the state dir (outbox, pseudonym key) and the watch folder.
    assert [p.lstrip("-") for p in one["ReadWritePaths"].split()] == ["/var/lib/medge", "/var/spool/medge"]
    assert one["StateDirectory"] == "medge"
    assert "@system-service" in settings["SystemCallFilter"]


def test_the_example_config_fits_inside_the_units_writable_paths(monkeypatch, tmp_path):
    """The daemon, configured by deploy/edge.example.toml under this unit, writes only where
    ProtectSystem=strict lets it."""
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/medge")  # what StateDirectory=medge exports
    writable = [Path(p.lstrip("-")) for p in unit_settings(UNIT.read_text())["ReadWritePaths"][-1].split()]
    example = tomllib.loads(EXAMPLE_CONFIG.read_text())
    # The example names the device's CA file; the loader checks it exists.
    (tmp_path / "ca.crt").write_text("CA path for the loader\n")
    (tmp_path / "edge.toml").write_text(EXAMPLE_CONFIG.read_text().replace(example["mqtt"]["ca_file"],
                                                                         str(tmp_path / "ca.crt")))
    config = load_config(tmp_path / "edge.toml", env={})
    assert Path(example["watch"]["dir"]) == config.watch.dir
    for path in (config.watch.dir, config.processed_dir, config.rejected_dir, config.state_dir,
                 config.outbox_path):
        assert any(path == root or root in path.parents for root in writable), f"{path} is read-only under the unit"


def test_sysusers_and_tmpfiles_create_the_user_and_the_watch_folder(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    done = subprocess.run([systemd_tool("systemd-sysusers"), f"--root={root}", str(SYSTEMD / "medge.sysusers.conf")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    passwd = dict(line.split(":", 1) for line in (root / "etc" / "passwd").read_text().splitlines())
    uid, gid, _, home, shell = passwd["medge"].split(":")[1:]
    assert int(uid) < 1000 and home == "/var/lib/medge" and shell == "/usr/sbin/nologin"

    done = subprocess.run([systemd_tool("systemd-tmpfiles"), f"--root={root}", "--create",
                           str(SYSTEMD / "medge.tmpfiles.conf")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    incoming = root / "var" / "spool" / "medge" / "incoming"
    for folder in (incoming, incoming / "processed", incoming / "rejected"):
        assert folder.is_dir()
        if os.geteuid() == 0:  # only root can chown
            assert (folder.stat().st_uid, folder.stat().st_gid) == (int(uid), int(gid))
    assert incoming.stat().st_mode & 0o7777 == 0o2770


def test_the_units_command_line_is_one_the_cli_accepts():
    done = subprocess.run([shutil.which("medge") or "medge", "edge", "run", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout
