"""The durable PACS delivery queue against a real Orthanc: C-STORE while the PACS is down and
after it is back (every object exactly once, none lost across a restart of the queue), STOW-RS
to Orthanc's DICOMweb plugin, events without identifiers, and the C-ECHO of `medge edge check`."""
from __future__ import annotations

import json
import threading
import time

import pydicom
import pytest

from medge.edge.config import load_config
from medge.edge.pacs.checks import check_pacs
from medge.edge.pacs.delivery import PacsDelivery
from medge.edge.pacs.delivery_queue import DeliveryQueue
from medge.edge.pacs.objects import write_objects
from medge.edge.pacs.senders import CStoreSender, StowSender
from medge.edge.payloads import encode
from medge.edge.preprocess import decode_dicom_dataset
from medge.edge.sources.base import InputItem
from tests.fixtures.broker import wait_until
from tests.fixtures.dicom import CR_IMAGE, write_xray_dicom
from tests.fixtures.edge import PHI, small_xray

pytestmark = pytest.mark.timeout(240)

MODEL = {"name": "pneumonia-cnn", "version": "1.0.0", "sha256": "c3" * 32, "format": "tflite-int8"}


def patient(index: int) -> dict:
    return {**PHI, "PatientName": f"Doe^Patient{index}", "PatientID": f"MRN-{7000 + index}"}


def source_and_objects(folder, index: int):
    """A real chest X-ray as a CR with patient tags, and its SR and SC as the daemon writes them."""
    path = write_xray_dicom(folder / f"cr{index}.dcm", small_xray(index, 192), modality="CR", sop_class=CR_IMAGE,
                            tags=patient(index))
    source = pydicom.dcmread(path)
    payload = {"status": "classified", "class": "pneumonia", "score": 0.9, "threshold": 0.5, "positive": True,
               "model": MODEL}
    return path, source, write_objects(source, decode_dicom_dataset(source, "cr").frames, [payload], "pneumonia", "d1")


class Events:
    def __init__(self):
        self.items: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, level, kind, message, source=None):
        with self.lock:
            self.items.append((level, kind, message))

    def kinds(self) -> list[str]:
        with self.lock:
            return [kind for _, kind, _ in self.items]


def test_objects_queued_while_the_pacs_is_down_arrive_exactly_once_after_it_is_back(orthanc, tmp_path):
    sources = [source_and_objects(tmp_path, index) for index in range(3)]
    for path, _, _ in sources:
        orthanc.upload(path)  # the studies exist in the PACS, as they would
    orthanc.stop()

    queue_path = tmp_path / "state" / "pacs.sqlite3"
    events = Events()
    sender = CStoreSender(orthanc.address, calling_ae="MEDGE", timeout_s=5)
    delivery = PacsDelivery([sender], DeliveryQueue(queue_path), finding="pneumonia", device="d1",
                            retry_min_s=0.1, retry_max_s=0.5, on_event=events)
    delivery.start()
    for _, _, objects in sources[:2]:
        delivery.queue.add(objects, [sender.name])
    wait_until(lambda: "pacs_down" in events.kinds() and delivery.counters()["pacs_retries"] >= 2, 30, "retries")
    assert delivery.counters()["pacs_queued"] == 4 and delivery.counters()["pacs_delivered"] == 0
    delivery.stop()  # the daemon stops (or dies) during the outage

    # Restarted: the queue is still there; the scanner resends one instance (same objects, same UIDs).
    assert queue_path.stat().st_mode & 0o077 == 0  # the queue holds patient identity: owner only
    delivery = PacsDelivery([sender], DeliveryQueue(queue_path), finding="pneumonia", device="d1",
                            retry_min_s=0.1, retry_max_s=0.5, on_event=events)
    assert delivery.queue.count() == 4
    assert delivery.queue.add(sources[0][2], [sender.name]) == 0
    delivery.queue.add(sources[2][2], [sender.name])
    delivery.start()
    try:
        orthanc.start()
        wait_until(lambda: delivery.counters()["pacs_queued"] == 0, 60, "the backlog delivered")
        wait_until(lambda: "pacs_up" in events.kinds(), 10, "the pacs_up event")
    finally:
        delivery.stop()

    assert orthanc.instance_count() == 3 + 6
    for _, source, objects in sources:
        instances = orthanc.instances_of_study(str(source.StudyInstanceUID))
        assert sorted(i["Modality"] for i in instances) == ["CR", "OT", "SR"]
        assert {i["SOPInstanceUID"] for i in instances} >= {uid for uid, _, _ in objects}
        assert all(i["PatientID"] == source.PatientID for i in instances)  # filed under the same patient
    # Events name the PACS and counts, never a patient or a UID.
    text = json.dumps(events.items)
    for _, source, objects in sources:
        for value in (str(source.PatientName), str(source.PatientID), str(source.StudyInstanceUID),
                      *(uid for uid, _, _ in objects)):
            assert value not in text


