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
from medge.edge.sources.dicom_receiver import DicomReceiver
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
        receiver = DicomReceiver(free_port(), host="127.0.0.1", on_event=lambda *event: events.append(event), **options)
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
    receiver, worker, _ = receive(answer="hang", store_timeout=1.0)
    reply = storescu(receiver.port, bundled_dicom("CT_small.dcm"))
    assert reply.statuses == ["Refused: OutOfResources"], reply.output
    assert receiver.health()["timeouts"] == 1


def test_configuration_errors_name_the_key():
    with pytest.raises(ConfigError, match="dicom.ae_title"):
        DicomReceiver(11112, ae_title="A_TITLE_FAR_TOO_LONG_FOR_DICOM")
    with pytest.raises(ConfigError, match="dicom.allowed_callers"):
        DicomReceiver(11112, allowed_callers=["OK", "BAD\\ONE"])
    with pytest.raises(ConfigError, match="dicom.port"):
        DicomReceiver(70000)


def test_port_in_use_is_a_config_error(receive):
    receiver, _, _ = receive()
    second = DicomReceiver(receiver.port, host="127.0.0.1")
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
