"""DICOM Storage SCP: point-of-care scanners push their images here over the network.

The scanner (portable X-ray, ultrasound, CT) opens an association, sends C-STORE requests and
keeps each instance until it gets a Success status back. So the C-STORE handler only answers
Success once the daemon has stored the instance's result durably (`item.done(Outcome(ok=True))`);
anything else (an undecodable or corrupt instance, a full outbox, a daemon too busy to answer in
time) gets a failure status and the scanner keeps the image and can resend it.

Who may send is decided at association time, before a byte of pixel data is accepted: the
called AE title must be ours (`require_called_ae`), the calling AE title must be in
`allowed_callers` (optionally pinned to source addresses, `CT1@10.0.0.5`, since any sender
can claim any AE title), and at most `max_associations` run at once. Every refusal is an
`association_refused` event. With `tls_cert_file`/`tls_key_file` the receiver speaks DICOM
TLS only; with `tls_ca_file` too, a sender needs a client certificate signed by that CA.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..checks import CheckResult
from ..classify import FRAME_POLICIES  # the frame policies live with the decision rule that picks frames
from ..errors import ConfigError, InputError
from ..preprocess import DEFAULT_MAX_PIXELS, DecodedImage, decode_dicom_dataset
from .base import EventSink, Flag, InputItem, Outcome, Source, SourceType, Submit

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

# Uncompressed (both byte orders, deflated), RLE, JPEG (baseline, extended, lossless), JPEG-LS
# and JPEG 2000: pydicom decodes the uncompressed, deflated and RLE ones itself, pylibjpeg the
# rest (libjpeg: JPEG and JPEG-LS, OpenJPEG: JPEG 2000). JPEG Extended is accepted so that a
# 12-bit instance pylibjpeg cannot decode is rejected with a failure status and an error event
# the operator sees, rather than silently at negotiation.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",         # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",       # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",       # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.1.99",    # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",       # RLE Lossless (common from ultrasound carts)
    "1.2.840.10008.1.2.4.50",    # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",    # JPEG Extended (Process 2 and 4)
    "1.2.840.10008.1.2.4.57",    # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",    # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",    # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",    # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",    # JPEG 2000 (lossless only)
    "1.2.840.10008.1.2.4.91",    # JPEG 2000
]
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

# C-STORE response statuses (PS3.4 Table B.2-1).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # transient: the scanner should retry later
STATUS_CANNOT_UNDERSTAND = 0xC000  # this instance cannot be processed
ERROR_COMMENT_LENGTH = 64  # (0000,0902) is LO

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service user, called AE title not recognised
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, presentation, local limit exceeded (pynetdicom's)
EVENT_REPEAT_S = 60.0  # the same refusal is reported once a minute, with a count, not per attempt


@dataclass
class DicomSettings:
    """[dicom] of edge.toml."""

    port: int | None = None
    bind: str = "0.0.0.0"
    ae_title: str = "MEDGE"
    require_called_ae: bool = True
    allowed_callers: list[str] = field(default_factory=list)
    max_associations: int = 10
    store_timeout_s: float = 60.0
    frames: str = "first"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None



@dataclass(frozen=True)
class AllowedCaller:
    """One `allowed_callers` entry: "AE" (from anywhere) or "AE@address" (address or network)."""

    ae_title: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    @classmethod
    def parse(cls, entry: str) -> AllowedCaller:
        title, at, address = str(entry).strip().rpartition("@") if "@" in str(entry) else (str(entry), "", "")
        title = validate_ae_title(title, "dicom.allowed_callers")
        if not at:
            return cls(title)
        try:
            network = ipaddress.ip_network(address.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"dicom.allowed_callers: {entry!r}: {address!r} is not an IP address or network "
                              "(host names are not accepted: they can be spoofed too)") from None
        return cls(title, network)

    def admits(self, address: str) -> bool:
        if self.network is None:
            return True
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return peer.version == self.network.version and peer in self.network

    def __str__(self) -> str:
        return self.ae_title if self.network is None else f"{self.ae_title}@{self.network}"


def validate_ae_title(title: str, key: str) -> str:
    text = str(title).strip()
    if not text or len(text) > 16 or "\\" in text or not text.isascii() or not text.isprintable():
        raise ConfigError(f"{key}: {title!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)")
    return text


def validate_port(port) -> int:
    """The one bound for dicom.port, for the config and the receiver alike."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"dicom.port: {port!r} is not a TCP port (1-65535)")
    return port


