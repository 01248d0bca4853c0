"""The scanner export folder: pick up each new file once, when it is completely written.

A file is taken when its size and modification time have stayed the same for `stable_s`
(writers that write under a temporary name and rename are covered too: dot-files and
`.part`/`.tmp`/`.partial` names are ignored until renamed). Files already present at start
(what arrived while the daemon was down) are taken at once if they are older than
`stable_s`. After the daemon has stored the outcome durably, the file is moved to
`processed/` or, with a `<name>.why.txt` sidecar saying why, to `rejected/`; so a file
still in the folder is one whose outcome is not yet stored, and nothing is processed twice
or forgotten (the outbox's input ledger covers a crash between storing and moving).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from ..preprocess import DEFAULT_MAX_PIXELS, decode_image
from .base import InputItem, Outcome, Source, Submit

log = logging.getLogger("medge.edge.watch")

TEMPORARY_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart", ".swp")
SIDECAR_SUFFIX = ".why.txt"


class WatchFolder(Source):
    name = "watch"

    def __init__(self, directory: str | Path, processed_dir: str | Path | None = None,
                 rejected_dir: str | Path | None = None, stable_s: float = 1.0, poll_s: float = 0.5,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_in_flight: int = 32):
        self.directory = Path(directory)
        self.processed_dir = Path(processed_dir) if processed_dir else self.directory / "processed"
        self.rejected_dir = Path(rejected_dir) if rejected_dir else self.directory / "rejected"
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.max_pixels = max_pixels
        # Backpressure: the folder itself is the queue, so only a few files are handed on at once.
        self.max_in_flight = max_in_flight
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}  # name -> ((size, mtime_ns), first seen)
        self._in_flight: set[str] = set()
        self._stuck: set[str] = set()  # could not be moved away: never offered again this run
        self._unreadable: set[str] = set()  # subfolders already reported as unreadable
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a backlog is waiting and the worker has room again
        self._backlogged = False
        self._thread: threading.Thread | None = None
        self.counters = {"taken": 0, "processed": 0, "rejected": 0, "move_failures": 0}

    # ------------------------------------------------------------------ Source
    def start(self, submit: Submit) -> None:
        for folder in (self.directory, self.processed_dir, self.rejected_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._submit = submit
        self._thread = threading.Thread(target=self._run, name="medge-watch", daemon=True)
        self._thread.start()
        log.info("watching %s (processed -> %s, rejected -> %s)", self.directory, self.processed_dir, self.rejected_dir)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def health(self) -> dict:
        with self._lock:
            return dict(self.counters, in_flight=len(self._in_flight))

    # ------------------------------------------------------------------ scanning
    def _run(self) -> None:
        initial = True
        reported = None
        while not self._stop.is_set():
            try:
                self.scan(initial=initial)
                reported = None
            except OSError as error:  # the folder vanished or became unreadable: keep trying
                if str(error) != reported:  # once per problem, not once per poll
                    log.error("cannot scan %s: %s", self.directory, error)
                    reported = str(error)
            initial = False
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _excluded(self) -> set[Path]:
        return {self.processed_dir.resolve(), self.rejected_dir.resolve()}

    def _candidates(self):
        """(relative name, path, stat) of every regular, non-temporary file, oldest first."""
        excluded = {str(path) for path in self._excluded()}
        found = []
        pending = [("", str(self.directory))]
        while pending:  # os.scandir, not os.walk + Path: a scan of a busy folder runs every poll
            prefix, folder = pending.pop()
            try:
                entries = os.scandir(folder)
            except OSError as error:
                if not prefix:
                    raise  # the watch folder itself: reported by _run
                # One unreadable subfolder must not stop the whole folder; said once per folder.
                if folder not in self._unreadable:
                    self._unreadable.add(folder)
                    log.warning("cannot read %s: %s; its files are skipped", folder, error)
                continue
            with entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if os.path.realpath(entry.path) not in excluded:
                            pending.append((prefix + entry.name + "/", entry.path))
                        continue
                    if not entry.is_file() or entry.name.lower().endswith(TEMPORARY_SUFFIXES):
                        continue
                    try:
                        stat = entry.stat()
                    except FileNotFoundError:
                        continue
                    found.append((prefix + entry.name, Path(entry.path), stat))
        found.sort(key=lambda entry: (entry[2].st_mtime_ns, entry[0]))
        return found

    def scan(self, initial: bool = False) -> int:
        """One pass: submit files that are completely written. Returns how many were submitted."""
        now_mono, now_wall = time.monotonic(), time.time()
        present = set()
        submitted = 0
        self._backlogged = False
        for name, path, stat in self._candidates():
            present.add(name)
            signature = (stat.st_size, stat.st_mtime_ns)
            with self._lock:
                if name in self._in_flight or name in self._stuck:
                    continue
                previous = self._seen.get(name)
                if previous is None or previous[0] != signature:
                    self._seen[name] = (signature, now_mono)
                    # A backlog file that nobody has touched for stable_s is complete already.
                    if not (initial and now_wall - stat.st_mtime >= self.stable_s):
                        continue
                elif now_mono - previous[1] < self.stable_s:
                    continue
                if len(self._in_flight) >= self.max_in_flight:
                    self._backlogged = True  # complete, but the worker has enough: taken on a later pass
                    continue
                self._in_flight.add(name)
                self._seen.pop(name, None)
                self.counters["taken"] += 1
            self._submit(self._item(name, path))
            submitted += 1
        with self._lock:  # forget files that disappeared before they were stable
            for gone in set(self._seen) - present:
                del self._seen[gone]
        return submitted

    def _item(self, name: str, path: Path) -> InputItem:
        # The decoder is given a neutral name: error messages (published as events) must not
        # carry the file name, which scanners often build from the patient's name.
        neutral = "input" + path.suffix.lower()
        return InputItem(
            source="watch",
            ref=name,
            load=lambda: decode_image(path, name=neutral, max_pixels=self.max_pixels),
            done=lambda outcome: self._finish(name, path, outcome),
            label=name,
        )

    # ------------------------------------------------------------------ releasing
    def _finish(self, name: str, path: Path, outcome: Outcome) -> bool:
        """Move the file away; False when it could not be (the worker then keeps its ledger entry)."""
        target_root = self.processed_dir if outcome.ok else self.rejected_dir
        try:
            target = _free_name(target_root / name)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not outcome.ok:
                # Sidecar first: a crash in between leaves the file to be released again, never
                # a rejected file without its reason.
                sidecar = target.with_name(target.name + SIDECAR_SUFFIX)
                temporary = sidecar.with_name("." + sidecar.name + ".tmp")
                temporary.write_text((outcome.error or "rejected") + "\n")
                os.replace(temporary, sidecar)
            if path.exists():
                os.replace(path, target)
            counter = "processed" if outcome.ok else "rejected"
            with self._lock:
                self.counters[counter] += 1
                self._in_flight.discard(name)
                if self._backlogged and len(self._in_flight) <= self.max_in_flight // 2:
                    self._wake.set()  # keep the worker busy without a rescan per file
            log.info("%s %s -> %s", counter, name, target)
            return True
        except OSError as error:
            log.error("cannot move %s to %s: %s; it stays in the watch folder and is not offered again until restart",
                      name, target_root, error)
            with self._lock:
                self.counters["move_failures"] += 1
                self._in_flight.discard(name)
                self._stuck.add(name)
            return False


def _free_name(target: Path) -> Path:
    """`target`, or `stem.2.ext`, ... when a file of that name was processed before."""
    if not target.exists():
        return target
    counter = 2
    while True:
        candidate = target.with_name(f"{target.stem}.{counter}{target.suffix}")
        if not candidate.exists():
            return candidate
        counter += 1
