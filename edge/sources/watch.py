"""The scanner export folder: pick up each new file once, when it is completely written.

A file is taken when its size and modification time have stayed the same for `stable_s`
(writers that write under a temporary name and rename are covered too: dot-files and
`.part`/`.tmp`/`.partial` names are ignored until renamed). Files already present at start
(what arrived while the daemon was down) are taken at once if they are older than
`stable_s`. After the daemon has stored the outcome durably, the file is moved to
`processed/` or, with a `<name>.why.txt` sidecar saying why, to `rejected/`; so a file
still in the folder is one whose outcome is not yet stored, and nothing is processed twice
or forgotten (the outbox's input ledger covers a crash between storing and moving).

Renamed into place: on Linux a file renamed into the folder (the exporter's atomic write)
is complete by definition, so it is taken as soon as inotify reports it, without waiting
`stable_s` or the next poll (issue 15: idle latency); one written in place waits as above.

Slow writers: on Linux the folder is also watched with inotify, so a file some process still
holds open for writing is not taken while it keeps changing within `grace_s`, however slowly
it is written. A file that was seen growing and does not decode yet is offered again instead
of being rejected (`InputNotReady`), and rejected only once it stayed unchanged and
undecodable for `grace_s`.

Entries that are not regular files (FIFOs, devices, sockets, links to them or to nothing) are
never opened: each is rejected (error event, moved aside with its reason). A watch folder that
disappears is a `source_down` event and a `down` state in the heartbeat until it is back.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import stat as stat_mode
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..checks import CheckResult, writable
from ..errors import ConfigError, InputError
from ..preprocess import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, decode_image
from . import _inotify
from .base import Flag, InputItem, InputNotReady, Outcome, Source, SourceType, Submit

log = logging.getLogger("medge.edge.watch")

TEMPORARY_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart", ".swp")
SIDECAR_SUFFIX = ".why.txt"
NAME_MAX = 255  # bytes in one file name on Linux file systems; a longer sidecar name is shortened


class WatchFolder(Source):
    name = "watch"

    def __init__(self, directory: str | Path, processed_dir: str | Path | None = None,
                 rejected_dir: str | Path | None = None, stable_s: float = 1.0, poll_s: float = 0.5,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_in_flight: int = 32, on_event=None,
                 max_bytes: int = DEFAULT_MAX_FILE_BYTES, grace_s: float = 30.0):
        self.directory = Path(directory)
        self.processed_dir = Path(processed_dir) if processed_dir else self.directory / "processed"
        self.rejected_dir = Path(rejected_dir) if rejected_dir else self.directory / "rejected"
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.grace_s = grace_s
        self.on_event = on_event
        # Backpressure: the folder itself is the queue, so only a few files are handed on at once.
        self.max_in_flight = max_in_flight
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}  # name -> ((size, mtime_ns), first seen)
        self._in_flight: set[str] = set()
        self._stuck: set[str] = set()  # could not be moved away: never offered again this run
        self._unreadable: set[str] = set()  # subfolders already reported as unreadable
        self._grew: set[str] = set()  # seen changing while watched: may still be being written
        self._writing: set[str] = set()  # inotify: modified and not closed since
        self._in_place: set[str] = set()  # inotify: created in the folder (not renamed into it)
        self._moved_in: set[str] = set()  # inotify: renamed into the folder, untouched since: complete
        self._events: list[tuple[int, int, str]] = []  # read by the notifier thread, drained by scan
        self._notifier: threading.Thread | None = None
        self._odd_reported: set[str] = set()  # links to folders, reported once and left alone
        self._inotify: _inotify.Inotify | None = None
        self._watches: dict[str, int] = {}  # folder -> watch descriptor
        self._prefixes: dict[int, str] = {}  # watch descriptor -> relative folder prefix
        self._down: str | None = None  # why the watch folder cannot be read, while it cannot
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a backlog is waiting and the worker has room again
        self._backlogged = False
        self._thread: threading.Thread | None = None
        self.counters = {"taken": 0, "processed": 0, "rejected": 0, "move_failures": 0, "retried": 0,
                         "not_regular": 0}

    # ------------------------------------------------------------------ Source
    def start(self, submit: Submit) -> None:
        for folder in (self.directory, self.processed_dir, self.rejected_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._submit = submit
        self._inotify = _inotify.Inotify.create()
        self._thread = threading.Thread(target=self._run, name="medge-watch", daemon=True)
        self._thread.start()
        if self._inotify is not None:
            self._stop_pipe = os.pipe()  # written at stop: the notifier's select returns at once
            self._notifier = threading.Thread(target=self._notify_loop, args=(self._inotify, self._stop_pipe[0]),
                                              name="medge-watch-notify", daemon=True)
            self._notifier.start()
        log.info("watching %s (processed -> %s, rejected -> %s)", self.directory, self.processed_dir, self.rejected_dir)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._notifier is not None:
            os.write(self._stop_pipe[1], b"x")
            self._notifier.join(timeout=5)
            for fd in self._stop_pipe:
                os.close(fd)
            self._notifier = None
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def health(self) -> dict:
        with self._lock:
            return dict(self.counters, in_flight=len(self._in_flight), state="down" if self._down else "watching",
                        last_error=self._down, notifications="inotify" if self._inotify else "polling")

    # ------------------------------------------------------------------ scanning
    def _run(self) -> None:
        initial = True
        while not self._stop.is_set():
            try:
                self.scan(initial=initial)
            except OSError as error:  # the folder vanished or became unreadable: keep trying
                self._folder_down(error)
            else:
                if self._down is not None:
                    self._down = None
                    self.emit("warning", "source_up", f"watch folder {self.directory} can be read again")
            initial = False
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _folder_down(self, error: OSError) -> None:
        """Once per outage: an error event, and `down` in the heartbeat until the folder is back."""
        reason = f"watch folder {self.directory} cannot be read ({error.strerror or error}); waiting for it to come back"
        if self._down is None:
            self.emit("error", "source_down", reason)
        elif self._down != reason:
            log.error("%s", reason)
        self._down = reason
        # A folder that comes back is a new directory: watch it afresh.
        self._watches.clear()
        self._prefixes.clear()

    def _excluded(self) -> set[Path]:
        return {self.processed_dir.resolve(), self.rejected_dir.resolve()}

    def _candidates(self):
        """(relative name, path, stat, why not regular or None) of every non-temporary entry that
        is not a folder, oldest first."""
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
            self._notify_on(prefix, folder)
            with entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if os.path.realpath(entry.path) not in excluded:
                            pending.append((prefix + entry.name + "/", entry.path))
                        continue
                    if entry.name.lower().endswith(TEMPORARY_SUFFIXES):
                        continue
                    try:
                        if entry.is_file():  # follows a link to a regular file, as before
                            found.append((prefix + entry.name, Path(entry.path), entry.stat(), None))
                            continue
                        odd = _not_regular(entry)
                        stat = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if odd == "symbolic link to a folder":
                        self._report_once(prefix + entry.name, odd)
                        continue
                    found.append((prefix + entry.name, Path(entry.path), stat, odd))
        found.sort(key=lambda entry: (entry[2].st_mtime_ns, entry[0]))
        return found

    def _report_once(self, name: str, what: str) -> None:
        if name not in self._odd_reported:
            self._odd_reported.add(name)
            # The name stays local (it may carry a patient's name); the event says what it was.
            log.warning("%s in the watch folder is a %s: not followed, left in place", name, what)
            self.emit("warning", "skipped_input", f"watch folder: an entry is a {what}; it is not followed and "
                                                  "stays where it is (see the device log for its name)")

    # ------------------------------------------------------------------ inotify
    def _notify_on(self, prefix: str, folder: str) -> None:
        if self._inotify is None or folder in self._watches:
            return
        wd = self._inotify.watch(folder)
        if wd is None:  # e.g. fs.inotify.max_user_watches reached: polling alone still works
            log.warning("cannot watch %s with inotify; its files are polled only", folder)
            wd = -1
        self._watches[folder] = wd
        self._prefixes[wd] = prefix

    def _notify_loop(self, notifier: _inotify.Inotify, stop_fd: int) -> None:
        """The one reader of the inotify queue: keeps its events for the next scan, and wakes the
        scan at once when a file was renamed into a watched folder (it can be taken now)."""
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([notifier.fd, stop_fd], [], [])
            except (OSError, ValueError):
                return
            if stop_fd in readable:
                return
            events = notifier.read()
            with self._lock:
                self._events.extend(events)
            if any(mask & _inotify.IN_MOVED_TO for _, mask, _ in events):
                self._wake.set()

    def _take_events(self) -> list[tuple[int, int, str]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def _drain_notifications(self) -> None:
        """Bring `_writing` up to date: modified and not yet closed = still being written."""
        if self._inotify is None:
            return
        for wd, mask, name in self._take_events():
            if mask & _inotify.IN_Q_OVERFLOW:
                self._writing.clear()  # events were lost: stability alone decides until the next ones
                continue
            if mask & _inotify.IN_IGNORED:  # the folder went away: watched again when it is scanned
                self._prefixes.pop(wd, None)
                for folder, known in list(self._watches.items()):
                    if known == wd:
                        del self._watches[folder]
                continue
            prefix = self._prefixes.get(wd)
            if prefix is None or not name or mask & _inotify.IN_ISDIR:
                continue
            if mask & (_inotify.IN_CREATE | _inotify.IN_MODIFY):
                self._writing.add(prefix + name)
                self._moved_in.discard(prefix + name)  # written to after its rename: judged as any file
            if mask & _inotify.IN_CREATE:
                self._in_place.add(prefix + name)  # a writer that closes between chunks looks done
            if mask & _inotify.IN_MOVED_TO:
                self._in_place.discard(prefix + name)  # renamed into place: written completely
                self._moved_in.add(prefix + name)
            if mask & (_inotify.IN_MOVED_FROM | _inotify.IN_DELETE):
                self._moved_in.discard(prefix + name)
            if mask & (_inotify.IN_CLOSE_WRITE | _inotify.IN_MOVED_TO | _inotify.IN_MOVED_FROM | _inotify.IN_DELETE):
                self._writing.discard(prefix + name)

    def scan(self, initial: bool = False) -> int:
        """One pass: submit files that are completely written. Returns how many were submitted."""
        now_mono, now_wall = time.monotonic(), time.time()
        present = set()
        submitted = 0
        self._backlogged = False
        candidates = self._candidates()
        self._drain_notifications()
        # Arrival order: a renamed file never overtakes an older one still waiting to be judged
        # (e.g. one renamed in before the folder was watched); it waits with it instead.
        held = False
        for name, path, stat, odd in candidates:
            present.add(name)
            signature = (stat.st_size, stat.st_mtime_ns)
            with self._lock:
                if name in self._in_flight or name in self._stuck:
                    continue
                previous = self._seen.get(name)
                if odd is None and name in self._moved_in and not held:
                    # Renamed into place and untouched since: complete, taken now; also when a scan
                    # listed it before its event was read (else a later file would overtake it).
                    pass
                elif previous is None or previous[0] != signature:
                    if previous is not None:
                        self._grew.add(name)
                    self._seen[name] = (signature, now_mono)
                    # A backlog file that nobody has touched for stable_s is complete already.
                    if not (initial and now_wall - stat.st_mtime >= self.stable_s):
                        held = True
                        continue
                elif now_mono - previous[1] < self.stable_s:
                    held = True
                    continue
                elif odd is None and name in self._writing and now_mono - previous[1] < self.grace_s:
                    held = True
                    continue  # still open for writing: a slow writer, not a finished file
                if len(self._in_flight) >= self.max_in_flight:
                    self._backlogged = True  # complete, but the worker has enough: taken on a later pass
                    continue
                self._in_flight.add(name)
                self._seen.pop(name, None)
                self._moved_in.discard(name)
                self.counters["taken"] += 1
            self._submit(self._item(name, path, odd))
            submitted += 1
        with self._lock:  # forget files that disappeared before they were stable
            for gone in set(self._seen) - present:
                del self._seen[gone]
            self._grew &= present | self._in_flight
            self._writing &= present | self._in_flight
            self._in_place &= present | self._in_flight
            self._moved_in &= present | self._in_flight
        return submitted

    def _item(self, name: str, path: Path, odd: str | None = None) -> InputItem:
        # The decoder names the real file, so the rejected/ sidecar says which file it was; the
        # worker replaces the name with "input" in what it publishes and stores (scanners often
        # build file names from the patient's name).
        def load():
            if odd is not None:  # never opened: reading a FIFO blocks, /dev/zero never ends
                with self._lock:
                    self.counters["not_regular"] += 1
                raise InputError(f"{name}: not a regular file ({odd}); it was not read")
            try:
                return decode_image(path, name=name, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
            except InputError as error:
                if self._may_still_grow(name, path):
                    raise InputNotReady(str(error)) from None
                raise

        return InputItem(source="watch", ref=name, load=load, done=lambda outcome: self._finish(name, path, outcome),
                         label=name)

    def _may_still_grow(self, name: str, path: Path) -> bool:
        """Seen growing, or written in place (inotify), and changed within grace_s: wait, don't reject."""
        with self._lock:
            watched_growing = name in self._grew or name in self._writing or name in self._in_place
        if not watched_growing:
            return False  # arrived complete (a rename, a backlog file): its decode error is final
        try:
            return time.time() - path.stat().st_mtime < self.grace_s
        except OSError:
            return False

    # ------------------------------------------------------------------ releasing
    def _finish(self, name: str, path: Path, outcome: Outcome) -> bool:
        """Move the file away; False when it could not be (the worker then keeps its ledger entry)."""
        if outcome.retry:  # not complete yet: it stays, and is offered again once stable
            with self._lock:
                self.counters["retried"] += 1
                self._in_flight.discard(name)
                self._grew.add(name)
            log.info("%s does not decode yet and is still changing; offered again later", name)
            return True
        if not os.path.lexists(path):  # gone meanwhile (the folder was deleted): nothing to move
            with self._lock:
                self._in_flight.discard(name)
            return True
        target_root = self.processed_dir if outcome.ok else self.rejected_dir
        try:
            target = _free_name(target_root / name)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not outcome.ok:
                # Sidecar first: a crash in between leaves the file to be released again, never
                # a rejected file without its reason.
                sidecar = target.with_name(_fit(target.name, SIDECAR_SUFFIX))
                temporary = sidecar.with_name(f".medge-{os.getpid()}-{threading.get_ident()}.why.tmp")
                temporary.write_text((outcome.error or "rejected") + "\n")
                os.replace(temporary, sidecar)
            os.replace(path, target)
            if outcome.ok:
                self._attach(target, outcome.attachments)
            counter = "processed" if outcome.ok else "rejected"
            with self._lock:
                self.counters[counter] += 1
                self._in_flight.discard(name)
                self._grew.discard(name)
                self._writing.discard(name)
                self._in_place.discard(name)
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


    @staticmethod
    def _attach(target: Path, attachments: dict[str, bytes]) -> None:
        """Write the outcome's files beside the processed file (processed/NAME.heatmap.png),
        atomically; one that cannot be written is logged, the input stays released."""
        for suffix, data in attachments.items():
            attachment = target.with_name(_fit(target.name, suffix))
            temporary = attachment.with_name(f".medge-{os.getpid()}-{threading.get_ident()}.attach.tmp")
            try:
                temporary.write_bytes(data)
                os.replace(temporary, attachment)
            except OSError as error:
                log.error("cannot write %s: %s", attachment, error)
                with contextlib.suppress(OSError):
                    temporary.unlink()