def validate_settings(settings: DicomSettings) -> None:
    if settings.port is not None:
        validate_port(settings.port)
    try:
        socket.getaddrinfo(settings.bind, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        raise ConfigError(f"dicom.bind: {settings.bind!r} is not an IP address of this device "
                          "(0.0.0.0 or :: for all, 127.0.0.1 for this machine only)") from None
    validate_ae_title(settings.ae_title, "dicom.ae_title")
    for entry in settings.allowed_callers:
        AllowedCaller.parse(entry)
    if settings.max_associations < 1:
        raise ConfigError(f"dicom.max_associations: must be >= 1, not {settings.max_associations}")
    if settings.store_timeout_s <= 0:
        raise ConfigError(f"dicom.store_timeout_s: must be > 0, not {settings.store_timeout_s}")
    if settings.frames not in FRAME_POLICIES:
        raise ConfigError(f"dicom.frames: {settings.frames!r} must be one of {', '.join(FRAME_POLICIES)}")
    for key in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        path = getattr(settings, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"dicom.{key}: {path} does not exist")
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ConfigError("dicom.tls_cert_file: DICOM TLS needs both tls_cert_file and tls_key_file")
    if settings.tls_ca_file is not None and settings.tls_cert_file is None:
        raise ConfigError("dicom.tls_ca_file: client certificates can only be checked with TLS on "
                          "(set tls_cert_file and tls_key_file)")


def tls_context(settings: DicomSettings) -> ssl.SSLContext | None:
    """The server context for DICOM TLS (PS3.15 B.9: TLS 1.2 or later), or None without TLS."""
    if settings.tls_cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
        if settings.tls_ca_file is not None:
            context.load_verify_locations(cafile=str(settings.tls_ca_file))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"dicom.tls_cert_file: cannot use {settings.tls_cert_file} / {settings.tls_key_file}"
                          f"{' / ' + str(settings.tls_ca_file) if settings.tls_ca_file else ''} ({error})") from None
    return context


