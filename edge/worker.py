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
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
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
        self.classifier = classifier
        # Optional hook (edge/pacs): writes and queues SR/SC objects for a DICOM input. Called
        # before the outcome is committed, so they are on disk before the scanner is answered.
        self.dicom_outputs = dicom_outputs
        self.bundle = bundle
        self.outbox = outbox
        self.pseudonymizer = pseudonymizer
        self.config = config
        self.model = model
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
        self.busy = False
        self.busy_since: float | None = None  # monotonic start of the input in progress
        self.progress_at = time.monotonic()  # when an input last finished (stored, or released)
        self._lock = threading.Lock()
        self._open: dict[int, float] = {}  # id(item) -> when it was handed over, until released
        self._problems: dict[str, tuple[str, float]] = {}  # stage -> (reason, failing since)
        self._unforgotten: list[str] = []  # released inputs whose ledger entry is still to delete

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
        batch: list[Pending] = []
        while True:
            # Group commit: inputs that queued up while one was classified share one durable
            # transaction (one fsync), so bursts run at the model's pace, not the disk's.
            if batch and (len(batch) >= MAX_BATCH or self._queue.empty()):
                self._commit_or_keep(batch)
                batch = []
            item = self._queue.get()
            if item is None:
                break
            try:
                suspect = self.guard is not None and self.guard.deaths(self._key(item)) > 0
                if batch and (suspect or not self._has_room(len(batch) + 1)):
                    # A suspect runs alone: its neighbours' outcomes are stored before it is tried.
                    self._commit_or_keep(batch)
                    batch = []
                pending = self._prepare(item)
                if pending is not None:
                    batch.append(pending)
                    if suspect:
                        self._commit_or_keep(batch)
                        batch = []
            except Exception as error:  # the outbox cannot be read (or a bug): tried again later
                log.exception("unexpected failure while processing %s", item.label or item.source)
                self._fail("worker", f"cannot process an input ({type(error).__name__}: {error}); "
                                     "it is tried again every second")
                self._requeue_later(item)
                continue
            self._recover("worker")
        self._commit_or_keep(batch)

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
        started = time.perf_counter()
        self.busy, self.busy_since = True, time.monotonic()
        if self.guard is not None:
            self.guard.begin(key)
        try:
            analysis = analyse(self.classifier, item.load, self.frames_policy, name="input",
                               peek=getattr(item, "peek", None))
            input_ref = self.pseudonymizer.ref(analysis.decoded.sop_instance_uid or item.ref)
            messages = self._results(item, analysis, input_ref, started)
        except InputNotReady as error:  # still being written: nothing stored, offered again
            log.info("%s: not complete yet (%s); offered again later", item.label or item.source, error)
            self._release(item, Outcome(ok=False, error=str(error), retry=True))
            return None
        except MedgeError as error:
            return self._rejection(item, key, self._scrub(str(error), item), local=str(error))
        except Exception as error:
            log.exception("cannot process %s", item.label or item.source)
            return self._rejection(item, key, f"input: cannot be processed ({type(error).__name__})")
        finally:
            if self.guard is not None:
                self.guard.end(key)
            self.busy, self.busy_since = False, None
        to_pacs = self.dicom_outputs is not None and item.dataset is not None
        attachments = self._attachments(item, analysis)
        if to_pacs:
            # SR/SC queued before the scanner is answered. The job carries the reported frame's
            # model input: the PACS writer computes the SC's heatmap from it, off this path.
            model_input = analysis.frames[0].classification.model_input if analysis.frames else None
            self.dicom_outputs(item, analysis.decoded, messages, model_input=model_input)
        ids = [message[0] for message in messages]
        return Pending(item=item, key=key, messages=messages, ok=True, error=None, result_ids=ids,
                       latency_ms=(time.perf_counter() - started) * 1000.0, attachments=attachments)

    def _attachments(self, item: InputItem, analysis: Analysis) -> dict:
        """input.explain: the heatmap overlay PNG to keep beside the processed watch-folder file.
        One that cannot be made costs the input its picture, never its result."""
        if not (analysis.frames and item.source == "watch" and getattr(self.config.input, "explain", False)):
            return {}
        try:
            return {EXPLAIN_SUFFIX: explain_analysis(self.classifier, analysis).png()}
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

    def _results(self, item: InputItem, analysis: Analysis, input_ref: str, started: float) -> list:
        decoded = analysis.decoded
        base = dict(site=self.config.site, device=self.config.device, source=item.source, input_ref=input_ref,
                    model=self.model, modality=decoded.modality, body_part=decoded.body_part,
                    is_dicom=decoded.kind == "dicom")
        if analysis.not_applicable is not None:
            self.stats.not_applicable += 1
            timing = {"decode": analysis.decode_ms, "preprocess": 0.0, "inference": 0.0,
                      "total": (time.perf_counter() - started) * 1000.0}
            payload = result_payload(**base, not_applicable_reason=analysis.not_applicable, timing_ms=timing)
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
