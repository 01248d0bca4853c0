"""Explanation heatmaps (edge/explain.py): occlusion sensitivity computed with the committed int8
bundle on the bundled chest X-rays, the PNG overlays of `medge predict --explain` and of the
daemon's watch folder (never on MQTT), the heatmap in the SC sent to a PACS, and the
conversion gate's int8-vs-float heatmap correlation."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from medge.edge.bundle import load_bundle
from medge.edge.classify import Classifier, analyse
from medge.edge.explain import (
    SUFFIX,
    explain,
    explain_analysis,
    fill_value,
    neutral_grey,
    occlusion_heatmap,
    overlay,
    patch_grid,
    score_index,
)
from medge.edge.preprocess import decode_image, preprocess
from tests.fixtures.broker import wait_until
from tests.fixtures.edge import PHI, SessionSubscriber, small_xray, write_atomically, xray_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def classifier(int8_bundle):
    return Classifier(load_bundle(int8_bundle))


def hidden_score(classifier, model_input, centre, index) -> float:
    """The decision score with a patch of the heatmap's size hidden around `centre`."""
    side = model_input.shape[0]
    patch, _ = patch_grid(side)
    top = int(np.clip(centre[0] - patch // 2, 0, side - patch))
    left = int(np.clip(centre[1] - patch // 2, 0, side - patch))
    hidden = model_input.copy()
    hidden[top:top + patch, left:left + patch] = fill_value(model_input, "grey", neutral_grey(classifier.spec))
    return float(classifier.predictor.predict(hidden[np.newaxis])[0][index])


@pytest.mark.parametrize("index", range(3))
def test_the_heatmap_of_a_real_xray_points_where_hiding_the_image_lowers_the_score(classifier, index):
    pixels = decode_image(xray_files()[index]).pixels
    heatmap = explain(classifier, pixels)
    spec = classifier.spec
    assert heatmap.shape == (spec.height, spec.width) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)
    assert np.ptp(heatmap) > 0, "a constant heatmap explains nothing"
    # What a user checks: hiding the hottest region costs more score than hiding the coldest.
    model_input = preprocess(pixels, spec)
    target = score_index(classifier)  # the bundle is binary: P(pneumonia) is the decision score
    hottest = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    coldest = np.unravel_index(np.argmin(heatmap), heatmap.shape)
    assert hidden_score(classifier, model_input, hottest, target) < hidden_score(classifier, model_input, coldest,
                                                                                 target)


def test_the_heatmap_comes_from_one_batched_call_and_a_flat_model_gives_a_zero_map():
    calls = []

    def constant_model(batch):
        calls.append(len(batch))
        return np.tile([0.3, 0.7], (len(batch), 1)).astype(np.float32)

    heatmap = occlusion_heatmap(constant_model, np.random.default_rng(0).random((28, 28, 1), dtype=np.float32), 1,
                                fill="mean")
    _, positions = patch_grid(28)
    assert calls == [len(positions) ** 2 + 1]  # every occluded copy and the original, together
    assert heatmap.shape == (28, 28) and not heatmap.any()


def test_the_overlay_shows_the_image_with_the_heatmap_and_the_disclaimer_band(classifier):
    pixels = decode_image(xray_files()[1]).pixels
    picture = overlay(pixels, explain(classifier, pixels))
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    factor = -(-max(pixels.shape[:2]) // 1024)
    assert picture.shape[1] == pixels.shape[1] // factor <= 1024  # shrunk by a whole factor for display
    band = picture[:40].astype(int)
    yellow = (band[..., 0] > 200) & (band[..., 1] > 180) & (band[..., 2] < 80)
    assert yellow.sum() > 50  # "NOT FOR DIAGNOSTIC USE" burned in, yellow on black
    # The image below the band is tinted (colour), where the X-ray itself is grey.
    body = picture[120:].astype(int)
    assert np.abs(body[..., 0] - body[..., 2]).max() > 40


def test_medge_predict_explain_writes_a_readable_png_per_image(int8_bundle, tmp_path):
    images = xray_files()
    out = tmp_path / "heatmaps"
    done = subprocess.run([sys.executable, "-m", "medge", "predict", str(int8_bundle), *map(str, images),
                           "--explain", str(out)], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["status"] for line in lines] == ["classified"] * 3
    for image, line in zip(images, lines):
        target = out / f"{image.name}{SUFFIX}"
        assert line["heatmap"] == str(target)
        picture = cv2.imread(str(target))
        assert picture is not None and picture.ndim == 3 and min(picture.shape[:2]) > 100


def test_medge_predict_explain_uses_the_daemons_function(classifier):
    """`predict --explain` and the daemon both call explain_analysis on analyse()'s outcome."""
    path = xray_files()[2]
    analysis = analyse(classifier, lambda: decode_image(path), "first")
    explanation = explain_analysis(classifier, analysis)
    # analyse() may decode a large JPEG at reduced size (the model sees 28x28): the heatmap is
    # of the pixels analyse() classified, so compare against those.
    assert np.array_equal(explanation.heatmap, explain(classifier, analysis.decoded.frames[0]))
    assert explanation.png()[:8] == b"\x89PNG\r\n\x1a\n"


def test_medge_predict_explain_into_an_unwritable_place_is_one_line(int8_bundle, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = subprocess.run([sys.executable, "-m", "medge", "predict", str(int8_bundle), str(xray_files()[0]),
                           "--explain", str(blocker / "sub")], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT)
    assert done.returncode != 0
    assert "--explain" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.timeout(180)
def test_the_daemon_writes_a_heatmap_beside_each_processed_file_and_never_on_mqtt(tmp_path, broker, int8_bundle,
                                                                                   edge_daemon):
    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#", client_id="explain-consumer")
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    shutil.copy(xray_files()[0], inbox / "chest.jpeg")
    daemon = edge_daemon(int8_bundle, broker.url, "--explain")
    try:
        ok, data = cv2.imencode(".png", small_xray(1, 256))
        write_atomically(inbox / "second.png", data.tobytes())
        consumer.wait_for(lambda s: len(s.unique("result")) == 2, 60, "2 results")
        processed = inbox / "processed"
        wait_until(lambda: (processed / "second.png.heatmap.png").exists(), 20,
                   f"the heatmaps\n{daemon.log_text()[-3000:]}")
        assert daemon.stop() == 0
    finally:
        consumer.close()
    assert sorted(p.name for p in processed.iterdir()) == ["chest.jpeg", "chest.jpeg.heatmap.png",
                                                           "second.png", "second.png.heatmap.png"]
    for name in ("chest.jpeg.heatmap.png", "second.png.heatmap.png"):
        assert cv2.imread(str(processed / name)) is not None
    raw = "\n".join(json.dumps(payload) for _, payload, _ in consumer.messages)
    assert "heatmap" not in raw.lower() and "png" not in raw.lower()
    assert max(len(json.dumps(payload)) for _, payload, _ in consumer.messages) < 4000  # no image rides along


class CapturingPacs:
    """A real DICOM Storage SCP (pynetdicom, real associations) keeping what it is sent."""

    def __init__(self):
        from pynetdicom import AE, evt

        from medge.broker import free_port
        from medge.edge.pacs.senders import SC_STORAGE, SR_STORAGE, SYNTAXES

        self.port = free_port()
        self.datasets = []
        self.lock = threading.Lock()
        ae = AE(ae_title="CAPTURE")
        ae.add_supported_context(SC_STORAGE, SYNTAXES)
        ae.add_supported_context(SR_STORAGE, SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self.lock:
            self.datasets.append(dataset)
        return 0x0000

    def close(self):
        self.server.shutdown()


@pytest.mark.timeout(240)
def test_the_secondary_capture_sent_to_the_pacs_shows_the_heatmap(tmp_path, broker, int8_bundle, edge_daemon):
    from medge.broker import free_port, wait_for_port
    from tests.fixtures.dicom import CR_IMAGE, storescu, write_xray_dicom

    pacs = CapturingPacs()
    port = free_port()
    try:
        daemon = edge_daemon(int8_bundle, broker.url, "--dicom-port", str(port), "--pacs",
                             f"CAPTURE@127.0.0.1:{pacs.port}",
                             env={"MEDGE_PACS_RETRY_MIN_S": "0.2", "MEDGE_PACS_RETRY_MAX_S": "1"})
        assert wait_for_port(port, timeout=90), daemon.log_text()[-3000:]
        cr = write_xray_dicom(tmp_path / "cr.dcm", small_xray(2, 256), modality="CR", sop_class=CR_IMAGE, tags=PHI)
        storescu(port, cr)
        wait_until(lambda: len(pacs.datasets) == 2, 90, f"the SR and the SC\n{daemon.log_text()[-3000:]}")
    finally:
        pacs.close()
    [sc] = [d for d in pacs.datasets if d.Modality == "OT"]
    assert "HEATMAP" in sc.ImageType
    rgb = sc.pixel_array.astype(int)
    # The source is grey; the blended heatmap gives colour somewhere below the text band.
    assert np.abs(rgb[80:, :, 0] - rgb[80:, :, 2]).max() > 40


def test_the_conversion_gate_records_the_heatmap_correlation(converted_int8_bundle):
    manifest = json.loads((converted_int8_bundle / "medge.json").read_text())
    from medge.convert.explain_check import ADVISORY_CORRELATION
    from tests.fixtures.bundles import FIXTURE_HEATMAP_FLOOR

    gate = manifest["artifacts"][0]["gate"]
    assert gate["heatmap_images"] > 0
    assert ADVISORY_CORRELATION == 0.9  # issue 13's figure: below it `medge convert` warns
    assert gate["min_heatmap_correlation"] == FIXTURE_HEATMAP_FLOOR  # the floor it was converted with
    assert gate["heatmap_correlation"] >= gate["min_heatmap_correlation"]
    assert -1.0 <= gate["heatmap_correlation_min"] <= gate["heatmap_correlation"]
    report = json.loads((converted_int8_bundle / "conversion_report.json").read_text())
    assert report["artifacts"][0]["heatmap_correlation"] == pytest.approx(gate["heatmap_correlation"])


def test_by_default_loose_heatmaps_are_a_warning_not_a_refusal(multiclass_run, tmp_path):
    """A weak multi-class model's int8 heatmaps follow the float ones loosely (r ~0.87 on this
    fixture) while its decisions agree: convert records it and warns, and still ships."""
    from tests.fixtures.bundles import convert_run

    messages = []
    out = convert_run(multiclass_run, tmp_path / "bundle", "tflite-int8", min_heatmap_correlation=None,
                      log=messages.append)
    gate = json.loads((out / "medge.json").read_text())["artifacts"][0]["gate"]
    assert gate["min_heatmap_correlation"] is None
    if gate["heatmap_correlation"] < 0.9:
        assert "heatmaps: int8 vs float correlation" in gate["heatmap_warning"]
        assert any("WARNING tflite-int8: heatmaps" in m for m in messages)
    else:
        assert gate["heatmap_warning"] is None


def test_a_heatmap_floor_above_what_int8_reaches_fails_the_gate(trained_run, tmp_path):
    from medge.convert.gate import GateFailed
    from tests.fixtures.bundles import convert_run

    with pytest.raises(GateFailed, match="heatmap correlation"):
        convert_run(trained_run, tmp_path / "strict", "tflite-int8", min_heatmap_correlation=1.0, heatmap_samples=30)
    assert not (tmp_path / "strict").exists() and (tmp_path / "strict.rejected").is_dir()


def test_a_write_job_keeps_the_model_input_for_the_writers_heatmap_and_old_jobs_still_read(classifier):
    from medge.edge.pacs.delivery import decode_job_pixels, encode_frame

    pixels = small_xray(0, 256)
    model_input = preprocess(pixels, classifier.spec)
    frame, stored = decode_job_pixels(encode_frame(pixels, model_input))
    assert np.array_equal(frame, pixels) and np.array_equal(stored, model_input)
    assert np.array_equal(explain(classifier, model_input=stored), explain(classifier, pixels))
    frame, stored = decode_job_pixels(encode_frame(pixels))  # a job queued before heatmaps existed
    assert np.array_equal(frame, pixels) and stored is None
