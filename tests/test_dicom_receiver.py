"""The DICOM receiver on its own, against dcmtk's storescu/echoscu in a separate process.

The daemon is replaced by the smallest thing that plays its part: a worker thread that decodes
each submitted instance with the real shared decode (`InputItem.load`) and answers `done`.
The receiver's whole job (associations, contexts, statuses, waiting for `done`) is the real one.
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import pydicom
import pytest

from medge.broker import free_port
from medge.edge.errors import ConfigError, InputError
from medge.edge.preprocess import decode_image
from medge.edge.sources.base import InputItem, Outcome
from medge.edge.sources.dicom_receiver import DicomReceiver, DicomSettings
from tests.fixtures.dicom import bundled_dicom, corrupt_copies, echoscu, storescu


class DecodingWorker:
    """Plays the daemon: decodes each item with the real decode, records it, answers `done`."""

    def __init__(self, answer: str = "store"):
        self.answer = answer  # "store": ok once decoded; "fail": the outbox cannot store; "hang": never answers
        self.items: queue.Queue[InputItem] = queue.Queue()
        self.decoded: list[tuple[InputItem, object]] = []  # (item, DecodedImage or InputError)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def submit(self, item: InputItem) -> None:
        self.items.put(item)

    def _run(self):
        while True:
            item = self.items.get()
            try:
                outcome = item.load()
            except InputError as error:
                outcome = error
            self.decoded.append((item, outcome))
            if self.answer == "hang":
                continue
            if isinstance(outcome, InputError):
                item.done(Outcome(ok=False, error=str(outcome)))
            elif self.answer == "fail":
                item.done(Outcome(ok=False, error="outbox: cannot write result (No space left on device)"))
            else:
                item.done(Outcome(ok=True, result_ids=["0" * 32]))


@pytest.fixture
def receive():
    started = []

    def start(answer: str = "store", **options):
        worker = DecodingWorker(answer)
        events = []
        settings = DicomSettings(port=free_port(), bind="127.0.0.1", **options)
        receiver = DicomReceiver(settings, on_event=lambda *event: events.append(event))
        receiver.start(worker.submit)
        started.append(receiver)
        return receiver, worker, events

    yield start
    for receiver in started:
        receiver.stop()


def test_echo_is_answered(receive):
    receiver, _, _ = receive()
    done = echoscu(receiver.port)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Received Echo Response (Success)" in done.stdout + done.stderr
    assert receiver.health()["echoes"] == 1


# (bundled file, transfer syntax to send it in if not its own, frames, modality)
INSTANCES = [
    ("CT_small.dcm", None, 1, "CT"),                    # explicit VR little endian
    ("MR_small.dcm", "1.2.840.10008.1.2", 1, "MR"),     # converted by storescu to implicit VR
    ("examples_rgb_color.dcm", None, 1, "US"),          # explicit, RGB
    ("examples_ybr_color.dcm", None, 30, "US"),         # JPEG baseline, multi-frame US
    ("JPEG2000.dcm", None, 1, "NM"),                    # JPEG 2000 (secondary capture)
    ("examples_jpeg2k.dcm", None, 1, "US"),             # JPEG 2000 lossless, YBR_RCT
]


@pytest.mark.parametrize("name,syntax,frames,modality", INSTANCES, ids=[case[0] for case in INSTANCES])
def test_instances_are_received_decoded_and_acknowledged(receive, name, syntax, frames, modality):
    receiver, worker, _ = receive()
    path = bundled_dicom(name)
    reply = storescu(receiver.port, path, syntax=syntax)
    assert reply.statuses == ["Success"], reply.output
    [(item, decoded)] = worker.decoded
    expected = decode_image(path)
    assert item.source == "dicom" and item.ref == expected.sop_instance_uid
    assert not isinstance(decoded, InputError), decoded
    assert decoded.modality == modality and len(decoded.frames) == frames
    sent_in = syntax or str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert decoded.info["transfer_syntax"] == sent_in
    # What arrived over the network decodes to the very pixels of the file the scanner sent.
    np.testing.assert_array_equal(decoded.frames[0], expected.frames[0])
    np.testing.assert_array_equal(decoded.frames[-1], expected.frames[-1])
    assert receiver.health()["stored"] == 1


def test_jpeg_lossless_from_dcmtk_compressor(receive, dicom_lossless_files):
    receiver, worker, _ = receive()
    reference = decode_image(bundled_dicom("CT_small.dcm")).frames[0]
    for path in dicom_lossless_files.values():
        reply = storescu(receiver.port, path)
        assert reply.statuses == ["Success"], reply.output
    assert len(worker.decoded) == 2
    assert {decoded.info["transfer_syntax"] for _, decoded in worker.decoded} == set(dicom_lossless_files)
    for _, decoded in worker.decoded:
        np.testing.assert_array_equal(decoded.frames[0], reference)  # lossless means lossless


def test_undecodable_12bit_jpeg_is_a_clean_rejection(receive):
    receiver, worker, _ = receive()
    reply = storescu(receiver.port, bundled_dicom("JPEG-lossy.dcm"))
    assert reply.statuses == ["Error: CannotUnderstand"], reply.output
    [(_, error)] = worker.decoded
    assert isinstance(error, InputError) and "JPEG Extended" in str(error) and "12-bit" in str(error)
    # The receiver goes on accepting instances.
    assert storescu(receiver.port, bundled_dicom("CT_small.dcm")).statuses == ["Success"]
    health = receiver.health()
    assert health["failed"] == 1 and health["stored"] == 1 and health["listening"]


def test_corrupt_instances_are_refused_and_the_receiver_keeps_going(receive, tmp_path):
    receiver, worker, _ = receive()
    corrupt = corrupt_copies(tmp_path)
    # A scanner sending a broken instance between two good ones, in one association.
    reply = storescu(receiver.port, bundled_dicom("CT_small.dcm"), corrupt["truncated"], bundled_dicom("CT_small.dcm"))
    assert reply.statuses == ["Success", "Error: CannotUnderstand", "Success"], reply.output
    reply = storescu(receiver.port, corrupt["garbled"])
    assert reply.statuses == ["Error: CannotUnderstand"], reply.output
    errors = [str(outcome) for _, outcome in worker.decoded if isinstance(outcome, InputError)]
    assert len(errors) == 2
    assert "less than expected" in errors[0]
    assert all(error.startswith("DICOM ") and "1.3.6" not in error for error in errors)  # no UID in messages
    assert storescu(receiver.port, bundled_dicom("MR_small.dcm")).statuses == ["Success"]


def test_unknown_caller_is_refused_before_any_data(receive):
    receiver, worker, events = receive(allowed_callers=["SCANNER1", "USCART"])
    reply = storescu(receiver.port, bundled_dicom("CT_small.dcm"), calling="UNKNOWN")
    assert reply.refused and reply.returncode != 0 and reply.statuses == [], reply.output
    assert "Calling AE Title Not Recognized" in reply.output
    assert worker.decoded == []
    assert events and events[0][:2] == ("warning", "association_refused") and "UNKNOWN" in events[0][2]
    reply = storescu(receiver.port, bundled_dicom("CT_small.dcm"), calling="USCART")
    assert reply.statuses == ["Success"], reply.output
    assert receiver.health()["refused"] == 1


def test_failure_to_store_is_a_failure_status_so_the_scanner_keeps_the_image(receive):
    receiver, worker, _ = receive(answer="fail")
    reply = storescu(receiver.port, bundled_dicom("CT_small.dcm"))
    assert reply.statuses == ["Error: CannotUnderstand"], reply.output
    assert receiver.health()["failed"] == 1 and receiver.health()["stored"] == 0


def test_no_answer_in_time_is_out_of_resources(receive):
    receiver, worker, _ = receive(answer="hang", store_timeout_s=1.0)
    reply = storescu(receiver.port, bundled_dicom("CT_small.dcm"))
    assert reply.statuses == ["Refused: OutOfResources"], reply.output
    assert receiver.health()["timeouts"] == 1


def test_configuration_errors_name_the_key():
    with pytest.raises(ConfigError, match="dicom.ae_title"):
        DicomReceiver(DicomSettings(port=11112, ae_title="A_TITLE_FAR_TOO_LONG_FOR_DICOM"))
    with pytest.raises(ConfigError, match="dicom.allowed_callers"):
        DicomReceiver(DicomSettings(port=11112, allowed_callers=["OK", "BAD\\ONE"]))
    with pytest.raises(ConfigError, match="dicom.allowed_callers"):
        DicomReceiver(DicomSettings(port=11112, allowed_callers=["CT1@scanner.example.org"]))  # no host names
    with pytest.raises(ConfigError, match="dicom.bind"):
        DicomReceiver(DicomSettings(port=11112, bind="everywhere"))
    with pytest.raises(ConfigError, match="dicom.max_associations"):
        DicomReceiver(DicomSettings(port=11112, max_associations=0))


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_the_port_has_one_bound_for_the_config_and_the_receiver(tmp_path, port):
    """The receiver and the configuration refuse the same ports with the same message."""
    from medge.edge.config import load_config

    with pytest.raises(ConfigError) as from_receiver:
        DicomReceiver(DicomSettings(port=port))
    with pytest.raises(ConfigError) as from_config:
        load_config(env={}, flags={"dicom.port": port})
    assert str(from_receiver.value) == str(from_config.value) == f"dicom.port: {port} is not a TCP port (1-65535)"


def test_port_in_use_is_a_config_error(receive):
    receiver, _, _ = receive()
    second = DicomReceiver(DicomSettings(port=receiver.port, bind="127.0.0.1"))
    with pytest.raises(ConfigError, match=f"dicom.port: cannot listen on 127.0.0.1:{receiver.port}"):
        second.start(lambda item: None)


def test_two_scanners_sending_at_once(receive):
    import concurrent.futures

    receiver, worker, _ = receive()
    files = [bundled_dicom("CT_small.dcm"), bundled_dicom("MR_small.dcm")]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda calling: storescu(receiver.port, *files, calling=calling),
                                ["XRAY_PORTABLE1", "US_CART2"]))
    assert [reply.statuses for reply in replies] == [["Success", "Success"]] * 2
    assert len(worker.decoded) == 4 and receiver.health()["associations"] == 2


# ------------------------------------------------------------------------------ transfer syntaxes


@pytest.mark.parametrize("name", ["big_endian", "deflated", "rle", "jpeg_ls"])
def test_big_endian_deflated_rle_and_jpeg_ls_from_dcmtk_are_accepted_and_lossless(receive, dicom_syntax_files, name):
    receiver, worker, _ = receive()
    path, uid, propose = dicom_syntax_files[name]
    assert str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == uid
    reply = storescu(receiver.port, path, propose=propose)  # storescu's own proposal for that syntax
    assert reply.statuses == ["Success"], reply.output
    [(_, decoded)] = worker.decoded
    assert not isinstance(decoded, InputError), decoded
    assert decoded.info["transfer_syntax"] == uid  # it really travelled in that syntax
    np.testing.assert_array_equal(decoded.frames[0], decode_image(bundled_dicom("CT_small.dcm")).frames[0])


# ------------------------------------------------------------------------------ who may send


def test_a_wrong_called_ae_title_is_refused_with_an_event_unless_switched_off(receive):
    receiver, worker, events = receive()
    reply = storescu(receiver.port, bundled_dicom("CT_small.dcm"), called="OTHER_PACS")
    assert reply.refused and "Called AE Title Not Recognized" in reply.output, reply.output
    assert worker.decoded == []
    [(level, kind, message)] = events
    assert (level, kind) == ("warning", "association_refused")
    assert "'OTHER_PACS'" in message and "dicom.require_called_ae" in message
    assert receiver.health()["refused_called_ae"] == 1

    lenient, worker, events = receive(require_called_ae=False)
    assert storescu(lenient.port, bundled_dicom("CT_small.dcm"), called="OTHER_PACS").statuses == ["Success"]
    assert events == []


def test_an_ae_title_pinned_to_an_address_is_refused_from_any_other(receive):
    # The sender claims the allowed AE title, but from an address the entry does not admit.
    receiver, worker, events = receive(allowed_callers=["CT1@10.20.30.40", "US_CART@192.168.7.0/24"])
    reply = storescu(receiver.port, bundled_dicom("CT_small.dcm"), calling="CT1")
    assert reply.refused and "Calling AE Title Not Recognized" in reply.output, reply.output
    assert worker.decoded == []
    [(_, kind, message)] = events
    assert kind == "association_refused" and "'CT1' (127.0.0.1)" in message and "10.20.30.40" in message

    pinned, worker, events = receive(allowed_callers=["CT1@127.0.0.1", "MR2"])
    assert storescu(pinned.port, bundled_dicom("CT_small.dcm"), calling="CT1").statuses == ["Success"]
    assert storescu(pinned.port, bundled_dicom("MR_small.dcm"), calling="MR2").statuses == ["Success"]
    assert events == [] and len(worker.decoded) == 2


def test_associations_over_the_limit_are_refused_with_an_event_and_the_limit_is_configurable(receive):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    receiver, worker, events = receive(max_associations=2)
    scanner = AE(ae_title="HOLDER")
    scanner.add_requested_context(Verification)
    held = [scanner.associate("127.0.0.1", receiver.port, ae_title="MEDGE") for _ in range(2)]
    try:
        assert all(association.is_established for association in held)
        reply = storescu(receiver.port, bundled_dicom("CT_small.dcm"))
        assert reply.refused and "Local Limit Exceeded" in reply.output, reply.output
        assert worker.decoded == []
        [(level, kind, message)] = events
        assert (level, kind) == ("warning", "association_refused")
        assert "too many simultaneous associations (dicom.max_associations = 2)" in message
        assert receiver.health()["refused_busy"] == 1
    finally:
        for association in held:
            association.release()
    # Room again: the next one is stored.
    assert storescu(receiver.port, bundled_dicom("CT_small.dcm")).statuses == ["Success"]


def test_repeated_refusals_are_one_event_a_minute_with_a_count(receive):
    receiver, _, events = receive(allowed_callers=["CT1"])
    for _ in range(3):
        assert storescu(receiver.port, bundled_dicom("CT_small.dcm"), calling="INTRUDER").refused
    assert len(events) == 1 and receiver.health()["refused"] == 3


def test_dicom_tls_with_client_certificates(receive, tmp_path):
    from tests.fixtures.dicom import openssl_tls_files

    files = openssl_tls_files(tmp_path / "tls")
    receiver, worker, events = receive(tls_cert_file=files["server.crt"], tls_key_file=files["server.key"],
                                       tls_ca_file=files["ca.crt"])
    tls = ["+tls", str(files["client.key"]), str(files["client.crt"]), "+cf", str(files["ca.crt"])]
    reply = storescu(receiver.port, bundled_dicom("CT_small.dcm"), tls=tls)  # dcmtk's storescu over TLS
    assert reply.statuses == ["Success"], reply.output
    assert receiver.health()["tls"] and receiver.health()["stored"] == 1

    # Plain TCP, and TLS without a client certificate: refused, each reported.
    assert storescu(receiver.port, bundled_dicom("CT_small.dcm")).statuses == []
    anonymous = storescu(receiver.port, bundled_dicom("CT_small.dcm"), tls=["+tla", "+cf", str(files["ca.crt"])])
    assert anonymous.statuses == [], anonymous.output
    assert len(worker.decoded) == 1
    assert receiver.health()["tls_failures"] == 2
    assert events and events[0][1] == "association_refused" and "TLS handshake failed" in events[0][2]


def test_dicom_tls_with_pynetdicom_as_the_sender(receive, tmp_path):
    import ssl

    from pynetdicom import AE

    from tests.fixtures.dicom import openssl_tls_files

    files = openssl_tls_files(tmp_path / "tls")
    receiver, worker, _ = receive(tls_cert_file=files["server.crt"], tls_key_file=files["server.key"])
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files["ca.crt"]))
    sender = AE(ae_title="SCANNER")
    dataset = pydicom.dcmread(bundled_dicom("MR_small.dcm"))
    sender.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    association = sender.associate("127.0.0.1", receiver.port, ae_title="MEDGE", tls_args=(context, "127.0.0.1"))
    assert association.is_established
    try:
        status = association.send_c_store(dataset)
    finally:
        association.release()
    assert status.Status == 0x0000 and len(worker.decoded) == 1


# ------------------------------------------------------------------------------ what the scanner is told


def test_the_failure_comment_starts_with_the_reason(receive, tmp_path):
    from pynetdicom import AE

    receiver, worker, _ = receive()
    truncated = pydicom.dcmread(corrupt_copies(tmp_path)["truncated"])
    sender = AE(ae_title="CT_ROOM_4")
    sender.add_requested_context(truncated.SOPClassUID, truncated.file_meta.TransferSyntaxUID)
    association = sender.associate("127.0.0.1", receiver.port, ae_title="MEDGE")
    try:
        status = association.send_c_store(truncated)
    finally:
        association.release()
    [(_, error)] = worker.decoded
    name = "DICOM CT Image Storage from CT_ROOM_4"
    assert str(error).startswith(name + ": ")  # the event names the SOP class and the calling AE
    reason = str(error)[len(name) + 2:]
    assert status.Status == 0xC000
    assert status.ErrorComment == reason[:64].rstrip() and not status.ErrorComment.startswith(("input", "DICOM CT"))
    assert "pixel data" in status.ErrorComment


def test_the_receiver_listens_only_on_its_bind_address():
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    port = free_port()
    receiver = DicomReceiver(DicomSettings(port=port, bind="127.0.0.2"))  # another loopback address
    receiver.start(lambda item: None)
    try:
        scanner = AE(ae_title="SCANNER")
        scanner.add_requested_context(Verification)
        refused = scanner.associate("127.0.0.1", port, ae_title="MEDGE")
        assert not refused.is_established  # nothing listens there
        association = scanner.associate("127.0.0.2", port, ae_title="MEDGE")
        assert association.is_established
        association.release()
        assert receiver.health()["bind"] == "127.0.0.2"
    finally:
        receiver.stop()
