"""The daemon's worker: one input at a time from every source -> decode -> frame policy ->
applicability check -> classify -> payloads durably in the outbox -> release the input.

The order is what makes the daemon lose nothing: an input is released by its source (file
moved, scanner answered) only after its results or its error event are committed to the
outbox together with a ledger entry; a crash between the two is healed on restart by the
ledger, so the input is released with its stored outcome instead of classified again.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .errors import MedgeError
from .outbox import Outbox, StoredOutcome
from .payloads import encode, error_payload, result_payload
from .pseudonym import Pseudonymizer
from .sources.base import InputItem, Outcome

log = logging.getLogger("medge.edge.worker")

LATENCY_WINDOW = 1000  # images over which p50/p95 are reported
MAX_BATCH = 16  # inputs per outbox transaction at most


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
                 model: dict, notify=lambda: None):
        self.classifier = classifier
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
        self.busy = False

    # ------------------------------------------------------------------ lifecycle
    def submit(self, item: InputItem) -> None:
        """Called by sources from their own threads."""
        self._queue.put(item)

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
            self.busy = True
            try:
                if not self.outbox.has_room(len(batch) + 1):
                    self._commit_or_keep(batch)
                    batch = []
                pending = self._prepare(item)
                if pending is not None:
                    batch.append(pending)
            except Exception:  # a bug must not stop the daemon; the input stays with its source
                log.exception("unexpected failure while processing %s", item.label or item.source)
            finally:
                self.busy = False
        self._commit_or_keep(batch)

    def _commit_or_keep(self, batch: list[Pending]) -> None:
        try:
            self._commit(batch)
        except Exception:  # e.g. the disk is full: nothing is released, so nothing is lost
            log.exception("cannot store the outcome of %d input(s); they stay with their sources "
                          "(the watch folder offers them again after a restart)", len(batch))

    # ------------------------------------------------------------------ one input
    def process(self, item: InputItem) -> None:
        """Classify one input, store its outcome durably, release it (no batching)."""
        pending = self._prepare(item)
        if pending is not None:
            self._commit([pending])

    def _prepare(self, item: InputItem) -> Pending | None:
        """Decode and classify; the outcome is not stored yet. None: nothing left to store."""
        key = f"{item.source}:{item.ref}"
        stored = self.outbox.stored_outcome(key)
        if stored is not None:
            log.info("%s: outcome already stored before a restart; releasing it without classifying again",
                     item.label or item.source)
            if self._release(item, Outcome(ok=stored.ok, error=stored.error, result_ids=stored.result_ids)):
                self.outbox.release_inputs([key])
            return None
        if not self._wait_for_room():
            log.warning("%s: left with its source (outbox full at shutdown)", item.label or item.source)
            return None
        started = time.perf_counter()
        try:
            decoded = item.load()
            decode_ms = (time.perf_counter() - started) * 1000.0
            input_ref = self.pseudonymizer.ref(decoded.sop_instance_uid or item.ref)
            messages = self._results(item, decoded, input_ref, decode_ms, started)
        except MedgeError as error:
            return self._rejection(item, key, self._scrub(str(error), item))
        except Exception as error:
            log.exception("cannot process %s", item.label or item.source)
            return self._rejection(item, key, f"input: cannot be processed ({type(error).__name__})")
        ids = [message[0] for message in messages]
        return Pending(item=item, key=key, messages=messages, ok=True, error=None, result_ids=ids,
                       latency_ms=(time.perf_counter() - started) * 1000.0)

    def _commit(self, batch: list[Pending]) -> None:
        """Store the batch's outcomes in one transaction, then let the sources release the inputs."""
        if not batch:
            return
        self.outbox.add_many([(p.messages, p.key, StoredOutcome(ok=p.ok, error=p.error, result_ids=p.result_ids))
                              for p in batch])
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
                    if self._release(pending.item, Outcome(ok=pending.ok, error=pending.error,
                                                           result_ids=pending.result_ids))]
        self.outbox.release_inputs(released)

    def _results(self, item: InputItem, decoded, input_ref: str, decode_ms: float, started: float) -> list:
        count = len(decoded.frames)
        base = dict(site=self.config.site, device=self.config.device, source=item.source, input_ref=input_ref,
                    model=self.model, modality=decoded.modality, body_part=decoded.body_part,
                    is_dicom=decoded.kind == "dicom")
        reason = self.bundle.not_applicable_reason(decoded.modality, decoded.body_part)
        if reason is not None:
            self.stats.not_applicable += 1
            timing = {"decode": decode_ms, "preprocess": 0.0, "inference": 0.0,
                      "total": (time.perf_counter() - started) * 1000.0}
            payload = result_payload(**base, not_applicable_reason=reason, timing_ms=timing)
            return [self._message(payload, "result")]

        policy = self.frames_policy if count > 1 else "first"
        indices = [0] if policy == "first" else list(range(count))
        classified = []
        for index in indices:
            classification = self.classifier.classify(decoded.frames[index])
            classified.append((index, classification))
        if policy == "max":
            negative = self.bundle.classes[0]
            best = max(classified, key=lambda pair: 1.0 - pair[1].probabilities.get(negative, 0.0))
            total_pre = sum(c.timing_ms.get("preprocess", 0.0) for _, c in classified)
            total_inf = sum(c.timing_ms.get("inference", 0.0) for _, c in classified)
            classified = [(best[0], best[1], total_pre, total_inf)]
        else:
            classified = [(i, c, c.timing_ms.get("preprocess", 0.0), c.timing_ms.get("inference", 0.0))
                          for i, c in classified]
        messages = []
        for index, classification, pre_ms, inf_ms in classified:
            timing = {"decode": decode_ms, "preprocess": pre_ms, "inference": inf_ms}
            timing["total"] = (time.perf_counter() - started) * 1000.0 if len(classified) == 1 else decode_ms + pre_ms + inf_ms
            frame = {"policy": policy, "index": index, "count": count} if count > 1 else None
            payload = result_payload(**base, classification=classification, timing_ms=timing, frame=frame)
            messages.append(self._message(payload, "result"))
        return messages

    def _message(self, payload: dict, kind: str) -> tuple[str, str, str, bytes]:
        return payload["id"], kind, self.config.topic(kind), encode(payload)

    # ------------------------------------------------------------------ bad input and release
    def _rejection(self, item: InputItem, key: str, message: str) -> Pending:
        input_ref = self.pseudonymizer.ref(item.ref)
        payload = error_payload(site=self.config.site, device=self.config.device, kind="rejected_input",
                                message=message, source=item.source, input_ref=input_ref)
        log.warning("rejected %s: %s", item.label or item.source, message)
        return Pending(item=item, key=key, messages=[self._message(payload, "error")], ok=False, error=message,
                       result_ids=[], latency_ms=0.0)

    @staticmethod
    def _release(item: InputItem, outcome: Outcome) -> bool:
        """True when the source released the input (`done` returning False means it could not)."""
        try:
            return item.done(outcome) is not False
        except Exception:
            log.exception("source could not release %s", item.label or item.source)
            return False

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
        self.outbox.add([self._message(payload, "error")], force=True)
        log.log(logging.WARNING if level == "warning" else logging.ERROR, message)
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