def _free_name(target: Path) -> Path:
    """`target`, or `stem.2.ext`, ... when a file of that name was processed before."""
    if not os.path.lexists(target):
        return target
    counter = 2
    while True:
        candidate = target.with_name(_fit(target.stem, f".{counter}{target.suffix}"))
        if not os.path.lexists(candidate):
            return candidate
        counter += 1


def _fit(stem: str, suffix: str) -> str:
    """`stem + suffix`, or, when that is longer than a file name may be, the stem cut short
    (at a character boundary) plus `~` and 8 hex digits of the full name's hash: unique, and
    still starting like the file it belongs to."""
    name = stem + suffix
    if len(os.fsencode(name)) <= NAME_MAX:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    room = NAME_MAX - len(os.fsencode(suffix)) - len(digest) - 1
    short = os.fsencode(stem)[:room].decode("utf-8", "ignore")
    return f"{short}~{digest}{suffix}"


def _not_regular(entry: os.DirEntry) -> str:
    """What an entry that is neither a folder nor (a link to) a regular file is, in words."""
    kinds = ((stat_mode.S_ISFIFO, "FIFO"), (stat_mode.S_ISCHR, "character device"),
             (stat_mode.S_ISBLK, "block device"), (stat_mode.S_ISSOCK, "socket"), (stat_mode.S_ISDIR, "folder"))
    if entry.is_symlink():
        try:
            mode = os.stat(entry.path).st_mode
        except OSError:
            return "symbolic link to nothing"
        what = next((word for test, word in kinds if test(mode)), "special file")
        return f"symbolic link to a {what}"
    mode = entry.stat(follow_symlinks=False).st_mode
    return next((word for test, word in kinds if test(mode)), "special file")