class DicomReceiver(Source):
    """A C-STORE/C-ECHO SCP on `bind:port` whose instances become daemon `InputItem`s."""

    name = "dicom"

    def __init__(self, settings: DicomSettings, max_pixels: int = DEFAULT_MAX_PIXELS,
                 on_event: EventSink | None = None):
        if settings.port is None:
            raise ConfigError("dicom.port: the DICOM receiver needs a port")
        validate_settings(settings)  # the same checks as the config's: one bound, one place
        self.settings = settings
        self.port = settings.port
        self.host = settings.bind
        self.ae_title = validate_ae_title(settings.ae_title, "dicom.ae_title")
        self.allowed_callers = [AllowedCaller.parse(entry) for entry in settings.allowed_callers]
        self.store_timeout = settings.store_timeout_s
        self.max_pixels = max_pixels
        self.on_event = on_event
        self._tls = tls_context(settings)
        self._server = None
        self._closing = False
        self._submit: Submit | None = None
        self._lock = threading.Lock()
        self._instances = 0
        self._reported: dict[str, tuple[float, int]] = {}  # refusal kind -> (last event time, suppressed)
        self._counters = {"associations": 0, "refused": 0, "refused_caller": 0, "refused_called_ae": 0,
                          "refused_busy": 0, "tls_failures": 0, "echoes": 0, "received": 0, "stored": 0,
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
        ae.add_supported_context(VERIFICATION_SOP_CLASS, TRANSFER_SYNTAXES[:3])
        # Caller and called AE titles are checked in _on_requested (with the source address and
        # a precise event); pynetdicom's own checks stay off so that no refusal goes unreported.
        ae.require_calling_aet = []
        ae.require_called_aet = False
        ae.maximum_associations = self.settings.max_associations
        # A scanner that stalls mid-transfer must not hold a thread forever.
        ae.network_timeout = 120
        ae.dimse_timeout = max(60.0, self.store_timeout + 10.0)
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        try:
            self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers,
                                           ssl_context=self._tls)
        except OSError as error:
            raise ConfigError(f"dicom.port: cannot listen on {self.host}:{self.port} ({error.strerror or error})") from None
        if self._tls is not None:
            self._report_tls_failures(self._server)
        self.port = self._server.server_address[1]
        log.info("DICOM receiver %s listening on %s:%d%s (at most %d associations)", self.ae_title, self.host,
                 self.port, " with TLS" if self._tls else "", self.settings.max_associations)

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
        return {"listening": self._server is not None, "port": self.port, "bind": self.host,
                "ae_title": self.ae_title, "tls": self._tls is not None,
                "max_associations": self.settings.max_associations, **counters}

    # ------------------------------------------------------------------ association control

    def _count(self, key: str) -> None:
        with self._lock:
            self._counters[key] += 1

    def _refusal(self, kind: str, message: str) -> None:
        """One association_refused event per kind of refusal and minute, with what was suppressed."""
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._reported.get(kind, (None, 0))
            if last is not None and now - last < EVENT_REPEAT_S:
                self._reported[kind] = (last, suppressed + 1)
                return
            self._reported[kind] = (now, 0)
        if suppressed:
            message += f" ({suppressed} more refused like this in the last minute)"
        self.emit("warning", "association_refused", message)

    def _on_requested(self, event) -> None:
        """A-ASSOCIATE-RQ received: refuse a wrong called AE title or a caller not allowed."""
        request = event.assoc.requestor.primitive
        caller = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        address = str(event.assoc.requestor.address)
        why = None
        if self.settings.require_called_ae and called != self.ae_title:
            reject, counter, kind = REJECT_CALLED_AE, "refused_called_ae", "called_ae"
            why = (f"it called AE title {called!r}, not this receiver's {self.ae_title!r} "
                   "(dicom.require_called_ae)")
        elif self.allowed_callers:
            entries = [entry for entry in self.allowed_callers if entry.ae_title == caller]
            reject, counter, kind = REJECT_CALLING_AE, "refused_caller", f"caller:{caller}"
            if not entries:
                why = "not in dicom.allowed_callers"
            elif not any(entry.admits(address) for entry in entries):
                why = (f"dicom.allowed_callers admits it only from "
                       f"{', '.join(str(entry.network) for entry in entries)}")
        if why is None:
            return
        with self._lock:
            self._counters["refused"] += 1
            self._counters[counter] += 1
        self._refusal(kind, f"DICOM receiver refused an association from AE title {caller!r} ({address}): {why}")
        event.assoc.acse.send_reject(*reject)
        # As pynetdicom does after its own rejections: wait until the A-ASSOCIATE-RJ is sent
        # (otherwise the socket is closed first and the sender sees an abort, not the reason).
        event.assoc.kill()

    def _on_rejected(self, event) -> None:
        """pynetdicom's own refusals: today only the association limit."""
        primitive = event.assoc.acceptor.primitive
        rsd = (getattr(primitive, "result", None), getattr(primitive, "result_source", None),
               getattr(primitive, "diagnostic", None))
        caller = str(event.assoc.requestor.ae_title).strip()
        with self._lock:
            self._counters["refused"] += 1
            if rsd == REJECT_LOCAL_LIMIT:
                self._counters["refused_busy"] += 1
        if rsd == REJECT_LOCAL_LIMIT:
            why = (f"too many simultaneous associations (dicom.max_associations = {self.settings.max_associations}); "
                   "the sender should retry")
            kind = "busy"
        else:
            why, kind = f"rejected (result {rsd[0]}, source {rsd[1]}, reason {rsd[2]})", f"other:{rsd}"
        self._refusal(kind, f"DICOM receiver refused an association from AE title {caller!r} "
                            f"({event.assoc.requestor.address}): {why}")

    def _report_tls_failures(self, server) -> None:
        """The handshake runs in pynetdicom's accept loop, which drops a failed one silently."""
        accept = server.get_request

        def get_request():
            try:
                return accept()
            except ssl.SSLError as error:
                self._count("tls_failures")
                self._refusal("tls", f"DICOM receiver refused a connection: TLS handshake failed ({error.reason or error})")
                raise

        server.get_request = get_request

    def _on_established(self, event) -> None:
        self._count("associations")

    def _on_echo(self, event) -> int:
        self._count("echoes")
        return STATUS_SUCCESS

    # ------------------------------------------------------------------ storage

    def _on_store(self, event) -> int:
        self._count("received")
        if self._closing:
            self._count("failed")
            return STATUS_OUT_OF_RESOURCES
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        caller = str(event.assoc.requestor.ae_title).strip()
        # The name is published in error events (docs/sources.md): a SOP class and a calling
        # device, never a UID or a patient tag.
        name = f"DICOM {STORAGE_SOP_CLASSES.get(sop_class, sop_class)} from {caller}"
        ref = str(request.AffectedSOPInstanceUID or "")
        syntax = str(event.context.transfer_syntax)
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

        with self._lock:
            self._instances += 1
            number = self._instances
        # The label differs from `name` on purpose: the worker scrubs the label from published
        # messages (it is a file name for the watch folder), and `name` must stay in them.
        item = InputItem(source="dicom", ref=ref or f"{name} #{number}", label=f"{name} (#{number})", done=done,
                         load=lambda: self._decode(dataset, name, parse_error, syntax),
                         peek=lambda: _header(dataset, syntax), dataset=dataset)
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
        if outcome.retry:
            return STATUS_OUT_OF_RESOURCES
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


