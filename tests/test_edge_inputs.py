"""The watch folder and the worker with the real int8 model, in one process (no broker): bad
inputs, unusual images, the frame policy, not_applicable, PHI, and the crash-safe ledger."""
from __future__ import annotations

import io
import json
import resource
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
from medge.edge.sources.watch import SOURCE as WATCH
from medge.edge.worker import Worker
from tests.fixtures.edge import PHI, small_xray, write_atomically, write_tiff, xray_dicom, xray_files


@pytest.fixture(scope="module")
def classifier(int8_bundle):
    return Classifier(load_bundle(int8_bundle))


class Pipeline:
    """WatchFolder -> Worker -> Outbox with the real classifier: the daemon minus MQTT."""

    def __init__(self, root: Path, classifier, frames: str = "first", max_pixels: int | None = None,
                 stable_s: float = 0.3, outbox_max: int | None = None, max_file_mb: float | None = None,
                 grace_s: float | None = None):
        flags = {"watch.dir": str(root / "in"), "state.dir": str(root / "state"), "site": "s", "device": "d",
                 "dicom.frames": frames, "input.max_pixels": max_pixels, "state.outbox_max": outbox_max,
                 "input.max_file_mb": max_file_mb, "watch.stable_s": stable_s, "watch.poll_s": 0.05,
                 "watch.grace_s": grace_s}
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
        # Built as the daemon builds it (the registry's SourceType); its events go to the outbox.
        self.watch = WATCH.build(self.config.watch, self.config,
                                 lambda level, kind, message: self.worker.event(level, kind, message, source="watch"))

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
    # Decompression bombs a review sent: 30000x30000 (0.9 GB decoded) and 16-bit RGB 35000x35000
    # (7.4 GB) in a few hundred kB of valid TIFF; NaN float pixels; a format whose header is not
    # checked (WebP); a file over the size cap.
    bomb8 = write_tiff(tmp_path / "bomb8.tif", 30000, 30000).read_bytes()
    bomb16 = write_tiff(tmp_path / "bomb16.tif", 35000, 35000, bits=16, samples=3).read_bytes()
    nan_tiff = write_tiff(tmp_path / "nan.tif", 64, 64, bits=32, sample_format=3,
                          row=np.full(64, np.nan, np.float32).tobytes()).read_bytes()
    ok, webp = cv2.imencode(".webp", small_xray(0, 64))
    hidden_bomb = jpeg_dicom_declaring(tmp_path / "hidden_bomb.dcm", small_xray(0, 64), 30000, 30000)
    bad = {
        "zero.jpg": (b"", "empty file"),
        "truncated.jpeg": (jpeg[: len(jpeg) // 2], "not a readable image"),
        "corrupt.png": (corrupted, "not a readable image"),
        "notes.txt": (b"Patient arrived at 10:32, image to follow\n", "not a readable image"),
        "bomb.png": (png_bytes(huge), "over the limit of 4000000"),
        "no_pixels.dcm": (no_pixels.read_bytes(), "DICOM has no pixel data"),
        "odd_colour.dcm": (odd_colour.read_bytes(), "unsupported photometric interpretation 'HSV'"),
        "bomb8.tif": (bomb8, "image is 30000x30000 pixels, over the limit of 4000000 (refused before decoding)"),
        "bomb16.tiff": (bomb16, "image is 35000x35000 pixels, over the limit of 4000000"),
        "nan.tif": (nan_tiff, "pixel data contains NaN or infinite values"),
        "image.webp": (webp.tobytes(), "not a readable image (not JPEG, PNG, BMP, TIFF or DICOM)"),
        "hidden_bomb.dcm": (hidden_bomb.read_bytes(), "compressed frame 0 is 30000x30000 pixels but the DICOM header "
                                                      "says 64x64 (refused before decoding)"),
    }
    oversized = "Smith_John_sparse.dcm"  # 3 GB would do the same; a sparse 40 MB file is enough here
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Pipeline(tmp_path, classifier, max_pixels=4_000_000, max_file_mb=32) as pipeline:
        for name, (data, _) in bad.items():  # exporters often name files after the patient
            write_atomically(pipeline.inbox / f"Smith_John_{name}", data)
        with open(pipeline.inbox / f".{oversized}.part", "wb") as handle:
            handle.truncate(40 * 1024 * 1024)
        (pipeline.inbox / f".{oversized}.part").rename(pipeline.inbox / oversized)
        bad[oversized[len("Smith_John_"):]] = (None, "file is 41943040 bytes, over the limit of 33554432")
        pipeline.wait_released(len(bad))
        write_atomically(pipeline.inbox / "good.jpeg", jpeg)
        pipeline.wait_released(len(bad) + 1)

    # Nothing was decoded to find out: the process's peak memory did not grow by a bomb's size.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 300 * 1024  # kB
    rejected = pipeline.config.rejected_dir
    for name, (data, reason) in bad.items():
        if data is not None:
            assert (rejected / f"Smith_John_{name}").read_bytes() == data  # kept aside untouched
        why = (rejected / f"Smith_John_{name}.why.txt").read_text()
        assert reason in why, name
        # The reason kept next to the file names that file (not "input.jpg"); events never do.
        assert why.startswith(f"Smith_John_{name}: "), why
    assert (pipeline.config.processed_dir / "good.jpeg").is_file()
    assert sorted(p.name for p in pipeline.inbox.iterdir()) == ["processed", "rejected"]
    errors = [validate(p) for p in pipeline.payloads("error")]
    assert len(errors) == len(bad) and {e["kind"] for e in errors} == {"rejected_input"}
    messages = " ".join(e["message"] for e in errors)
    for _, reason in bad.values():
        assert reason in messages
    assert "Smith" not in messages and "John" not in messages  # events never carry the file name
    assert all(e["message"].startswith("input: ") for e in errors), messages
    results = [validate(p) for p in pipeline.payloads("result")]
    assert len(results) == 1 and results[0]["status"] == "classified"
    # decoded for the bundle's spec (reduced JPEG decoding), as `medge predict` and the daemon do
    expected = classifier.classify(decode_image(xray_files()[0], spec=classifier.spec).pixels)
    assert results[0]["score"] == pytest.approx(expected.score, abs=1e-6)  # what `medge predict` says
    assert results[0]["class"] == expected.label


def jpeg_dicom_declaring(path: Path, gray: np.ndarray, width: int, height: int) -> Path:
    """A JPEG Baseline DICOM whose header says the image's real size but whose encapsulated
    JPEG's own frame header declares width x height: the size the decoder would allocate."""
    import struct

    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    xray_dicom(path, size=gray.shape[0])
    dataset = pydicom.dcmread(path)
    ok, encoded = cv2.imencode(".jpg", gray)
    jpeg = bytearray(encoded.tobytes())
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    dataset.PixelData = encapsulate([bytes(jpeg)])
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.save_as(path, enforce_file_format=True)
    return path


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


def test_degenerate_images_are_classified_with_a_warning(tmp_path, classifier):
    inputs = {
        "one_pixel.png": png_bytes(np.full((1, 1), 117, np.uint8)),
        "flat.png": png_bytes(np.full((64, 64), 200, np.uint8)),
        "normal.png": png_bytes(small_xray(0, 64)),
    }
    # The OOD guard refuses flat images (tests/test_edge_ood.py); this test is about the warnings themselves.
    classifier = Classifier(classifier.bundle, ood_mode="off")
    with Pipeline(tmp_path, classifier) as pipeline:
        for name, data in inputs.items():
            write_atomically(pipeline.inbox / name, data)
        pipeline.wait_released(len(inputs))
    assert pipeline.payloads("error") == []
    results = [validate(p) for p in pipeline.payloads("result")]
    assert [r["status"] for r in results] == ["classified"] * 3
    warned = sorted(" | ".join(r["warnings"]) for r in results if "warnings" in r)
    assert len(warned) == 2, warned
    assert "image is flat (every pixel has the value 200)" in warned[0]
    assert "image is only 1x1 pixels" in warned[1] and "flat" in warned[1]


def test_the_max_frame_policy_follows_the_decision_rule_when_the_positive_class_comes_first(tmp_path, int8_bundle):
    """`max` reports the frame the decision rule calls most positive: P(positive class), wherever
    that class sits in the class list (it used to assume classes[0] is the negative one)."""
    from medge.edge.classify import analyse

    flipped = tmp_path / "positive_first"
    shutil.copytree(int8_bundle, flipped)
    manifest = json.loads((flipped / "medge.json").read_text())
    assert manifest["classes"][0] == "normal"
    manifest["positive_class"] = "normal"  # the first class is now the finding
    for key in ("files", "file_sizes"):
        manifest.pop(key, None)
    write_manifest(flipped, manifest)
    classifier = Classifier(load_bundle(flipped))
    series = xray_dicom(tmp_path / "series.dcm", frames=3)
    frames = decode_image(series).frames
    scores = [classifier.classify(frame).probabilities["normal"] for frame in frames]
    assert len(set(scores)) == 3, scores  # the frames differ, so the choice is visible
    analysis = analyse(classifier, lambda: decode_image(series), frames="max")
    [chosen] = analysis.frames
    assert chosen.index == int(np.argmax(scores))
    assert chosen.classification.score == pytest.approx(max(scores), abs=1e-6)
    assert analysis.policy == "max" and analysis.frame_count == 3


def nan_onnx_bundle(onnx_bundle: Path, target: Path) -> Path:
    """A copy of the real ONNX bundle whose output layer was damaged to NaN (a corrupted weight
    file), re-hashed so it loads: the runtime really answers NaN."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    shutil.copytree(onnx_bundle, target)
    manifest = json.loads((target / "medge.json").read_text())
    model_path = target / manifest["artifacts"][0]["file"]
    model = onnx.load(model_path)
    floats = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    producers = {output: node for node in model.graph.node for output in node.output}
    # Walk back from the scores output (not the OOD features, the file's second output) to the
    # nearest node that reads a float constant.
    pending, seen = [model.graph.output[0].name], set()
    while pending:
        node = producers.get(pending.pop(0))
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names = [name for name in node.input if name in floats]
        if names:
            for name in names:
                values = numpy_helper.to_array(floats[name])
                floats[name].CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), name))
            break
        pending += list(node.input)
    onnx.save(model, model_path)
    manifest["artifacts"][0]["sha256"] = __import__("hashlib").sha256(model_path.read_bytes()).hexdigest()
    for key in ("files", "file_sizes"):
        manifest.pop(key, None)
    write_manifest(target, manifest)
    return target


def test_a_model_answering_nan_gives_an_error_event_never_a_result(tmp_path, onnx_bundle):
    broken = Classifier(load_bundle(nan_onnx_bundle(onnx_bundle, tmp_path / "nan_bundle")))
    with Pipeline(tmp_path, broken) as pipeline:
        write_atomically(pipeline.inbox / "Doe_chest.png", png_bytes(small_xray(0, 64)))
        pipeline.wait_released(1)
    assert pipeline.payloads("result") == []
    [event] = [validate(p) for p in pipeline.payloads("error")]
    assert event["kind"] == "rejected_input" and "non-finite score (nan)" in event["message"]
    assert b"NaN" not in pipeline.raw() and b"nan," not in pipeline.raw()
    rejected = pipeline.config.rejected_dir
    assert (rejected / "Doe_chest.png").is_file()
    assert "non-finite score" in (rejected / "Doe_chest.png.why.txt").read_text()


# ------------------------------------------------------------------------------ slow writers and odd entries

# A real writer in another process: `rate` bytes per second of `data`, holding the file open
# throughout ("hold") or opening, appending and closing it for every chunk ("reopen").
SLOW_WRITER = """
import sys, time
target, source, mode, rate, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
data = open(source, "rb").read()[:limit]
chunks = [data[i:i + rate] for i in range(0, len(data), rate)]
if mode == "hold":
    with open(target, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
            handle.flush()
            time.sleep(1.0)
else:
    for chunk in chunks:
        with open(target, "ab") as handle:
            handle.write(chunk)
        time.sleep(1.0)
"""


def slow_write(target: Path, data: bytes, mode: str, rate: int = 1024, limit: int | None = None):
    import subprocess
    import sys

    source = target.parent.parent / f"{target.name}.source"
    source.write_bytes(data)
    return subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target), str(source), mode, str(rate),
                             str(limit or len(data))])


def small_jpeg(index: int = 0, size: int = 96) -> bytes:
    ok, data = cv2.imencode(".jpg", small_xray(index, size), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("mode", ["hold", "reopen"])
def test_a_jpeg_written_at_one_kilobyte_a_second_is_classified_not_rejected(tmp_path, classifier, mode):
    """"hold": inotify sees the file open for writing, so it is not taken; "reopen": every chunk
    is closed, the file is taken early, does not decode and is offered again until complete."""
    data = small_jpeg()
    assert len(data) > 3 * 1024  # at least four seconds of writing
    with Pipeline(tmp_path, classifier, stable_s=0.3, grace_s=10.0) as pipeline:
        writer = slow_write(pipeline.inbox / "slow.jpeg", data, mode)
        assert writer.wait(timeout=60) == 0
        pipeline.wait_released(1, timeout=30)
        health = pipeline.watch.health()
    assert health["notifications"] == "inotify"
    assert pipeline.payloads("error") == []
    assert (pipeline.config.processed_dir / "slow.jpeg").read_bytes() == data
    [result] = pipeline.payloads("result")
    assert validate(result)["status"] == "classified"
    if mode == "reopen":
        assert health["retried"] >= 1, health  # taken too early at least once, and not rejected


def test_a_file_that_stays_truncated_is_rejected_once_the_grace_period_is_over(tmp_path, classifier):
    data = small_jpeg()
    with Pipeline(tmp_path, classifier, stable_s=0.3, grace_s=3.0) as pipeline:
        writer = slow_write(pipeline.inbox / "cut.jpeg", data, "reopen", limit=2 * 1024)  # the writer dies
        assert writer.wait(timeout=60) == 0
        stopped = time.monotonic()
        pipeline.wait_released(1, timeout=30)
        waited = time.monotonic() - stopped
        health = pipeline.watch.health()
    assert health["rejected"] == 1 and health["retried"] >= 1
    assert waited >= 3.0 - 1.0  # rejected only once unchanged for about grace_s (the last write was ~1 s earlier)
    assert "not a readable image" in (pipeline.config.rejected_dir / "cut.jpeg.why.txt").read_text()
    [event] = pipeline.payloads("error")
    assert validate(event)["kind"] == "rejected_input"


def test_a_bad_file_with_a_250_character_name_is_moved_aside_with_a_shortened_sidecar(tmp_path, classifier):
    import os

    long_name = "Smith_John_" + "x" * 235 + ".png"
    assert len(long_name) == 250

    def move_in(name: str, data: bytes) -> None:  # written elsewhere, renamed in: the name is at the limit
        staged = tmp_path / "staged"
        staged.write_bytes(data)
        os.replace(staged, pipeline.inbox / name)

    with Pipeline(tmp_path, classifier) as pipeline:
        move_in(long_name, b"not an image at all")
        move_in("Smith_John_" + "y" * 233 + ".jpeg", small_jpeg())
        pipeline.wait_released(2)
        # The same long name again: the numbered copy must fit too.
        move_in(long_name, b"still not an image")
        pipeline.wait_released(3)
    rejected = sorted(p.name for p in pipeline.config.rejected_dir.iterdir())
    assert long_name in rejected and len(rejected) == 4, rejected
    sidecars = [name for name in rejected if name.endswith(".why.txt")]
    assert len(sidecars) == 2 and all(len(name.encode()) <= 255 and name.startswith("Smith_John_xxx")
                                      for name in sidecars), sidecars
    for sidecar in sidecars:
        assert "not a readable image" in (pipeline.config.rejected_dir / sidecar).read_text()
    assert list(pipeline.inbox.glob("Smith*")) == []
    assert len(pipeline.payloads("result")) == 1 and len(pipeline.payloads("error")) == 2


def test_fifos_devices_and_dangling_links_are_rejected_without_being_read(tmp_path, classifier):
    import os

    with Pipeline(tmp_path, classifier) as pipeline:
        os.mkfifo(pipeline.inbox / "scan.png")  # reading it would block the worker forever
        os.symlink("/dev/zero", pipeline.inbox / "zero.png")  # reading it would never end
        os.symlink(tmp_path / "nowhere.png", pipeline.inbox / "dangling.png")
        os.symlink(tmp_path, pipeline.inbox / "folder_link")  # a link to a folder: reported, left alone
        write_atomically(pipeline.inbox / "good.jpeg", small_jpeg())
        pipeline.wait_released(4)
        time.sleep(0.5)
    rejected = pipeline.config.rejected_dir
    assert (rejected / "scan.png").is_fifo()
    assert (rejected / "zero.png").is_symlink() and os.readlink(rejected / "zero.png") == "/dev/zero"
    assert (rejected / "dangling.png").is_symlink()
    assert "not a regular file (FIFO); it was not read" in (rejected / "scan.png.why.txt").read_text()
    assert "symbolic link to a character device" in (rejected / "zero.png.why.txt").read_text()
    assert "symbolic link to nothing" in (rejected / "dangling.png.why.txt").read_text()
    assert (pipeline.inbox / "folder_link").is_symlink()
    events = [validate(p) for p in pipeline.payloads("error")]
    assert sorted(e["kind"] for e in events) == ["rejected_input"] * 3 + ["skipped_input"]
    assert all("scan" not in e["message"] and "zero" not in e["message"] for e in events)
    assert pipeline.watch.health()["not_regular"] == 3
    assert [r["status"] for r in pipeline.payloads("result")] == ["classified"]
