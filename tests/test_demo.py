"""`medge demo` end to end, as a new user runs it: every stage real, every process cleaned up."""
import json
import re
import socket
import subprocess
import sys

import pytest


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# Mosquitto is what a site runs; amqtt is the fallback on a machine without it (MQTT 3.1.1 only).
@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_trains_converts_deploys_and_shows_results(tmp_path, broker):
    workdir = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "medge", "demo", "--quick", "--no-serve", "--port", "0",
                           "--broker", broker, "--workdir", str(workdir)], capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]

    # The gate ran and passed, and the bundle it wrote is what the daemon loaded.
    assert "PASS" in output
    assert f"{broker} on mqtt://" in output
    manifest = json.loads((workdir / "bundle" / "medge.json").read_text())
    assert manifest["classes"] == ["normal", "pneumonia"]

    # Each bundled X-ray produced one published result, and the dashboard received them all.
    for name in ("IM-0115-0001.jpeg", "person1_bacteria_1.jpeg", "person1_virus_6.jpeg"):
        assert re.search(rf"result\s+{re.escape(name)}\s+-> (normal|pneumonia)", output), name
        assert (workdir / "inbox" / "processed" / name).exists()
    assert "results published: 3; on the dashboard: 3" in output

    # Nothing it started is left running.
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)/", output) + re.findall(r"mqtt://127\.0\.0\.1:(\d+)", output)
    assert urls
    for port in urls:
        assert not _port_open(int(port)), f"port {port} still open after the demo exited"
