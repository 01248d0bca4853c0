"""DICOM Storage SCP: point-of-care scanners push their images here over the network.

The scanner (portable X-ray, ultrasound, CT) opens an association, sends C-STORE requests and
keeps each instance until it gets a Success status back. So the C-STORE handler only answers
Success once the daemon has stored the instance's result durably (`item.done(Outcome(ok=True))`);
anything else (an undecodable or corrupt instance, a full outbox, a daemon too busy to answer in
time) gets a failure status and the scanner keeps the image and can resend it.

Calling AE titles can be restricted to an allow-list: unknown callers are refused at association
time, before a single byte of pixel data is accepted.
"""
from __future__ import annotations

import logging
import threading

from ..errors import ConfigError, InputError
from ..preprocess import DEFAULT_MAX_PIXELS, DecodedImage, decode_dicom_dataset
from .base import EventSink, InputItem, Outcome, Source, Submit

log = logging.getLogger(__name__)

# Storage SOP classes of point-of-care and general imaging modalities (UIDs from PS3.4 B.5).
STORAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "US Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "US Multi-frame Image Storage",
    # Older ultrasound carts still send the retired classes.
    "1.2.840.10008.5.1.4.1.1.6": "US Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "US Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.20": "NM Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit SC Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte SC Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word SC Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color SC Image Storage",
}

# Uncompressed, JPEG (baseline, extended, lossless) and JPEG 2000; pylibjpeg decodes them.
# JPEG Extended is accepted so that a 12-bit instance pylibjpeg cannot decode is rejected with a
# failure status and an error event the operator sees, rather than silently at negotiation.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",         # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",       # Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",    # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",    # JPEG Extended (Process 2 and 4)
    "1.2.840.10008.1.2.4.57",    # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",    # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.90",    # JPEG 2000 (lossless only)
    "1.2.840.10008.1.2.4.91",    # JPEG 2000
]
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

# C-STORE response statuses (PS3.4 Table B.2-1).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # transient: the scanner should retry later
STATUS_CANNOT_UNDERSTAND = 0xC000  # this instance cannot be processed



def validate_ae_title(title: str, key: str) -> str:
    text = str(title).strip()
    if not text or len(text) > 16 or "\\" in text or not text.isascii() or not text.isprintable():
        raise ConfigError(f"{key}: {title!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)")
    return text