# ------------------------------------------------------------------------------ registration


@dataclass
class WatchSettings:
    """[watch] of edge.toml."""

    dir: Path | None = None
    processed_dir: Path | None = None
    rejected_dir: Path | None = None
    stable_s: float = 1.0
    poll_s: float = 0.5
    grace_s: float = 30.0

    @property
    def processed(self) -> Path | None:
        if self.dir is None:
            return None
        return self.processed_dir or self.dir / "processed"

    @property
    def rejected(self) -> Path | None:
        if self.dir is None:
            return None
        return self.rejected_dir or self.dir / "rejected"


def validate_settings(settings: WatchSettings) -> None:
    if settings.stable_s < 0:
        raise ConfigError(f"watch.stable_s: must be >= 0, not {settings.stable_s}")
    if settings.poll_s <= 0:
        raise ConfigError(f"watch.poll_s: must be > 0, not {settings.poll_s}")
    if settings.grace_s < settings.stable_s:
        raise ConfigError(f"watch.grace_s: must be >= watch.stable_s ({settings.stable_s}), not {settings.grace_s}")
    if settings.dir is None and (settings.processed_dir or settings.rejected_dir):
        raise ConfigError("watch.dir: processed_dir/rejected_dir are set but no watch folder")


def build(settings: WatchSettings, config, on_event) -> WatchFolder:
    return WatchFolder(settings.dir, processed_dir=settings.processed, rejected_dir=settings.rejected,
                       stable_s=settings.stable_s, poll_s=settings.poll_s, max_pixels=config.input.max_pixels,
                       max_bytes=config.input.max_file_bytes, grace_s=settings.grace_s,
                       on_event=on_event)


def check(settings: WatchSettings, config) -> CheckResult:
    problems = [problem for problem in map(writable, (settings.dir, settings.processed, settings.rejected)) if problem]
    return CheckResult.of(problems, f"watch {settings.dir}")


SOURCE = SourceType(
    name="watch", settings=WatchSettings, switch="dir", build=build, check=check, validate=validate_settings,
    order=10,
    flags=(
        Flag("dir", ("--watch",), "Scanner export folder to watch."),
        Flag("processed_dir", ("--processed-dir",), "Where classified files go.", default_help="WATCH/processed"),
        Flag("rejected_dir", ("--rejected-dir",), "Where rejected files go, with a .why.txt.",
             default_help="WATCH/rejected"),
        Flag("stable_s", ("--stable-s",), "A file is complete when unchanged this long."),
        Flag("poll_s", ("--poll-s",), "Seconds between folder scans."),
        Flag("grace_s", ("--grace-s",), "A file seen growing that does not decode yet is retried until "
                                        "unchanged this long (and not taken while still open for writing)."),
    ),
)
