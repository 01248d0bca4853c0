"""The daemon's side of PACS delivery: the worker's hook, a writer thread that turns stored
write jobs into SR and SC objects, and one delivery thread per target that moves them to the PACS.

Ordering is what loses nothing: the hook runs after the input is classified and before its
outcome is committed, and stores the input's write job (header without pixels, display frame,
result payloads) durably, so it is on disk before the scanner is answered; the writer replaces
each job by its objects in one transaction; each target's thread sends what is pending, deletes
only what the PACS confirmed, and while the PACS is down retries with exponential back-off
(retry_min_s doubling up to retry_max_s). UIDs are deterministic (uids.py), so a job written
twice, or an object sent twice, still gives one instance in the PACS.

Events (no identifiers): `pacs_down` once per outage, `pacs_up` with the backlog delivered when
it is back, `pacs_refused` for an object the PACS refused for good, `pacs_unwritable` when an
input's objects cannot be written. Counts go in the heartbeat.
"""
from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading
import time

import numpy as np

from ..errors import ConfigError
from .delivery_queue import DeliveryQueue
from .objects import header_bytes, read_dicom, write_objects
from .reference import reference_dataset
from .secondary_capture import fit_for_capture
from .senders import CStoreSender, PacsUnavailable, StowSender

log = logging.getLogger("medge.edge.pacs")

BATCH = 20  # objects per association / STOW request
REMEMBERED_MODELS = 4  # active + previous + a candidate or two: more only costs memory


def build_delivery(config, bundle, on_event, explainer=None) -> PacsDelivery | None:
    """The configured delivery (None when neither pacs.cstore nor pacs.stow is set); `explainer`
    (model input -> heatmap) makes the SC show where the model looked."""
    settings = config.pacs
    senders = []
    if settings.cstore:
        senders.append(CStoreSender(settings.cstore, calling_ae=settings.calling_ae or config.dicom.ae_title,
                                    timeout_s=settings.timeout_s))
    if settings.stow:
        senders.append(StowSender(settings.stow, timeout_s=settings.timeout_s))
    if not senders:
        return None
    preload(stow=bool(settings.stow))
    return PacsDelivery(senders, DeliveryQueue(config.state_dir / "pacs.sqlite3"), finding=finding_of(bundle),
                        device=config.device, kinds=settings.outputs, retry_min_s=settings.retry_min_s,
                        retry_max_s=settings.retry_max_s, on_event=on_event, explainer=explainer)


def finding_of(bundle) -> str:
    """The condition the SR/SC report on: the bundle's positive class (the last class if none)."""
    return bundle.positive_class or bundle.classes[-1]


def preload(stow: bool = False) -> None:
    """Import the DICOM stack on the calling (main) thread, before any thread starts: pydicom's
    first import is not safe to race (two threads importing it at once can each see the other's
    half-initialised module: "cannot import name 'UID' from partially initialized module"), and
    after a restart the writer, the senders and the DICOM receiver all start with work to do."""
    try:
        import highdicom.sc  # noqa: F401
        import highdicom.sr  # noqa: F401
        import pydicom.pixels  # noqa: F401
        import pynetdicom  # noqa: F401

        if stow:
            import dicomweb_client  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"pacs.{'stow' if stow else 'cstore'}: sending results to a PACS needs "
                          f"{error.name or error} (pip install 'medge[dicom]')") from None


def encode_frame(pixels: np.ndarray, model_input: np.ndarray | None = None) -> bytes:
    """The SC's display frame, downscaled, as .npy bytes: no compression, which would cost the
    scanner more time than the few hundred kB it saves on the disk. With the model input the
    frame was classified from (28x28 floats by default; the writer computes the SC's heatmap from
    it, off the scanner's path), both go in one uncompressed .npz."""
    buffer = io.BytesIO()
    frame = np.ascontiguousarray(fit_for_capture(pixels))
    if model_input is None:
        np.save(buffer, frame, allow_pickle=False)
    else:
        np.savez(buffer, frame=frame, model_input=np.asarray(model_input, dtype=np.float32))
    return buffer.getvalue()


def decode_frame(data: bytes) -> np.ndarray:
    return decode_job_pixels(data)[0]