class DicomReceiver(Source):
    """A C-STORE/C-ECHO SCP on `host:port` whose instances become daemon `InputItem`s."""

    name = "dicom"

    def __init__(self, port: int, ae_title: str = "MEDGE", allowed_callers=None, host: str = "0.0.0.0",
                 store_timeout: float = 60.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 on_event: EventSink | None = None):
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"dicom.port: {port!r} is not a TCP port (0-65535)")
        self.port = port
        self.host = host
        self.ae_title = validate_ae_title(ae_title, "dicom.ae_title")
        self.allowed_callers = [validate_ae_title(title, "dicom.allowed_callers") for title in (allowed_callers or [])]
        self.store_timeout = store_timeout
        self.max_pixels = max_pixels
        self.on_event = on_event
        self._server = None
        self._closing = False
        self._submit: Submit | None = None
        self._lock = threading.Lock()
        self._counters = {"associations": 0, "refused": 0, "echoes": 0, "received": 0, "stored": 0,
                          "failed": 0, "timeouts": 0}

    # ------------------------------------------------------------------ Source

    def start(self, submit: Submit) -> None:
        from pynetdicom import AE, evt

        # pynetdicom logs every request at INFO, including dataset summaries: keep our logs quiet
        # and free of anything a scanner sends.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self._submit = submit
        self._closing = False
        ae = AE(ae_title=self.ae_title)
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION_SOP_CLASS, TRANSFER_SYNTAXES[:2])
        ae.require_calling_aet = self.allowed_callers
        # A scanner that stalls mid-transfer must not hold a thread forever.
        ae.network_timeout = 120
        ae.dimse_timeout = max(60.0, self.store_timeout + 10.0)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        try:
            self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        except OSError as error:
            raise ConfigError(f"dicom.port: cannot listen on {self.host}:{self.port} ({error.strerror or error})") from None
        self.port = self._server.server_address[1]  # the real port when 0 asked for any free one
        log.info("DICOM receiver %s listening on %s:%d", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        # Instances already handed over are finished by the daemon and answered; any that
        # arrive from now on are refused as "out of resources", so the scanner keeps them.
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()

    def health(self) -> dict:
        with self._lock:
            counters = dict(self._counters)
        return {"listening": self._server is not None, "port": self.port, "ae_title": self.ae_title, **counters}

    # ------------------------------------------------------------------ handlers

    def _count(self, key: str) -> None:
        with self._lock:
            self._counters[key] += 1

    def _on_established(self, event) -> None:
        self._count("associations")

    def _on_rejected(self, event) -> None:
        self._count("refused")
        caller = event.assoc.requestor.ae_title
        why = ("not in dicom.allowed_callers" if self.allowed_callers and caller not in self.allowed_callers
               else "too many simultaneous associations")
        message = f"DICOM receiver refused an association from AE title {caller!r} ({event.assoc.requestor.address}): {why}"
        self.emit("warning", "association_refused", message)

    def _on_echo(self, event) -> int:
        self._count("echoes")
        return STATUS_SUCCESS

    def _on_store(self, event) -> int:
        self._count("received")
        if self._closing:
            self._count("failed")
            return STATUS_OUT_OF_RESOURCES
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        caller = event.assoc.requestor.ae_title
        # The name ends up in error events: a class and a calling device, never a UID or patient tag.
        name = f"DICOM {STORAGE_SOP_CLASSES.get(sop_class, sop_class)} from {caller}"
        ref = str(request.AffectedSOPInstanceUID or "")
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
        except Exception as error:  # a stream pydicom cannot even parse
            dataset, parse_error = None, f"{name}: corrupt DICOM dataset ({_one_line(error)})"
        else:
            parse_error = None

        finished = threading.Event()
        outcome_box: list[Outcome] = []

        def done(outcome: Outcome) -> None:
            outcome_box.append(outcome)
            finished.set()

        item = InputItem(source="dicom", ref=ref or name, label=name, done=done,
                         load=lambda: self._decode(dataset, name, parse_error, str(event.context.transfer_syntax)))
        try:
            self._submit(item)
        except Exception as error:
            self._count("failed")
            log.error("DICOM receiver: could not queue %s: %s", name, error)
            return STATUS_OUT_OF_RESOURCES
        if not finished.wait(self.store_timeout):
            # The result may still be stored later; the scanner resending then only yields a
            # duplicate result for the same pseudonymous reference, never a lost one.
            self._count("timeouts")
            log.warning("DICOM receiver: no stored result for %s within %.0f s; answered 'out of resources'",
                        name, self.store_timeout)
            return STATUS_OUT_OF_RESOURCES
        outcome = outcome_box[0]
        if outcome.ok:
            self._count("stored")
            return STATUS_SUCCESS
        self._count("failed")
        return _failure_status(outcome.error, name)

    def _decode(self, dataset, name: str, parse_error: str | None, syntax: str) -> DecodedImage:
        if parse_error is not None:
            raise InputError(parse_error)
        try:
            decoded = decode_dicom_dataset(dataset, name, max_pixels=self.max_pixels)
        except InputError:
            raise
        except Exception as error:  # network input: pydicom parses lazily, so corruption surfaces here
            raise InputError(f"{name}: corrupt DICOM dataset ({_one_line(error)})") from None
        decoded.info["transfer_syntax"] = syntax
        return decoded


def _one_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _failure_status(error: str | None, name: str):
    """A failure status whose Error Comment (LO, 64 chars) tells the scanner's operator why."""
    from pydicom.dataset import Dataset

    error = error or "not processed"
    if error.startswith(name + ": "):
        error = error[len(name) + 2:]  # the scanner knows what it sent; keep the 64 chars for the reason

    status = Dataset()
    status.Status = STATUS_CANNOT_UNDERSTAND
    # LO: no backslash, no control characters.
    comment = "".join(c if c.isprintable() and c.isascii() and c != "\\" else " " for c in error)
    status.ErrorComment = comment[:64]
    return status