def test_stow_rs_delivers_to_orthanc_dicomweb_and_a_repeat_stores_nothing_new(orthanc, tmp_path):
    path, source, objects = source_and_objects(tmp_path, 5)
    orthanc.upload(path)
    sender = StowSender(orthanc.dicomweb_url, timeout_s=10)
    delivery = PacsDelivery([sender], DeliveryQueue(tmp_path / "pacs.sqlite3"), finding="pneumonia", device="d1",
                            retry_min_s=0.1, retry_max_s=0.5)
    delivery.queue.add(objects, [sender.name])
    delivery.start()
    try:
        wait_until(lambda: delivery.counters()["pacs_delivered"] == 2, 30, "STOW-RS delivery")
        # Delivered again (a lost confirmation): the PACS keeps one instance per UID.
        delivery.queue.add(objects, [sender.name])
        wait_until(lambda: delivery.counters()["pacs_delivered"] == 4, 30, "the repeated delivery")
    finally:
        delivery.stop()
    instances = orthanc.instances_of_study(str(source.StudyInstanceUID))
    assert sorted(i["Modality"] for i in instances) == ["CR", "OT", "SR"]
    assert orthanc.instance_count() == 3


def test_edge_check_echoes_the_pacs_and_names_what_is_unreachable(orthanc):
    good = load_config(flags={"pacs.cstore": orthanc.address, "pacs.stow": orthanc.dicomweb_url})
    assert check_pacs(good).ok and check_pacs(good).detail.startswith(f"C-ECHO to {orthanc.address} answered Success")
    orthanc.stop()
    down = check_pacs(good)
    assert not down.ok and down.detail.startswith("C-ECHO: PACS") and "cannot be reached" in down.detail
    assert check_pacs(load_config()).ok and check_pacs(load_config()).detail.startswith("not configured")


def test_a_write_job_stored_for_the_scanner_becomes_one_sr_and_one_sc_after_a_restart(orthanc, tmp_path):
    """The daemon's hook stores the input's job (what the scanner waits for); the daemon stops
    before writing it; after the restart the writer makes the objects and they are delivered."""
    path, source, objects = source_and_objects(tmp_path, 7)
    orthanc.upload(path)
    decoded = decode_dicom_dataset(source, "cr")
    payload = {"id": "a" * 32, "status": "classified", "class": "pneumonia", "score": 0.9, "threshold": 0.5,
               "positive": True, "model": MODEL}
    messages = [(payload["id"], "result", "medge/s/d/result", encode(payload))]
    item = InputItem(source="dicom", ref="x", load=lambda: decoded, dataset=source)
    sender = CStoreSender(orthanc.address, timeout_s=5)
    queue_path = tmp_path / "pacs.sqlite3"

    stopped_before_writing = PacsDelivery([sender], DeliveryQueue(queue_path), finding="pneumonia", device="d1")
    stopped_before_writing(item, decoded, messages)
    stopped_before_writing(item, decoded, messages)  # the scanner resent it: still one job
    assert stopped_before_writing.counters()["pacs_writing"] == 1
    stopped_before_writing.queue.close()

    delivery = PacsDelivery([sender], DeliveryQueue(queue_path), finding="pneumonia", device="d1",
                            retry_min_s=0.1, retry_max_s=0.5)
    delivery.start()
    try:
        wait_until(lambda: delivery.counters()["pacs_delivered"] == 2, 60, "the job written and delivered")
    finally:
        delivery.stop()
    instances = orthanc.instances_of_study(str(source.StudyInstanceUID))
    assert sorted(i["Modality"] for i in instances) == ["CR", "OT", "SR"]
    # The same UIDs as writing directly from the received dataset: the job loses nothing that counts.
    assert {i["SOPInstanceUID"] for i in instances} == {str(source.SOPInstanceUID), *(uid for uid, _, _ in objects)}