def decode_job_pixels(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """A stored job's (display frame, model input or None): .npy (frame only) or .npz (both)."""
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    model_input = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            frame, model_input = loaded["frame"], loaded["model_input"]
        if model_input.ndim != 3 or not np.all(np.isfinite(model_input)):
            raise ValueError("the stored model input is not a finite (H, W, C) array")
    else:
        frame = loaded
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        raise ValueError("the stored display frame is not 8-bit pixels")
    return frame, model_input


class PacsDelivery:
    def __init__(self, senders, queue: DeliveryQueue, *, finding: str, device: str, kinds=("sr", "sc"),
                 retry_min_s: float = 1.0, retry_max_s: float = 60.0, on_event=None, explainer=None):
        """`explainer(classifier, model_input) -> heatmap` (the daemon's: edge/explain.py); None:
        SCs without heatmap. `finding`: for a job whose model is not remembered (see `remember`)."""
        self.senders = list(senders)
        self.explainer = explainer
        self.queue = queue
        self.finding = finding
        # The models results came from, by model sha256 (what each stored job's payloads name): a
        # job is written after the input, maybe after a fleet switch, so its finding and heatmap
        # must come from the model that classified it, not from the one active at writing time.
        self._models: dict[str, tuple[str, object]] = {}
        self.device = device
        self.kinds = tuple(kinds)
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.on_event = on_event or (lambda level, kind, message, source=None: log.warning(message))
        self._wake = {sender.name: threading.Event() for sender in self.senders}
        self._jobs_waiting = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.stats = {"written": 0, "delivered": 0, "refused": 0, "retries": 0, "unwritable": 0}

    # ------------------------------------------------------------------ the worker's hooks
    def remember(self, active) -> None:
        """Know `active` (worker.ActiveModel) by its sha256: the daemon's start-up model, and
        every model an input ran on (`observe`, a worker observer). The last few only."""
        sha = str(active.info.get("sha256") or "")
        with self._lock:
            if sha in self._models:
                return
            self._models[sha] = (finding_of(active.bundle), active.classifier)
            while len(self._models) > REMEMBERED_MODELS:
                del self._models[next(iter(self._models))]

    def observe(self, item, analysis, active, messages) -> None:
        if getattr(item, "dataset", None) is not None:
            self.remember(active)

    def model_of(self, payloads: list[dict]) -> tuple[str, object | None]:
        """(finding, classifier or None) of the model a job's results name."""
        sha = str((payloads[0].get("model") or {}).get("sha256") or "") if payloads else ""
        with self._lock:
            return self._models.get(sha, (self.finding, None))

    def __call__(self, item, decoded, messages, model_input: np.ndarray | None = None) -> None:
        """Durably store the write job of one classified DICOM input (`item.dataset`), with the
        model input of its reported frame, from which the writer computes the SC's heatmap.

        Raises only when the queue cannot store it (disk full): the input then stays with its
        source, unanswered, as an outbox failure would. An input whose job cannot even be made
        (no SOP Instance UID) gets a `pacs_unwritable` event; its result still goes out."""
        source = getattr(item, "dataset", None)
        if source is None:
            return
        payloads = [json.loads(payload) for _, kind, _, payload in messages if kind == "result"]
        if not payloads:
            return
        try:
            reference = reference_dataset(source)
            index = (payloads[0].get("frame") or {}).get("index") or 0
            frames = decoded.frames or []  # none when judged out of scope from the header alone
            pixels = encode_frame(frames[min(index, len(frames) - 1)], model_input) if frames else b""
            job = (f"{reference.SOPInstanceUID}:{payloads[0]['model']['sha256']}", header_bytes(reference),
                   pixels, json.dumps(payloads))
        except Exception as error:  # the class name only: messages may quote patient attributes
            self._unwritable(error)
            return
        try:
            self.queue.add_job(*job)
        except sqlite3.Error as error:
            raise OSError(f"PACS queue: cannot store a write job ({error})") from None
        self._jobs_waiting.set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._spawn(self._write_jobs, "medge-pacs-writer")
        for sender in self.senders:
            self._spawn(lambda sender=sender: self._deliver(sender), f"medge-pacs-{sender.kind}")

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop writing and sending; what is not confirmed stays queued for the next start."""
        self._stopping.set()
        self._jobs_waiting.set()
        for event in self._wake.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout)
        if not any(thread.is_alive() for thread in self._threads):
            self.queue.close()
        # else a sender is still inside a PACS call (up to pacs.timeout_s): closing the queue under
        # it would fail its confirmation; the process exit closes it, SQLite's WAL keeps it whole.

    def counters(self) -> dict:
        """For the heartbeat: objects waiting to be written or for a PACS, and totals since start."""
        with self._lock:
            stats = dict(self.stats)
        return {"pacs_writing": self.queue.job_count(), "pacs_queued": self.queue.count("pending"),
                "pacs_delivered": stats["delivered"], "pacs_refused": stats["refused"],
                "pacs_retries": stats["retries"], "pacs_unwritable": stats["unwritable"]}

    # ------------------------------------------------------------------ the writer
    def _write_jobs(self) -> None:
        targets = [sender.name for sender in self.senders]
        while not self._stopping.is_set():
            jobs = self._read(self.queue.jobs)
            if not jobs:
                self._jobs_waiting.wait(1.0)
                self._jobs_waiting.clear()
                continue
            for job in jobs:
                if self._stopping.is_set():
                    return
                try:
                    frame, model_input = decode_job_pixels(job.pixels) if job.pixels else (None, None)
                    payloads = json.loads(job.payloads)
                    finding, classifier = self.model_of(payloads)
                    heatmap = self._heatmap(classifier, model_input)
                    objects = write_objects(read_dicom(job.header), [] if frame is None else [frame],
                                            payloads, finding, self.device, self.kinds, heatmap=heatmap)
                except Exception as error:
                    self.queue.job_failed(job.seq, type(error).__name__)
                    self._unwritable(error)
                    continue
                try:
                    self.queue.job_done(job.seq, objects, targets)
                except sqlite3.Error as error:  # e.g. a full disk: the job stays, tried again
                    log.error("PACS queue: cannot store written objects (%s); retrying", error)
                    self._stopping.wait(self.retry_min_s)
                    break
                self._count("written", len(objects))
                for event in self._wake.values():
                    event.set()

    def _heatmap(self, classifier, model_input: np.ndarray | None) -> np.ndarray | None:
        """The SC's heatmap (edge/explain.py), computed here rather than while the scanner waits.
        One that cannot be made costs the SC its overlay, never the objects; so does a job whose
        model is no longer known (queued before a restart and a switch): another model's map
        would show where a model that did not decide looked."""
        if model_input is None or classifier is None or self.explainer is None or "sc" not in self.kinds:
            return None
        try:
            return self.explainer(classifier, model_input)
        except Exception as error:  # the class name only: nothing about the patient
            log.warning("PACS writer: SC without heatmap (%s)", type(error).__name__)
            return None

    def _unwritable(self, error: Exception) -> None:
        self._count("unwritable")
        self._event("error", "pacs_unwritable", f"PACS: cannot write the SR/SC for a DICOM input "
                                                f"({type(error).__name__}); its result is published as usual")

    # ------------------------------------------------------------------ one target
    def _deliver(self, sender) -> None:
        delay = self.retry_min_s
        down_since: float | None = None
        backlog = 0
        wake = self._wake[sender.name]
        while not self._stopping.is_set():
            batch = self._read(lambda: self.queue.pending(sender.name, BATCH))
            if not batch:
                wake.wait(1.0)
                wake.clear()
                continue
            try:
                answers = sender.send(batch)
            except PacsUnavailable as error:
                self.queue.failed([d.seq for d in batch], str(error))
                self._count("retries")
                if down_since is None:
                    down_since = time.monotonic()
                    backlog = 0
                    self._event("warning", "pacs_down", f"{error}: {self.queue.count('pending', sender.name)} "
                                                        f"object(s) kept, retrying with back-off")
                self._stopping.wait(delay)
                delay = min(self.retry_max_s, delay * 2)
                continue
            except Exception as error:  # a bug or an unexpected reply: retried like an outage, never dropped
                log.error("PACS delivery to %s failed unexpectedly (%s); retrying", sender.name, type(error).__name__)
                self._count("retries")
                self._stopping.wait(delay)
                delay = min(self.retry_max_s, delay * 2)
                continue
            delay = self.retry_min_s
            stored = [seq for seq, refusal in answers.items() if refusal is None]
            self.queue.delivered(stored)
            self._count("delivered", len(stored))
            backlog += len(stored)
            for seq, refusal in answers.items():
                if refusal is not None:
                    self.queue.refused(seq, refusal)
                    self._count("refused")
                    self._event("error", "pacs_refused", f"{refusal}; kept in the PACS queue, not retried")
            if down_since is not None and not self.queue.count("pending", sender.name):
                self._event("warning", "pacs_up", f"{sender.name}: reachable again after "
                                                  f"{time.monotonic() - down_since:.0f} s; {backlog} queued "
                                                  "object(s) delivered")
                down_since = None

    def _read(self, query):
        """A queue read that fails (disk error) waits and says so, instead of ending the thread."""
        try:
            return query()
        except sqlite3.Error as error:
            log.error("PACS queue: cannot read (%s); retrying", error)
            self._stopping.wait(self.retry_max_s)
            return []

    def _count(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self.stats[key] += amount

    def _event(self, level: str, kind: str, message: str) -> None:
        try:
            self.on_event(level, kind, message, source="pacs")
        except Exception:
            log.exception("PACS: could not report %s", kind)
