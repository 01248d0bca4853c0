"""`medge demo` end to end, as a new user runs it: every stage real, every process cleaned up."""
import http.server
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

from medge.data import chest_xray_sample_files
from medge.demo import WORKDIR_MARKER

SAMPLES = ("IM-0115-0001.jpeg", "person1_bacteria_1.jpeg", "person1_virus_6.jpeg")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def medge_entry_point() -> str:
    """The installed `medge` script, as a user's shell finds it after `pip install`."""
    script = Path(sysconfig.get_path("scripts")) / "medge"
    return str(script) if script.exists() else shutil.which("medge")


def user_env(**extra) -> dict:
    """The environment of a user at a terminal: not CI (the tests may run under CI=true)."""
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    return {**env, **extra}


def clone_parent(tmp_path: Path) -> Path:
    """A folder holding a clone named `medge` (no __init__.py at its top, like this repository)."""
    (tmp_path / "medge" / "edge").mkdir(parents=True)
    (tmp_path / "medge" / "README.md").write_text("# medge\n")
    return tmp_path


def assert_results_and_cleanup(output: str, workdir: Path, broker: str):
    # The gate ran and passed, and the bundle it wrote is what the daemon loaded.
    assert "PASS" in output
    assert f"{broker} on mqtt://" in output
    manifest = json.loads((workdir / "bundle" / "medge.json").read_text())
    assert manifest["classes"] == ["normal", "pneumonia"]
    # Each bundled X-ray produced one published result, and the dashboard received them all.
    for name in SAMPLES:
        assert re.search(rf"result\s+{re.escape(name)}\s+-> (normal|pneumonia)", output), name
        assert (workdir / "inbox" / "processed" / name).exists()
    assert "results published: 3; on the dashboard: 3" in output
    assert re.search(r"Done in \d+", output)
    # Nothing it started is left running.
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)/", output) + re.findall(r"mqtt://127\.0\.0\.1:(\d+)", output)
    assert urls
    for port in urls:
        assert not _port_open(int(port)), f"port {port} still open after the demo exited"


def test_demo_from_a_clones_parent_folder_finishes_by_itself_when_not_interactive(tmp_path):
    """The README's `medge demo`, run where `python -m medge` would pick up ./medge, with stdin
    not a terminal (a CI job): it shows its results and stops, exit 0."""
    cwd = clone_parent(tmp_path)
    done = subprocess.run([medge_entry_point(), "demo", "--quick", "--port", "0", "--broker", "mosquitto",
                           "--workdir", "demo"], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=900, env=user_env())
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "ImportError" not in output
    assert "Not interactive" in output
    workdir = cwd / "demo"
    assert (workdir / WORKDIR_MARKER).is_file()
    assert_results_and_cleanup(output, workdir, "mosquitto")


class Lines:
    """A process's stdout, line by line, readable with a timeout."""

    def __init__(self, stream):
        self.queue, self.seen = queue.Queue(), []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if any(re.search(pattern, line) for line in self.seen):
            return True
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                return False
            self.seen.append(line)
            if re.search(pattern, line):
                return True
        return False

    def drain(self, timeout: float) -> None:
        """Everything up to the end of the stream (the process has exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                return
            if line is None:
                return
            self.seen.append(line)

    @property
    def text(self) -> str:
        return "".join(self.seen)


def test_demo_serves_and_prints_every_later_result_until_ctrl_c(tmp_path):
    # A work folder left by an earlier demo (it holds the marker) is reused, its old files gone.
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / WORKDIR_MARKER).write_text("made by `medge demo`\n")
    (workdir / "stale-from-last-run.txt").write_text("old\n")
    process = subprocess.Popen([medge_entry_point(), "demo", "--quick", "--serve", "--port", "0", "--broker", "amqtt",
                                "--workdir", str(workdir)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=user_env(), start_new_session=True)
    lines = Lines(process.stdout)
    try:
        assert lines.wait_for(r"Ctrl-C to stop", timeout=900), lines.text[-4000:]
        assert not (workdir / "stale-from-last-run.txt").exists()
        # The user drops more X-rays into the inbox: each result shows in this terminal too.
        later = []
        for index, sample in enumerate(chest_xray_sample_files()[:2]):
            name = f"later-{index}{sample.suffix}"
            shutil.copy2(sample, workdir / "inbox" / name)
            later.append(name)
        for name in later:
            assert lines.wait_for(rf"result\s+{re.escape(name)}\s+-> (normal|pneumonia)", timeout=120), lines.text[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C at the terminal signals the whole group
        process.wait(timeout=60)
    lines.drain(timeout=10)
    assert process.returncode == 0, lines.text[-4000:]
    assert "Stopping..." in lines.text
    assert_results_and_cleanup(lines.text, workdir, "amqtt")


def test_demo_refuses_a_workdir_it_did_not_make(tmp_path):
    workdir = tmp_path / "my-project"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("the user's own file\n")
    done = subprocess.run([sys.executable, "-m", "medge", "demo", "--workdir", str(workdir), "--port", "0"],
                          capture_output=True, text=True, timeout=120, env=user_env())
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: {workdir}: not empty and not made by `medge demo`; refusing to delete it "
        "(choose another --workdir, or an empty folder)"]
    assert (workdir / "notes.txt").read_text() == "the user's own file\n"
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]


def test_demo_says_in_one_line_that_the_dashboard_port_is_taken(tmp_path):
    # Another web server already holds the port.
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "medge", "demo", "--workdir", str(tmp_path / "demo"),
                               "--port", str(port)], capture_output=True, text=True, timeout=120, env=user_env())
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: demo: port {port} is already in use (another dashboard or demo?); "
        "stop it, or use --port 0 for any free port"]
    assert f"http://127.0.0.1:{port}/" not in done.stdout
    assert time.monotonic() - started < 60  # before any training
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("terminal, ci, serves", [(True, None, True), (True, "true", False), (False, None, False)])
def test_demo_serves_only_at_a_terminal_outside_ci(terminal, ci, serves):
    """The rule `medge demo` uses to decide whether to keep running, with a real pseudo-terminal."""
    primary, secondary = os.openpty()
    try:
        stdin = secondary if terminal else subprocess.DEVNULL
        env = user_env(**({"CI": ci} if ci else {}))
        done = subprocess.run([sys.executable, "-c", "from medge.demo import interactive; print(interactive())"],
                              stdin=stdin, capture_output=True, text=True, timeout=60, env=env)
    finally:
        os.close(primary)
        os.close(secondary)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(serves)
