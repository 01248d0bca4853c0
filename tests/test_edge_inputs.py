"""The watch folder and the worker with the real int8 model, in one process (no broker): bad
inputs, unusual images, the frame policy, not_applicable, PHI, and the crash-safe ledger."""
from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
from PIL import Image

from medge.edge.bundle import load_bundle, write_manifest
from medge.edge.classify import Classifier
from medge.edge.config import load_config
from medge.edge.outbox import Outbox
from medge.edge.preprocess import decode_image
from medge.edge.pseudonym import Pseudonymizer, load_or_create_key
from medge.edge.schemas import load_schema
from medge.edge.sources.watch import WatchFolder
from medge.edge.worker import Worker
from tests.fixtures.edge import PHI, small_xray, write_atomically, xray_dicom, xray_files


@pytest.fixture(scope="module")
def classifier(int8_bundle):
    return Classifier(load_bundle(int8_bundle))


class Pipeline:
    """WatchFolder -> Worker -> Outbox with the real classifier: the daemon minus MQTT."""

    def __init__(self, root: Path, classifier, frames: str = "first", max_pixels: int | None = None,
                 stable_s: float = 0.3, outbox_max: int | None = None):
        flags = {"watch.dir": str(root / "in"), "state.dir": str(root / "state"), "site": "s", "device": "d",
                 "dicom.frames": frames, "log.max_pixels": max_pixels, "state.outbox_max": outbox_max}
        self.config = load_config(env={}, flags=flags)
        self.inbox = self.config.watch.dir
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(self.config.outbox_path, self.config.state.outbox_max)
        self.pseudonymizer = Pseudonymizer(load_or_create_key(self.config.pseudonym_key_path))
        bundle = classifier.bundle
        model = {"name": bundle.name, "version": bundle.version, "sha256": classifier.artifact.sha256,
                 "format": classifier.artifact.format}
        self.worker = Worker(classifier=classifier, bundle=bundle, outbox=self.outbox,
                             pseudonymizer=self.pseudonymizer, config=self.config, model=model)
        self.watch = WatchFolder(self.inbox, stable_s=stable_s, poll_s=0.05, max_pixels=self.config.log.max_pixels)

    def __enter__(self):
        self.worker.start()
        self.watch.start(self.worker.submit)
        return self

    def __exit__(self, *exc):
        self.watch.stop()
        self.worker.stop()  # the outbox stays open so the test can read what was stored

    def released(self) -> int:
        health = self.watch.health()
        return health["processed"] + health["rejected"]

    def wait_released(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.released() < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.released() == count, self.watch.health()

    def payloads(self, kind: str | None = None) -> list[dict]:
        return [json.loads(m.payload) for m in self.outbox.after(0, limit=100000) if kind in (None, m.kind)]

    def raw(self) -> bytes:
        return b"\n".join(m.payload for m in self.outbox.after(0, limit=100000))


def validate(payload: dict) -> dict:
    name = payload["schema"].split(".")[1].split("/")[0]
    jsonschema.validate(payload, load_schema(name))
    return payload


def png_bytes(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def test_each_bad_input_is_rejected_with_a_reason_and_the_next_good_image_is_classified(tmp_path, classifier):
    jpeg = xray_files()[0].read_bytes()
    no_pixels = tmp_path / "no_pixels.dcm"
    xray_dicom(no_pixels)
    import pydicom

    dataset = pydicom.dcmread(no_pixels)
    del dataset.PixelData
    dataset.save_as(no_pixels)
    odd_colour = tmp_path / "odd_colour.dcm"
    xray_dicom(odd_colour)
    dataset = pydicom.dcmread(odd_colour)
    dataset.PhotometricInterpretation = "HSV"  # retired, unsupported
    dataset.save_as(odd_colour)
    corrupted = bytearray(png_bytes(small_xray(0, 200)))
    corrupted[200:400] = bytes(200)  # a damaged block in the middle of the compressed pixels
    corrupted = bytes(corrupted)
    huge = cv2.resize(small_xray(1, 256), (2400, 2400), interpolation=cv2.INTER_LINEAR)
    bad = {
        "zero.jpg": (b"", "empty file"),
        "truncated.jpeg": (jpeg[: len(jpeg) // 2], "not a readable image"),
        "corrupt.png": (corrupted, "not a readable image"),
        "notes.txt": (b"Patient arrived at 10:32, image to follow\n", "not a readable image"),
        "bomb.png": (png_bytes(huge), "over the limit of 4000000"),
        "no_pixels.dcm": (no_pixels.read_bytes(), "DICOM has no pixel data"),
        "odd_colour.dcm": (odd_colour.read_bytes(), "unsupported photometric interpretation 'HSV'"),
    }
    with Pipeline(tmp_path, classifier, max_pixels=4_000_000) as pipeline:
        for name, (data, _) in bad.items():  # exporters often name files after the patient
            write_atomically(pipeline.inbox / f"Smith_John_{name}", data)
        pipeline.wait_released(len(bad))
        write_atomically(pipeline.inbox / "good.jpeg", jpeg)
        pipeline.wait_released(len(bad) + 1)

    rejected = pipeline.config.rejected_dir
    for name, (data, reason) in bad.items():
        assert (rejected / f"Smith_John_{name}").read_bytes() == data  # kept aside untouched
        assert reason in (rejected / f"Smith_John_{name}.why.txt").read_text(), name
    assert (pipeline.config.processed_dir / "good.jpeg").is_file()
    assert sorted(p.name for p in pipeline.inbox.iterdir()) == ["processed", "rejected"]
    errors = [validate(p) for p in pipeline.payloads("error")]
    assert len(errors) == len(bad) and {e["kind"] for e in errors} == {"rejected_input"}
    messages = " ".join(e["message"] for e in errors)
    for _, reason in bad.values():
        assert reason in messages
    assert "Smith" not in messages and "John" not in messages  # events never carry the file name
    results = [validate(p) for p in pipeline.payloads("result")]
    assert len(results) == 1 and results[0]["status"] == "classified"
    expected = classifier.classify(decode_image(xray_files()[0]).pixels)
    assert results[0]["score"] == pytest.approx(expected.score, abs=1e-6)  # what `medge predict` says
    assert results[0]["class"] == expected.label


def test_a_file_still_being_written_is_taken_only_when_complete(tmp_path, classifier):
    data = xray_files()[1].read_bytes()
    with Pipeline(tmp_path, classifier, stable_s=0.6) as pipeline:
        target = pipeline.inbox / "slow.jpeg"
        with open(target, "wb") as handle:  # a slow network copy, in the folder under its final name
            for start in range(0, len(data), len(data) // 6):
                handle.write(data[start:start + len(data) // 6])
                handle.flush()
                time.sleep(0.2)
        pipeline.wait_released(1)
        time.sleep(1.0)  # and nothing is taken twice
        assert pipeline.released() == 1
    assert (pipeline.config.processed_dir / "slow.jpeg").read_bytes() == data
    [result] = pipeline.payloads("result")
    assert result["status"] == "classified"


def test_valid_but_unusual_images_are_classified_not_rejected(tmp_path, classifier):
    gray = small_xray(2, 200)
    rgba = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)
    rgba[:, :, 3] = 200
    sixteen = (gray.astype(np.uint16) * 257 + 11)
    palette = io.BytesIO()
    Image.fromarray(gray).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(palette, format="PNG")
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.fromarray(np.ascontiguousarray(np.rot90(gray, 1))).save(rotated, format="JPEG", quality=92, exif=exif)
    inputs = {
        "sixteen_bit.png": png_bytes(sixteen),
        "rgba.png": png_bytes(rgba),
        "palette.png": palette.getvalue(),
        "exif_rotated.jpg": rotated.getvalue(),
        "tiny.png": png_bytes(cv2.resize(gray, (8, 8), interpolation=cv2.INTER_AREA)),
        "colour.jpeg": xray_files()[2].read_bytes(),  # the sample stored as RGB
    }
    assert Image.open(io.BytesIO(inputs["palette.png"])).mode == "P"
    assert cv2.imdecode(np.frombuffer(inputs["sixteen_bit.png"], np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    with Pipeline(tmp_path, classifier) as pipeline:
        for name, data in inputs.items():
            write_atomically(pipeline.inbox / name, data)
        pipeline.wait_released(len(inputs))
    assert pipeline.payloads("error") == []
    results = [validate(p) for p in pipeline.payloads("result")]
    assert len(results) == len(inputs)
    assert all(r["status"] == "classified" and 0.0 <= r["score"] <= 1.0 for r in results)
    assert sorted(p.name for p in pipeline.config.processed_dir.iterdir()) == sorted(inputs)
    # The EXIF orientation is applied: the rotated file decodes to the upright X-ray.
    upright = decode_image(pipeline.config.processed_dir / "exif_rotated.jpg").pixels
    assert upright.shape == gray.shape
    assert np.abs(upright.astype(int) - gray.astype(int)).mean() < 6


@pytest.mark.parametrize("policy", ["first", "all", "max"])
def test_frame_policy_for_a_multi_frame_dicom(tmp_path, classifier, policy):
    with Pipeline(tmp_path, classifier, frames=policy) as pipeline:
        xray_dicom(pipeline.inbox / ".series.dcm.part", frames=3)
        (pipeline.inbox / ".series.dcm.part").rename(pipeline.inbox / "series.dcm")
        pipeline.wait_released(1)
    results = [validate(p) for p in pipeline.payloads("result")]
    frames = decode_image(pipeline.config.processed_dir / "series.dcm").frames
    scores = [classifier.classify(frame).score for frame in frames]
    assert all(r["frame"]["policy"] == policy and r["frame"]["count"] == 3 for r in results)
    assert all(r["dicom"] == {"modality": "CR", "body_part": "CHEST"} for r in results)
    if policy == "first":
        assert [r["frame"]["index"] for r in results] == [0]
        assert results[0]["score"] == pytest.approx(scores[0], abs=1e-6)
    elif policy == "all":
        assert [r["frame"]["index"] for r in results] == [0, 1, 2]
        assert [r["score"] for r in results] == pytest.approx(scores, abs=1e-6)
        assert len({r["id"] for r in results}) == 3 and len({r["input_ref"] for r in results}) == 1
    else:
        assert len(results) == 1
        assert results[0]["frame"]["index"] == int(np.argmax(scores))
        assert results[0]["score"] == pytest.approx(max(scores), abs=1e-6)


def test_inputs_outside_the_declared_modalities_are_not_applicable(tmp_path, classifier, int8_bundle):
    from pydicom.data import get_testdata_file

    scoped = tmp_path / "scoped_bundle"
    shutil.copytree(int8_bundle, scoped)
    manifest = json.loads((scoped / "medge.json").read_text())
    manifest["applicability"] = {"modalities": ["CR", "DX"], "body_parts": ["CHEST"]}
    for key in ("files", "file_sizes"):
        manifest.pop(key, None)
    write_manifest(scoped, manifest)
    scoped_classifier = Classifier(load_bundle(scoped))
    with Pipeline(tmp_path, scoped_classifier) as pipeline:
        shutil.copy(get_testdata_file("CT_small.dcm"), pipeline.inbox / "ct.dcm")
        xray_dicom(pipeline.inbox / "chest.dcm", modality="DX")
        write_atomically(pipeline.inbox / "plain.png", png_bytes(small_xray(0)))  # no modality to judge by
        pipeline.wait_released(3)
    results = {r["dicom"]["modality"] if "dicom" in r else "png": validate(r) for r in pipeline.payloads("result")}
    assert results["CT"]["status"] == "not_applicable"
    assert "modality CT is outside the model's scope" in results["CT"]["reason"]
    assert "class" not in results["CT"] and "score" not in results["CT"]
    assert results["DX"]["status"] == "classified"
    assert results["png"]["status"] == "classified"


def test_no_patient_identifier_reaches_any_payload(tmp_path, classifier):
    import pydicom
    from pydicom.data import get_testdata_file

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for key, value in PHI.items():
        setattr(ct, key, value)
    with Pipeline(tmp_path, classifier) as pipeline:
        ct.save_as(pipeline.inbox / "Doe_Jane_MRN-99812377_ct.dcm")
        xray_dicom(pipeline.inbox / "Doe_Jane_MRN-99812377_chest.dcm", patient=PHI)
        broken = pydicom.dcmread(pipeline.inbox / "Doe_Jane_MRN-99812377_chest.dcm")
        del broken.PixelData
        broken.save_as(tmp_path / "broken.dcm")
        shutil.move(tmp_path / "broken.dcm", pipeline.inbox / "Doe_Jane_MRN-99812377_broken.dcm")
        pipeline.wait_released(3)
        uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in pipeline.config.processed_dir.iterdir()]
    raw = pipeline.raw()
    assert len(pipeline.payloads("result")) == 2 and len(pipeline.payloads("error")) == 1
    forbidden = [str(v) for v in PHI.values()] + ["Doe", "Jane", "99812377", "19610722", "MRN"] + uids
    for value in forbidden:
        assert value.encode() not in raw, value
    for payload in pipeline.payloads():
        validate(payload)
    # The reference is the keyed hash of the SOP Instance UID: stable, but not the UID itself.
    refs = {r["input_ref"] for r in pipeline.payloads("result")}
    assert refs == {pipeline.pseudonymizer.ref(uid) for uid in uids}


class Crash(BaseException):
    """The process dying between storing an outcome and releasing the input."""


def test_an_input_stored_before_a_crash_is_released_not_classified_again(tmp_path, classifier):
    from medge.edge.sources.base import InputItem

    with Pipeline(tmp_path, classifier) as pipeline:
        pass  # only for its configured outbox and worker
    path = pipeline.inbox / "a.jpeg"
    write_atomically(path, xray_files()[0].read_bytes())

    def crash(outcome):
        raise Crash()

    outbox = Outbox(pipeline.config.outbox_path)
    worker = Worker(classifier=classifier, bundle=classifier.bundle, outbox=outbox,
                    pseudonymizer=pipeline.pseudonymizer, config=pipeline.config, model=pipeline.worker.model)
    item = InputItem(source="watch", ref="a.jpeg", load=lambda: decode_image(path), done=crash)
    with pytest.raises(Crash):
        worker.process(item)
    first = [json.loads(m.payload) for m in outbox.after(0)]
    del outbox, worker  # no clean close

    with Pipeline(tmp_path, classifier) as restarted:  # the file is still in the folder
        restarted.wait_released(1)
    assert (restarted.config.processed_dir / "a.jpeg").is_file()
    again = restarted.payloads("result")
    assert [r["id"] for r in again] == [r["id"] for r in first]  # same message, no second classification


def test_a_full_outbox_keeps_new_inputs_waiting_in_the_folder_and_says_so(tmp_path, classifier):
    with Pipeline(tmp_path, classifier, outbox_max=10) as pipeline:
        write_atomically(pipeline.inbox / "bad.png", b"")  # one error event: reclaimable space
        for index in range(14):
            write_atomically(pipeline.inbox / f"img{index:02d}.png", png_bytes(small_xray(index, 64)))
        pipeline.wait_released(11)  # the bad file and 10 results; the broker is away
        time.sleep(1.0)
        assert pipeline.released() == 11
        waiting = sorted(p.name for p in pipeline.inbox.glob("img*.png"))
        assert len(waiting) == 4  # kept in the watch folder, not dropped
        events = [validate(p) for p in pipeline.payloads("error")]
        assert [e["kind"] for e in events if e["level"] == "warning"][:1] == ["outbox_full"]
        assert pipeline.outbox.count("result") == 10 and pipeline.outbox.dropped == 1  # the error event went
        # The broker comes back and acknowledges the oldest results: the waiting files go through.
        acknowledged = [m.seq for m in pipeline.outbox.after(0) if m.kind == "result"][:5]
        pipeline.outbox.remove(acknowledged)
        pipeline.wait_released(15)
    assert list(pipeline.inbox.glob("img*.png")) == []
    assert len(list(pipeline.config.processed_dir.iterdir())) == 14


def test_a_file_that_cannot_be_moved_keeps_its_ledger_entry_so_a_restart_does_not_classify_it_again(
        tmp_path, classifier, monkeypatch):
    import medge.edge.sources.watch as watch_module

    real_free_name = watch_module._free_name

    def unwritable(target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(watch_module, "_free_name", unwritable)
    with Pipeline(tmp_path, classifier) as pipeline:
        write_atomically(pipeline.inbox / "a.png", png_bytes(small_xray(0, 64)))
        deadline = time.monotonic() + 30
        while pipeline.watch.health()["move_failures"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipeline.watch.health()["move_failures"] == 1
    first = pipeline.payloads("result")
    assert len(first) == 1 and (pipeline.inbox / "a.png").is_file()
    assert pipeline.outbox.stored_outcome("watch:a.png") is not None  # not forgotten: the file is still here
    pipeline.outbox.close()

    monkeypatch.setattr(watch_module, "_free_name", real_free_name)
    with Pipeline(tmp_path, classifier) as restarted:
        restarted.wait_released(1)
    assert (restarted.config.processed_dir / "a.png").is_file()
    assert [r["id"] for r in restarted.payloads("result")] == [r["id"] for r in first]  # no second id
    assert restarted.outbox.stored_outcome("watch:a.png") is None
