"""Fleet rollout end to end: a real Mosquitto, several real `medge edge run` daemons and the
operator's `medge fleet deploy|status|rollback` as a user runs them. Canary first, then the
fleet; results afterwards carry the new model; a tampered archive is refused everywhere and
the old model kept; a rollback returns every device to its previous model."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from medge.fleet.serve import ArchiveServer
from tests.assets.make_bundles import INT8, ONNX_INT8
from tests.fixtures.broker import Subscriber
from tests.fixtures.edge import REPO, small_xray, write_atomically
from tests.fixtures.fleet import fleet_flags, keypair, make_candidate, make_keys, tampered_archive

SITE = "ward"


def fleet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medge", "fleet", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def sha256(artifact_folder: Path) -> str:
    manifest = json.loads((artifact_folder / "medge.json").read_text())
    return manifest["artifacts"][0]["sha256"]


def latest_fleet(sub: Subscriber, device: str) -> dict | None:
    reports = [p for t, p, _ in list(sub.messages) if t == f"medge/{SITE}/{device}/fleet" and isinstance(p, dict)]
    return reports[-1] if reports else None


@pytest.fixture
def site(tmp_path, broker, edge_daemon):
    """Devices xr-1..xr-N on site `ward` running bundle v1 (signed), ready for fleet commands."""
    keys = make_keys(tmp_path / "keys")
    v1 = make_candidate(INT8, tmp_path / "v1", version="1", key=keys["bundle"])
    sub = Subscriber(broker.port)
    sub.wait_for(lambda s: s.subscribed.is_set(), 10, "the subscription")

    def start(count: int) -> list[str]:
        names = [f"xr-{i}" for i in range(1, count + 1)]
        for name in names:
            edge_daemon(v1, broker.url, *fleet_flags(keys), site=SITE, device=name,
                        watch=tmp_path / name / "incoming", state_dir=tmp_path / name / "state")
        sub.wait_for(lambda s: all((latest_fleet(s, n) or {}).get("state") == "idle" for n in names), 90,
                     "every daemon's idle fleet report")
        return names

    yield {"start": start, "key": keys["operator"], "bundle_key": keys["bundle"], "keys": keys, "v1": v1, "sub": sub,
           "broker": ["--broker", broker.url], "tmp": tmp_path}
    sub.close()


def test_canary_then_fleet_promotion_then_results_carry_the_new_model_and_a_rollback(site):
    devices = site["start"](3)
    sub = site["sub"]
    v2 = make_candidate(ONNX_INT8, site["tmp"] / "v2", version="2", key=site["bundle_key"])
    done = fleet("deploy", str(v2), "--site", SITE, "--canary", "1", "--key", str(site["key"]), "--timeout", "90",
                 *site["broker"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "canary promoted: rolling out to the other 2 device(s)" in done.stdout
    assert "all 3 device(s) run pneumonia-cnn 2" in done.stdout

    # The canary (xr-1, first by name) was promoted before any other device heard of the rollout.
    states = [(t.split("/")[2], p["state"]) for t, p, _ in list(sub.messages)
              if t.endswith("/fleet") and "/commands/" not in t and (p.get("rollout") or "").startswith("pneumonia-cnn-2")]
    canary_done = states.index(("xr-1", "promoted"))
    others_started = min(i for i, (device, _) in enumerate(states) if device != "xr-1")
    assert canary_done < others_started, states
    new_sha = sha256(v2)
    for device in devices:
        report = latest_fleet(sub, device)
        assert report["state"] == "promoted" and report["active"]["version"] == "2"
        assert report["active"]["sha256"] == new_sha and report["previous"]["version"] == "1"
        assert report["reason"].startswith("self-test passed on onnxruntime"), report["reason"]  # on the device

    # Results from now on come from the new model, on every device, without a restart.
    for index, device in enumerate(devices):
        ok, png = cv2.imencode(".png", small_xray(index))
        write_atomically(site["tmp"] / device / "incoming" / f"after-{device}.png", png.tobytes())
    sub.wait_for(lambda s: {r["device"] for r in s.unique().values()} == set(devices), 60, "a result per device")
    for result in sub.unique().values():
        assert result["model"]["version"] == "2" and result["model"]["sha256"] == new_sha, result["model"]

    status = fleet("status", "--site", SITE, "--json", "--fleet-key", str(site["keys"]["operator_pub"]),
                   *site["broker"])
    assert status.returncode == 0, status.stderr
    table = json.loads(status.stdout)
    assert table["target"]["model"]["version"] == "2" and table["target_trust"] == "verified"
    assert [(row["device"], row["state"], row["on_target"]) for row in table["devices"]] == [
        (device, "promoted", True) for device in devices]
    assert fleet("status", "--site", SITE, "--check", *site["broker"]).returncode == 0
    assert "[unverified]" in fleet("status", "--site", SITE, *site["broker"]).stdout  # no key given
    # checked against a key that did not sign it, the record judges nobody and --check says why
    forged = fleet("status", "--site", SITE, "--check", "--fleet-key", str(site["keys"]["stranger_pub"]),
                   *site["broker"])
    assert forged.returncode == 1 and "[invalid: target record: signed by key" in forged.stdout
    assert forged.stderr.strip().splitlines()[-1].startswith(
        f"Error: site {SITE}: the target record is invalid: target record: signed by key"), forged.stderr

    back = fleet("rollback", "--site", SITE, "--key", str(site["key"]), "--timeout", "60", *site["broker"])
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"site {SITE} target: pneumonia-cnn 1" in back.stdout
    for device in devices:
        report = latest_fleet(sub, device)
        assert report["state"] == "rolled_back" and report["active"]["version"] == "1", report
    assert fleet("status", "--site", SITE, "--check", *site["broker"]).returncode == 0

    # One device rolled back alone (to v2, its previous now) leaves the site's target as it was:
    # `status --check` names the device that runs something else.
    alone = fleet("rollback", "--site", SITE, "--device", "xr-3", "--key", str(site["key"]), *site["broker"])
    assert alone.returncode == 0 and "target:" not in alone.stdout, alone.stdout + alone.stderr
    check = fleet("status", "--site", SITE, "--check", *site["broker"])
    assert check.returncode == 1 and "Error: 1 device(s) do not run the site's target: xr-3" in check.stderr


def test_a_tampered_archive_is_refused_on_every_device_and_the_old_model_kept(site):
    devices = site["start"](2)
    sub = site["sub"]
    v3 = make_candidate(INT8, site["tmp"] / "v3", version="3", key=site["bundle_key"])
    good = site["tmp"] / "v3.tar"
    packed = fleet("pack", str(v3), str(good))  # what an operator uploads for --url
    assert packed.returncode == 0 and hashlib.sha256(good.read_bytes()).hexdigest() in packed.stdout, packed.stderr
    (site["tmp"] / "served").mkdir()
    bad = tampered_archive(good, site["tmp"] / "served" / "v3.tar")
    with ArchiveServer(bad, "127.0.0.1", 0) as server:  # a file server that hands out other bytes
        done = fleet("deploy", str(v3), "--site", SITE, "--canary", "0", "--key", str(site["key"]),
                     "--url", server.url("127.0.0.1"), "--timeout", "60", *site["broker"])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "warning:" not in done.stdout  # same size as the real archive: only the devices' sha256 can tell
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert "0 of 2 device(s) promoted" in error
    for device in devices:
        assert f"{device}: refused: bundle archive from" in error and "does not match the sha256" in error
        report = latest_fleet(sub, device)
        assert report["state"] == "refused" and report["active"]["version"] == "1", report
    assert f"site {SITE}: target none published" in fleet("status", "--site", SITE, *site["broker"]).stdout


def test_the_shipped_acl_lets_only_the_fleet_account_command(site_broker, site_credentials, connect, tmp_path):
    """`medge fleet` over TLS against the shipped site broker config: as a device account the
    command is refused in one line; as the fleet account it reaches the device."""
    operator_key, _ = keypair(tmp_path, "operator")
    device = connect("xray-2")
    assert device.wait_connected() and device.subscribe("medge/site-a/xray-2/commands/#") == 1

    def rollback_as(account: str) -> subprocess.CompletedProcess:
        client = site_credentials / "clients" / account
        return fleet("rollback", "--site", "site-a", "--device", "xray-2", "--key", str(operator_key),
                     "--timeout", "2", "--broker", f"mqtts://127.0.0.1:{site_broker.port}", "--username", account,
                     "--password-file", str(client / "password"), "--ca-file", str(site_credentials / "ca.crt"),
                     "--cert-file", str(client / "client.crt"), "--key-file", str(client / "client.key"))

    forged = rollback_as("xray-1")
    assert forged.returncode == 1
    assert forged.stderr.strip().splitlines()[-1] == (
        "Error: rollback command to xray-2: the broker refused it (not authorized): only the fleet account may "
        "publish commands and targets (--username fleet; deploy/mosquitto/acl)")
    assert device.received("medge/site-a/xray-2/commands/fleet") == []

    sent = rollback_as("fleet")
    [command] = device.received("medge/site-a/xray-2/commands/fleet")
    assert json.loads(command)["action"] == "rollback" and json.loads(command)["signature"]["alg"] == "ed25519"
    # nothing runs a daemon here, so nobody answers: the operator is told so, in one line
    assert sent.returncode == 1 and "xray-2: no answer to the command within" in sent.stderr


def test_a_candidate_that_disagrees_in_shadow_mode_is_rolled_back_and_never_gives_a_result(site):
    [device] = site["start"](1)
    sub = site["sub"]
    # Same network, a threshold that calls every input positive: it passes its own self-test but
    # disagrees with the active model on the X-ray the active model calls negative.
    eager = make_candidate(INT8, site["tmp"] / "eager", version="2", key=site["bundle_key"], threshold=0.05)
    rollout = subprocess.Popen([sys.executable, "-m", "medge", "fleet", "deploy", str(eager), "--site", SITE,
                                "--canary", "0", "--shadow", "3", "--key", str(site["key"]), "--timeout", "90",
                                *site["broker"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        sub.wait_for(lambda s: (latest_fleet(s, device) or {}).get("state") == "shadow", 60, "the shadow run")
        for index in range(3):
            ok, png = cv2.imencode(".png", small_xray(index, 64))
            write_atomically(site["tmp"] / device / "incoming" / f"shadow-{index}.png", png.tobytes())
        out, err = rollout.communicate(timeout=90)
    finally:
        if rollout.poll() is None:
            rollout.kill()
    assert rollout.returncode == 1, out + err
    assert "shadow 0/3" in out
    assert f"{device}: rolled_back: shadow agreement 0.667 on 3 inputs (needed 0.95)" in err, err
    report = latest_fleet(sub, device)
    assert report["state"] == "rolled_back" and report["active"]["version"] == "1"
    shadows = sub.payloads("shadow")
    assert len(shadows) == 3 and sorted(s["agree"] for s in shadows) == [False, True, True]
    assert all(s["candidate"]["label"] == "pneumonia" for s in shadows)
    # The clinical results of those inputs came from the active model only.
    results = list(sub.unique().values())
    assert len(results) == 3 and {r["model"]["version"] for r in results} == {"1"}


def test_a_bundle_failing_its_self_test_stops_the_rollout_at_the_canary(site):
    devices = site["start"](2)
    sub = site["sub"]
    broken = make_candidate(INT8, site["tmp"] / "v4", version="4", key=site["bundle_key"], expected_shift=0.3)
    done = fleet("deploy", str(broken), "--site", SITE, "--canary", "1", "--key", str(site["key"]), "--timeout", "60",
                 *site["broker"])
    assert done.returncode == 1, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert "stopped at the canary, no other device was touched: xr-1: refused: self-test failed on litert" in error
    assert "deploy sent to 1 device(s): xr-1" in done.stdout and "xr-2" not in done.stdout
    canary, other = (latest_fleet(sub, device) for device in devices)
    assert canary["state"] == "refused" and canary["active"]["version"] == "1"
    assert other["state"] == "idle" and not any(t.startswith("medge/ward/xr-2/commands") for t, _, _ in sub.messages)
    assert f"site {SITE}: target none published" in fleet("status", "--site", SITE, *site["broker"]).stdout