def _header(dataset, syntax: str) -> DecodedImage | None:
    """Modality, body part and SOP Instance UID, without touching the pixel data."""
    if dataset is None:
        return None
    try:
        def text(keyword):
            value = dataset.get(keyword)
            return str(value).strip() or None if value is not None else None

        return DecodedImage(frames=[], kind="dicom", modality=text("Modality"), body_part=text("BodyPartExamined"),
                            sop_instance_uid=text("SOPInstanceUID"), info={"transfer_syntax": syntax})
    except Exception:  # a header pydicom cannot parse: the full decode reports it
        return None


def _one_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _failure_status(error: str | None, name: str):
    """A failure status whose Error Comment (LO, 64 characters) starts with the reason: the
    scanner knows what it sent, so neither the instance's name nor "input:" is spent on it."""
    from pydicom.dataset import Dataset

    reason = error or "not processed"
    for prefix in (name + ": ", "input: "):
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
    status = Dataset()
    status.Status = STATUS_CANNOT_UNDERSTAND
    # LO: no backslash, no control characters.
    comment = "".join(c if c.isprintable() and c.isascii() and c != "\\" else " " for c in reason)
    status.ErrorComment = comment[:ERROR_COMMENT_LENGTH].rstrip()
    return status


# ------------------------------------------------------------------------------ registration


def build(settings: DicomSettings, config, on_event) -> DicomReceiver:
    return DicomReceiver(settings, max_pixels=config.input.max_pixels, on_event=on_event)


def check(settings: DicomSettings, config) -> CheckResult:
    """The port is free on the bind address, and the TLS files load."""
    problems = []
    try:
        tls_context(settings)
    except ConfigError as error:
        problems.append(str(error))
    family = socket.AF_INET6 if ":" in settings.bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.bind, settings.port))
        except OSError as error:
            problems.append(f"dicom.port {settings.port} is not free on {settings.bind} ({error.strerror or error})")
    callers = ", ".join(settings.allowed_callers) or "anyone"
    return CheckResult.of(problems, f"dicom {settings.ae_title} on {settings.bind}:{settings.port}"
                                    f"{' (TLS)' if settings.tls_cert_file else ''}, callers: {callers}")


SOURCE = SourceType(
    name="dicom", settings=DicomSettings, switch="port", build=build, check=check, validate=validate_settings,
    requires=("pydicom", "pynetdicom"), extra="dicom", order=20,
    flags=(
        Flag("port", ("--dicom-port",), "Run a DICOM C-STORE receiver on this port."),
        Flag("bind", ("--dicom-bind",), "Address the receiver listens on (127.0.0.1: this machine only)."),
        Flag("ae_title", ("--ae-title",), "The receiver's AE title."),
        Flag("require_called_ae", ("--require-called-ae/--any-called-ae",),
             "Refuse associations that call another AE title."),
        Flag("allowed_callers", ("--allowed-caller", "--allowed-callers"),
             "Calling AE title allowed to send, optionally pinned to an address: CT1 or CT1@10.0.0.5 "
             "(repeatable, or a comma list).", default_help="anyone", multiple=True),
        Flag("max_associations", ("--max-associations",), "Simultaneous associations; more are refused."),
        Flag("store_timeout_s", ("--store-timeout-s",), "Seconds a C-STORE waits for its stored result."),
        Flag("frames", ("--frames",), "Multi-frame policy.", choices=FRAME_POLICIES),
        Flag("tls_cert_file", ("--dicom-tls-cert",), "DICOM TLS: the receiver's certificate (PEM)."),
        Flag("tls_key_file", ("--dicom-tls-key",), "DICOM TLS: its private key (PEM)."),
        Flag("tls_ca_file", ("--dicom-tls-ca",), "DICOM TLS: CA that signs the senders' client certificates."),
    ),
)