class RefusingPacs:
    """A real DICOM Storage SCP (pynetdicom, real associations on a free port) that stores SCs,
    answers SRs with "data set does not match SOP class" (0xA900) and, while `busy`, answers
    everything with "out of resources" (0xA700): what a picky or overloaded PACS does."""

    def __init__(self, accept_sr: bool = True):
        from pynetdicom import AE, evt

        from medge.broker import free_port
        from medge.edge.pacs.senders import SC_STORAGE, SR_STORAGE, SYNTAXES

        self.port = free_port()
        self.stored: list[str] = []
        self.busy = False
        ae = AE(ae_title="PICKY")
        ae.add_supported_context(SC_STORAGE, SYNTAXES)
        if accept_sr:
            ae.add_supported_context(SR_STORAGE, SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        if self.busy:
            return 0xA700
        if event.request.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33":
            return 0xA900
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def close(self):
        self.server.shutdown()


@pytest.mark.parametrize("accept_sr", [True, False], ids=["refused-by-status", "refused-at-negotiation"])
def test_an_object_the_pacs_refuses_for_good_is_kept_reported_and_not_retried(tmp_path, accept_sr):
    pacs = RefusingPacs(accept_sr=accept_sr)
    _, _, objects = source_and_objects(tmp_path, 9)
    events = Events()
    sender = CStoreSender(f"PICKY@127.0.0.1:{pacs.port}", timeout_s=5)
    delivery = PacsDelivery([sender], DeliveryQueue(tmp_path / "pacs.sqlite3"), finding="pneumonia", device="d1",
                            retry_min_s=0.1, retry_max_s=0.3, on_event=events)
    try:
        pacs.busy = True  # overloaded first: out of resources is transient, retried
        delivery.queue.add(objects, [sender.name])
        delivery.start()
        wait_until(lambda: delivery.counters()["pacs_retries"] >= 2, 20, "retries while out of resources")
        assert delivery.counters()["pacs_queued"] == 2 and not pacs.stored
        pacs.busy = False
        wait_until(lambda: delivery.counters()["pacs_delivered"] == 1 and delivery.counters()["pacs_refused"] == 1,
                   20, "the SC stored and the SR refused")
        retries = delivery.counters()["pacs_retries"]
        sr_uid, sc_uid = objects[0][0], objects[1][0]
        assert pacs.stored == [sc_uid]
        assert delivery.queue.count("refused") == 1 and delivery.counters()["pacs_queued"] == 0
        refusals = [message for level, kind, message in events.items if kind == "pacs_refused"]
        assert len(refusals) == 1 and (("0xA900" in refusals[0]) if accept_sr else ("does not accept SR" in refusals[0]))
        assert sr_uid not in refusals[0]
        time.sleep(1.0)
        assert delivery.counters()["pacs_retries"] == retries  # a refusal is not retried in a loop
    finally:
        delivery.stop()
        pacs.close()
