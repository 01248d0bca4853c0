"""The daemon's worker: one input at a time from every source -> `classify.analyse` (decode,
applicability, classify, frame policy: the same function `medge predict` calls) -> payloads
durably in the outbox -> release the input.

The order is what makes the daemon lose nothing: an input is released by its source (file
moved, scanner answered) only after its results or its error event are committed to the
outbox together with a ledger entry; a crash between the two is healed on restart by the
ledger, so the input is released with its stored outcome instead of classified again.

Nothing stalls silently: a commit that fails (a full disk) is retried, with the inputs kept,
until it succeeds; meanwhile the stage is reported failing (`stage_problems`), which the
daemon turns into a `degraded` status, an error event and a silent watchdog. An input that
was in progress when the process died twice is quarantined (see `quarantine.py`).

Every core: inputs are decoded, preprocessed and classified by a pool of `runtime.workers`
threads (OpenCV and the runtimes release the GIL), each with its own ActiveModel snapshot,
while the worker thread alone admits inputs, runs the observers and the DICOM writers, commits
and releases, in the order the inputs arrived, so the outbox keeps arrival order and every
guarantee above holds as with one thread. An idle worker classifies a lone input on its own
thread (no hand-over): single-input latency is that of the serial loop.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .classify import Analysis, analyse
from .errors import MedgeError
from .explain import SUFFIX as EXPLAIN_SUFFIX
from .explain import explain_analysis
from .outbox import Outbox, StoredOutcome
from .payloads import encode, error_payload, result_payload
from .pseudonym import Pseudonymizer
from .quarantine import CrashGuard
from .sources.base import InputItem, InputNotReady, Outcome

log = logging.getLogger("medge.edge.worker")

LATENCY_WINDOW = 1000  # images over which p50/p95 are reported
MAX_BATCH = 16  # inputs per outbox transaction at most
STORE_RETRY_S = (0.2, 5.0)  # a failing commit is retried from every 0.2 s up to every 5 s
IN_FLIGHT_PER_WORKER = 4  # inputs started ahead per pool thread: a slow one at the head leaves the rest busy
UNCOMMITTED_MAX = 2 * MAX_BATCH  # outcomes waiting for the committer before no new input starts
# An input whose decode + classify takes less than this (a small PNG: ~0.3 ms) costs more in
# hand-overs to a pool thread than it gains: such inputs run on the worker thread itself, as the
# serial loop did (measured: the pool made 64x64 PNGs 0.6-0.8x as fast; BENCHMARKS.md).
INLINE_BELOW_MS = 2.0
_WAKE = object()  # queued by a finished pool task: the worker thread collects it
_ADMITTED = object()  # `_admit`: the input is to be decoded and classified


def default_workers() -> int:
    """The cores this process may run on (the affinity mask; a container's CPU set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class Pending:
    """One input's outcome, ready to be stored."""

    item: InputItem
    key: str  # the outbox ledger key: source and raw reference
    messages: list
    ok: bool
    error: str | None
    result_ids: list[str]
    latency_ms: float
    # The reason as the source shows it locally (the rejected/ sidecar next to the file, the
    # answer to the sending scanner): it may name the file. `error` (event, ledger) never does.
    local_error: str | None = None
    # Device-local files the source keeps beside the input (processed/NAME.heatmap.png).
    attachments: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ActiveModel:
    """The model inputs are classified with: swapped as one reference (`Worker.switch_model`),
    read once per input, so an input is classified, explained and labelled by one model."""

    classifier: object
    bundle: object
    info: dict  # name, version, sha256, format: recorded in every result it produces


@dataclass
class Analysed:
    """One input decoded and classified on a pool thread, its outcome still to be built."""

    item: InputItem
    key: str
    active: ActiveModel
    analysis: Analysis
    messages: list
    started: float  # perf_counter when its decode began
    attachments: dict


@dataclass
class NotReady:
    """The input was not complete yet (InputNotReady): released for a retry, nothing stored."""

    item: InputItem
    error: str


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    processed: int = 0  # inputs classified (or reported not_applicable)
    rejected: int = 0  # bad inputs
    not_applicable: int = 0
    results: int = 0  # result messages stored (several per input with frames="all")
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def latency_ms(self) -> dict:
        values = sorted(self.latencies)
        if not values:
            return {"p50": None, "p95": None}

        def pick(q: float) -> float:
            return round(values[min(len(values) - 1, int(q * len(values)))], 3)

        return {"p50": pick(0.50), "p95": pick(0.95)}


class Worker:
    def __init__(self, *, classifier, bundle, outbox: Outbox, pseudonymizer: Pseudonymizer, config,
                 model: dict, notify=lambda: None, dicom_outputs=None, guard: CrashGuard | None = None,
                 fallback=None):
        """`guard`: the poison-input record (None: no quarantine). `fallback(topic, payload)`
        publishes an event directly when it cannot be stored (the disk it reports is full)."""
        self.active = ActiveModel(classifier=classifier, bundle=bundle, info=model)
        # Called on the worker thread with (item, analysis, active, messages) once an input's
        # results are built, before they are stored: shadow runs and drift counters. One that
        # raises costs nothing but its own observation.
        self.observers: list = []
        # Optional hook (edge/pacs): writes and queues SR/SC objects for a DICOM input. Called
        # before the outcome is committed, so they are on disk before the scanner is answered.
        self.dicom_outputs = dicom_outputs
        self.outbox = outbox
        self.pseudonymizer = pseudonymizer
        self.config = config
        self.notify = notify
        self.frames_policy = config.dicom.frames
        self.stats = Stats()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._full_reported = False
        self._dropped_reported = 0
        self.guard = guard
        self.fallback = fallback
        workers = getattr(getattr(config, "runtime", None), "workers", None)
        self.workers = workers or default_workers()
        self._running: dict[int, float] = {}  # id(item) -> monotonic start, inputs being decoded/classified
        self._commits: queue.SimpleQueue = queue.SimpleQueue()  # outcomes for the committer thread, in order
        self._uncommitted = 0  # outcomes handed to the committer and not yet stored
        self._analyse_ms = 0.0  # running mean of recent inputs' decode + classify time
        self._forget_lock = threading.Lock()
        self.progress_at = time.monotonic()  # when an input last finished (stored, or released)
        self._lock = threading.Lock()
        self._open: dict[int, float] = {}  # id(item) -> when it was handed over, until released
        self._problems: dict[str, tuple[str, float]] = {}  # stage -> (reason, failing since)
        self._unforgotten: list[str] = []  # released inputs whose ledger entry is still to delete

    @property
    def busy(self) -> bool:
        return bool(self._running)

    @property
    def busy_since(self) -> float | None:
        """Monotonic start of the oldest input being decoded or classified (None: none)."""
        with self._lock:
            return min(self._running.values()) if self._running else None

    @property
    def classifier(self):
        return self.active.classifier

    @property
    def bundle(self):
        return self.active.bundle

    @property
    def model(self) -> dict:
        return self.active.info

    def switch_model(self, active: ActiveModel) -> ActiveModel:
        """Make `active` the model for every input not yet started; returns the previous one.
        An input in progress finishes with the model it started with."""
        previous, self.active = self.active, active
        return previous

    # ------------------------------------------------------------------ lifecycle
    def submit(self, item: InputItem) -> None:
        """Called by sources from their own threads."""
        with self._lock:
            self._open[id(item)] = time.monotonic()
        self._queue.put(item)

    def _closed(self, item: InputItem) -> None:
        with self._lock:
            self._open.pop(id(item), None)
            self.progress_at = time.monotonic()

    def open_inputs(self, older_than_s: float = 0.0) -> int:
        """Inputs handed over by their sources and not yet released (older than `older_than_s`)."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for since in self._open.values() if now - since >= older_than_s)

    def oldest_open_s(self) -> float:
        with self._lock:
            return time.monotonic() - min(self._open.values()) if self._open else 0.0

    # ------------------------------------------------------------------ stage health
    def _fail(self, stage: str, reason: str) -> None:
        with self._lock:
            since = self._problems.get(stage, (None, time.monotonic()))[1]
            self._problems[stage] = (reason, since)

    def _recover(self, stage: str) -> None:
        with self._lock:
            self._problems.pop(stage, None)

    @property
    def waiting_for_room(self) -> bool:
        """The outbox holds its maximum of unacknowledged results: inputs wait (backpressure)."""
        return self._full_reported

    def stage_problems(self) -> dict[str, tuple[str, float]]:
        """stage -> (why it fails, monotonic time since when): "store" while the outbox takes no
        commit, "worker" while inputs fail unexpectedly (e.g. the outbox cannot be read); the
        health monitor adds "classify", "publish" and "inputs" from what it observes."""
        with self._lock:
            return dict(self._problems)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="medge-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Finish every input already handed over (sources are stopped first), then return."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medge-decode")
        committer = threading.Thread(target=self._commit_loop, name="medge-commit", daemon=True)
        committer.start()
        window = max(2, IN_FLIGHT_PER_WORKER * self.workers)
        flight: deque = deque()  # started inputs, in arrival order: Futures, or outcomes already known
        waiting: deque = deque()  # taken from the queue, not started yet
        state = {"alone": False, "stopping": False}
        try:
            while not (state["stopping"] and not waiting and not flight):
                entry = self._queue.get()  # finished pool tasks and commits queue _WAKE: never sleeps past them
                while True:
                    if entry is None:
                        state["stopping"] = True
                    elif entry is not _WAKE:
                        waiting.append(entry)
                    if len(waiting) >= window:
                        break
                    try:
                        entry = self._queue.get_nowait()
                    except queue.Empty:
                        break
                self._advance(pool, window, flight, waiting, state)
        finally:
            pool.shutdown(wait=True)
            self._commits.put(None)
            committer.join()

    def _advance(self, pool: ThreadPoolExecutor, window: int, flight: deque, waiting: deque, state: dict) -> None:
        """Start what may start, hand what finished (in arrival order) to the committer; until
        nothing moves. A suspect (in progress at an earlier death) starts only once everything
        before it is stored, and runs alone."""
        while True:
            moved = False
            while (waiting and not state["alone"] and len(flight) < window
                   and self._uncommitted < UNCOMMITTED_MAX):
                item = waiting[0]
                suspect = self.guard is not None and self.guard.deaths(self._key(item)) > 0
                busy = len(flight) + self._uncommitted
                if busy and (suspect or not self._has_room(busy + 1)):
                    break  # its neighbours' outcomes are stored first (a commit queues _WAKE)
                waiting.popleft()
                moved = True
                try:
                    admitted = self._admit(item)
                except Exception as error:  # the outbox cannot be read (or a bug): tried again later
                    self._unexpected(item, error)
                    continue
                if admitted is not _ADMITTED:
                    flight.append(admitted)
                    continue
                state["alone"] = suspect
                idle = not waiting and self._queue.empty()
                if not flight and (idle or self._analyse_ms < INLINE_BELOW_MS):
                    # idle (the serial loop's latency) or small inputs: no hand-over to the pool
                    flight.append(self._analyse(item))
                    break  # collected at once: the next small input runs here too
                else:
                    future = pool.submit(self._analyse, item)
                    future.add_done_callback(lambda _: self._queue.put(_WAKE))
                    flight.append(future)
            while flight and (not isinstance(flight[0], Future) or flight[0].done()):
                head = flight.popleft()
                outcome = head.result() if isinstance(head, Future) else head
                moved = True
                try:
                    pending = self._finish(outcome)
                except Exception as error:
                    self._unexpected(getattr(outcome, "item", None), error)
                    continue
                if pending is not None:
                    with self._lock:
                        self._uncommitted += 1
                    self._commits.put(pending)
            if state["alone"] and not flight and not self._uncommitted:
                state["alone"] = False
                moved = True
            if not moved:
                return

    def _commit_loop(self) -> None:
        """The committer thread: outcomes in arrival order, as many as are waiting (up to
        MAX_BATCH) in one durable transaction (group commit: whatever finished during one fsync
        shares the next), then their inputs released. Decoding never waits for the disk."""
        stopping = False
        while not stopping:
            first = self._commits.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    entry = self._commits.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    stopping = True
                    break
                batch.append(entry)
            self._commit_or_keep(batch)
            with self._lock:
                self._uncommitted -= len(batch)
            self._queue.put(_WAKE)

    def _unexpected(self, item: InputItem | None, error: Exception) -> None:
        label = (item.label or item.source) if item is not None else "an input"
        log.error("unexpected failure while processing %s", label, exc_info=error)
        self._fail("worker", f"cannot process an input ({type(error).__name__}: {error}); "
                             "it is tried again every second")
        if item is not None:
            self._requeue_later(item)

    def _requeue_later(self, item: InputItem, delay_s: float = 1.0) -> None:
        """Try an input again later, without releasing it: its outcome is not stored."""
        if self._stopping.is_set():
            self._closed(item)  # stays with its source (the watch folder offers it after a restart)
            return
        timer = threading.Timer(delay_s, self._queue.put, args=(item,))
        timer.daemon = True
        timer.start()

    def _has_room(self, incoming: int) -> bool:
        try:
            return self.outbox.has_room(incoming)
        except Exception:  # judged again by the commit, which reports the store's failure
            return True

    def _commit_or_keep(self, batch: list[Pending]) -> None:
        """Store the batch, retrying until the outbox takes it (a full disk, a failing device):
        nothing is released before its outcome is stored, and nothing prepared is dropped. At
        shutdown the inputs stay with their sources (the watch folder offers them again)."""
        delay = STORE_RETRY_S[0]
        reported = None
        while True:
            try:
                self._commit(batch)
            except Exception as error:
                reason = f"cannot store results in the outbox ({type(error).__name__}: {error})"
                self._fail("store", reason)
                if reason != reported:
                    log.error("%s; %d input(s) wait, unreleased, and the commit is retried", reason, len(batch))
                    reported = reason
                if self._stopping.is_set():
                    for pending in batch:
                        self._closed(pending.item)
                    return
                self._stopping.wait(delay)
                delay = min(delay * 2, STORE_RETRY_S[1])
                continue
            if reported is not None:
                log.info("the outbox takes commits again: %d waiting input(s) stored", len(batch))
            self._recover("store")
            return

    @staticmethod
    def _key(item: InputItem) -> str:
        return f"{item.source}:{item.ref}"

    # ------------------------------------------------------------------ one input
    def process(self, item: InputItem) -> None:
        """Classify one input, store its outcome durably, release it (no batching)."""
        pending = self._prepare(item)
        if pending is not None:
            self._commit([pending])

    def _prepare(self, item: InputItem) -> Pending | None:
        """Decode and classify; the outcome is not stored yet. None: nothing left to store."""
        admitted = self._admit(item)
        if admitted is not _ADMITTED:
            return admitted
        return self._finish(self._analyse(item))

    def _admit(self, item: InputItem):
        """On the worker thread, before any decoding: an outcome stored before a restart (the
        input is released with it: None), a quarantined input (its rejection), or _ADMITTED."""
        key = self._key(item)
        stored = self.outbox.stored_outcome(key)
        if stored is not None:
            log.info("%s: outcome already stored before a restart; releasing it without classifying again",
                     item.label or item.source)
            if self._release(item, Outcome(ok=stored.ok, error=stored.error, result_ids=stored.result_ids)):
                self._forget([key])
            return None
        if not self._wait_for_room():
            log.warning("%s: left with its source (outbox full at shutdown)", item.label or item.source)
            self._closed(item)
            return None
        if self.guard is not None and self.guard.quarantined(key):
            deaths = self.guard.deaths(key)
            self.guard.end(key)
            return self._rejection(item, key, f"input: quarantined without decoding it again: the daemon died "
                                              f"{deaths} times in a row while processing it (out of memory, "
                                              "or a decoder crash)", kind="poison_input")
        self._recover("worker")
        return _ADMITTED

    def _analyse(self, item: InputItem):
        """On a pool thread (or the idle worker thread): decode and classify with one snapshot of
        the active model. Returns Analysed, NotReady or a rejection Pending; never raises."""
        key = self._key(item)
        started = time.perf_counter()
        with self._lock:
            self._running[id(item)] = time.monotonic()
        if self.guard is not None:
            self.guard.begin(key)
        active = self.active
        try:
            analysis = analyse(active.classifier, item.load, self.frames_policy, name="input",
                               peek=getattr(item, "peek", None))
            input_ref = self.pseudonymizer.ref(analysis.decoded.sop_instance_uid or item.ref)
            messages = self._results(item, analysis, input_ref, started, active)
            attachments = self._attachments(item, analysis, active)
        except InputNotReady as error:  # still being written: nothing stored, offered again
            return NotReady(item=item, error=str(error))
        except MedgeError as error:
            return self._rejection(item, key, self._scrub(str(error), item), local=str(error))
        except Exception as error:
            log.exception("cannot process %s", item.label or item.source)
            return self._rejection(item, key, f"input: cannot be processed ({type(error).__name__})")
        finally:
            if self.guard is not None:
                self.guard.end(key)
            with self._lock:
                self._running.pop(id(item), None)
            self._analyse_ms += 0.2 * ((time.perf_counter() - started) * 1000.0 - self._analyse_ms)
        return Analysed(item=item, key=key, active=active, analysis=analysis, messages=messages,
                        started=started, attachments=attachments)

    def _finish(self, outcome) -> Pending | None:
        """On the worker thread, in arrival order: observers and DICOM writers, then the
        outcome to store (None: nothing to store)."""
        if outcome is None or isinstance(outcome, Pending):
            return outcome
        if isinstance(outcome, NotReady):
            log.info("%s: not complete yet (%s); offered again later", outcome.item.label or outcome.item.source,
                     outcome.error)
            self._release(outcome.item, Outcome(ok=False, error=outcome.error, retry=True))
            return None
        item, analysis, messages = outcome.item, outcome.analysis, outcome.messages
        self._observe(item, analysis, outcome.active, messages)
        if self.dicom_outputs is not None and item.dataset is not None:
            # SR/SC queued before the scanner is answered. The job carries the reported frame's
            # model input: the PACS writer computes the SC's heatmap from it, off this path.
            model_input = analysis.frames[0].classification.model_input if analysis.frames else None
            self.dicom_outputs(item, analysis.decoded, messages, model_input=model_input)
        ids = [message[0] for message in messages]
        return Pending(item=item, key=outcome.key, messages=messages, ok=True, error=None, result_ids=ids,
                       latency_ms=(time.perf_counter() - outcome.started) * 1000.0,
                       attachments=outcome.attachments)

    def _observe(self, item: InputItem, analysis: Analysis, active: ActiveModel, messages: list) -> None:
        for observer in list(self.observers):
            try:
                observer(item, analysis, active, messages)
            except Exception:
                log.exception("observer %r failed on %s", observer, item.label or item.source)

    def _attachments(self, item: InputItem, analysis: Analysis, active: ActiveModel) -> dict:
        """input.explain: the heatmap overlay PNG to keep beside the processed watch-folder file.
        One that cannot be made costs the input its picture, never its result."""
        if not (analysis.frames and item.source == "watch" and getattr(self.config.input, "explain", False)):
            return {}
        try:
            return {EXPLAIN_SUFFIX: explain_analysis(active.classifier, analysis).png()}
        except Exception as error:
            log.warning("%s: no heatmap overlay (%s: %s)", item.label or item.source, type(error).__name__, error)
            return {}

    def _commit(self, batch: list[Pending]) -> None:
        """Store the batch's outcomes in one transaction, then let the sources release the inputs.
        Only the store raises: once it is done, the rest must run once, never be retried."""
        if not batch:
            return
        self.outbox.add_many([(p.messages, p.key, StoredOutcome(ok=p.ok, error=p.error, result_ids=p.result_ids))
                              for p in batch])
        try:
            self._after_commit(batch)
        except Exception:  # a bug here must not make the caller store the batch a second time
            log.exception("after storing %d outcome(s)", len(batch))

    def _after_commit(self, batch: list[Pending]) -> None:
        for pending in batch:
            if pending.ok:
                self.stats.processed += 1
                self.stats.results += len(pending.messages)
                self.stats.latencies.append(pending.latency_ms)
            else:
                self.stats.rejected += 1
        self._report_drops()
        self.notify()
        # A ledger entry is forgotten only once its input is really released: a file that could
        # not be moved is found again after a restart and must get its stored outcome, not new ids.
        released = [pending.key for pending in batch
                    if self._release(pending.item, Outcome(ok=pending.ok, error=pending.local_error or pending.error,
                                                           result_ids=pending.result_ids,
                                                           attachments=pending.attachments))]
        self._forget(released)

    def _forget(self, keys: list[str]) -> None:
        """Drop released inputs from the ledger; on a failing disk, keep trying with later commits
        (a stale entry would hand a new file of the same name an old outcome)."""
        with self._forget_lock:  # the worker thread (stored outcomes) and the committer both forget
            self._unforgotten.extend(keys)
            if not self._unforgotten:
                return
            try:
                self.outbox.release_inputs(self._unforgotten)
            except Exception as error:
                log.warning("cannot forget %d released input(s) in the ledger yet (%s); retried with the next commit",
                            len(self._unforgotten), error)
                return
            self._unforgotten = []

    def _results(self, item: InputItem, analysis: Analysis, input_ref: str, started: float,
                 active: ActiveModel) -> list:
        decoded = analysis.decoded
        base = dict(site=self.config.site, device=self.config.device, source=item.source, input_ref=input_ref,
                    model=active.info, modality=decoded.modality, body_part=decoded.body_part,
                    is_dicom=decoded.kind == "dicom")
        if analysis.not_applicable is not None:
            self.stats.not_applicable += 1
            timing = {"decode": analysis.decode_ms, "preprocess": 0.0, "inference": 0.0,
                      "total": (time.perf_counter() - started) * 1000.0}
            payload = result_payload(**base, not_applicable_reason=analysis.not_applicable, timing_ms=timing,
                                     ood=getattr(analysis, "ood", None))
            return [self._message(payload, "result")]
        if analysis.warnings:
            log.warning("%s: classified, with a warning: %s", item.label or item.source, "; ".join(analysis.warnings))
        count = analysis.frame_count
        messages = []
        for frame in analysis.frames:
            timing = {"decode": analysis.decode_ms, "preprocess": frame.preprocess_ms, "inference": frame.inference_ms}
            timing["total"] = ((time.perf_counter() - started) * 1000.0 if len(analysis.frames) == 1
                               else analysis.decode_ms + frame.preprocess_ms + frame.inference_ms)
            described = {"policy": analysis.policy, "index": frame.index, "count": count} if count > 1 else None
            payload = result_payload(**base, classification=frame.classification, timing_ms=timing, frame=described,
                                     warnings=analysis.warnings or None)
            messages.append(self._message(payload, "result"))
        return messages

    def _message(self, payload: dict, kind: str) -> tuple[str, str, str, bytes]:
        return payload["id"], kind, self.config.topic(kind), encode(payload)

    # ------------------------------------------------------------------ bad input and release
    def _rejection(self, item: InputItem, key: str, message: str, kind: str = "rejected_input",
                   local: str | None = None) -> Pending:
        input_ref = self.pseudonymizer.ref(item.ref)
        payload = error_payload(site=self.config.site, device=self.config.device, kind=kind,
                                message=message, source=item.source, input_ref=input_ref)
        log.warning("rejected %s: %s", item.label or item.source, message)
        return Pending(item=item, key=key, messages=[self._message(payload, "error")], ok=False, error=message,
                       result_ids=[], latency_ms=0.0, local_error=local)

    def _release(self, item: InputItem, outcome: Outcome) -> bool:
        """True when the source released the input (`done` returning False means it could not)."""
        try:
            return item.done(outcome) is not False
        except Exception:
            log.exception("source could not release %s", item.label or item.source)
            return False
        finally:
            self._closed(item)

    @staticmethod
    def _scrub(message: str, item: InputItem) -> str:
        """Error events never name the file or UID (they may carry patient names)."""
        for raw in {item.label, item.ref}:
            if raw and len(raw) > 2:
                message = message.replace(raw, "input")
        return message

    # ------------------------------------------------------------------ the outbox bound
    def event(self, level: str, kind: str, message: str, source: str | None = None) -> None:
        """An error/warning event not tied to one input (a source went down, the outbox filled).
        Stored even when the outbox is full: it may be reporting exactly that."""
        payload = error_payload(site=self.config.site, device=self.config.device, kind=kind,
                                message=message, level="warning" if level == "warning" else "error", source=source)
        log.log(logging.WARNING if level == "warning" else logging.ERROR, message)
        message_row = self._message(payload, "error")
        try:
            self.outbox.add([message_row], force=True)
        except Exception as error:  # the store is what fails (a full disk): say it anyway, undurably
            log.error("cannot store the %s event (%s)%s", kind, error,
                      "; publishing it directly" if self.fallback is not None else "")
            if self.fallback is not None:
                self.fallback(message_row[2], message_row[3])
            return
        self.notify()

    def warn(self, kind: str, message: str) -> None:
        self.event("warning", kind, message)

    def _report_drops(self) -> None:
        dropped = self.outbox.dropped
        if dropped > self._dropped_reported:
            self.warn("outbox_full", f"outbox reached {self.outbox.max_messages} messages: dropped "
                                     f"{dropped - self._dropped_reported} oldest error events to keep results")
            self._dropped_reported = dropped

    def _wait_for_room(self) -> bool:
        """Block while the outbox holds `outbox_max` results: inputs wait at their source."""
        if self.outbox.has_room():
            self._full_reported = False
            return True
        if not self._full_reported:
            self.warn("outbox_full", f"outbox holds {self.outbox.max_messages} unacknowledged results: "
                                     "new inputs wait at their source until the broker takes some")
            self._full_reported = True
        while not self.outbox.has_room():
            if self._stopping.is_set():
                return False
            time.sleep(0.2)
        self._full_reported = False
        return True
