"""`medge predict`: one JSON line per image from the edge runtime, equal to the daemon's decision."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from medge.data import chest_xray_sample_files
from medge.edge.bundle import MANIFEST_NAME, load_bundle, write_manifest
from medge.edge.classify import Classifier
from medge.edge.preprocess import decode_image
from medge.main import cli
from tests.fixtures.dicom import CR_IMAGE, write_xray_dicom


def write_cr_dicom(jpeg: Path, target: Path, modality: str = "CR") -> Path:
    """A 12-bit chest radiograph DICOM made from a real chest X-ray, as a CR scanner stores it."""
    gray = cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE)
    gray = cv2.resize(gray, (gray.shape[1] // 4, gray.shape[0] // 4), interpolation=cv2.INTER_AREA)
    return write_xray_dicom(target, gray, modality=modality, sop_class=CR_IMAGE)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    jpeg = chest_xray_sample_files()[0]
    gray = cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE)
    small = cv2.resize(gray, (256, 256), interpolation=cv2.INTER_AREA)
    small[0, 0], small[0, 1] = 0, 255  # full range, so 16-bit windowing gives back the same display pixels
    cv2.imwrite(str(folder / "chest.png"), small)
    cv2.imwrite(str(folder / "chest16.png"), small.astype(np.uint16) * 257)
    (folder / "broken.jpeg").write_bytes(jpeg.read_bytes()[:300])
    return {"jpeg": jpeg, "png": folder / "chest.png", "png16": folder / "chest16.png",
            "dicom": write_cr_dicom(jpeg, folder / "chest.dcm"), "broken": folder / "broken.jpeg"}


def predict(*args):
    result = CliRunner().invoke(cli, ["predict", *map(str, args)])
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result, lines


def test_predict_prints_one_json_line_per_image_for_every_supported_format(int8_bundle, images):
    paths = [images[k] for k in ("jpeg", "png", "png16", "dicom")]
    result, lines = predict(int8_bundle, *paths)
    assert result.exit_code == 0, result.output
    assert len(lines) == 4
    bundle = load_bundle(int8_bundle)
    for path, line in zip(paths, lines):
        assert line["file"] == str(path)
        assert line["status"] == "classified"
        assert line["class"] in bundle.classes
        assert 0.0 <= line["score"] <= 1.0
        assert line["threshold"] == pytest.approx(bundle.threshold)
        assert line["positive"] == (line["score"] >= bundle.threshold)
        assert line["class"] == ("pneumonia" if line["positive"] else "normal")
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert {"decode", "preprocess", "inference", "total"} <= set(line["timing_ms"])
        assert line["model"]["sha256"] == bundle.artifact().sha256 and line["runtime"] == "litert"
    assert lines[3]["dicom"] == {"modality": "CR", "body_part": "CHEST"}
    # The 16-bit PNG holds the same picture as the 8-bit one: same display pixels, same decision.
    assert lines[2]["score"] == lines[1]["score"]


def test_predict_equals_the_classifier_the_daemon_calls(int8_bundle, onnx_bundle, images):
    from medge.edge.classify import analyse
    from medge.edge.payloads import result_payload

    for bundle_path in (int8_bundle, onnx_bundle):
        classifier = Classifier(load_bundle(bundle_path))
        result, lines = predict(bundle_path, images["jpeg"], images["dicom"])
        assert result.exit_code == 0, result.output
        for path, line in zip((images["jpeg"], images["dicom"]), lines):
            # What the daemon publishes for this file: the same function, the same rounding.
            analysis = analyse(classifier, lambda path=path: decode_image(path))
            published = result_payload(site="s", device="d", source="watch", input_ref="0" * 16, model={},
                                       classification=analysis.frames[0].classification, timing_ms={})
            assert (line["class"], line["score"], line["positive"]) == (published["class"], published["score"],
                                                                        published["positive"])
            assert line["probabilities"] == published["probabilities"]
            assert line["score"] == pytest.approx(analysis.frames[0].classification.score, abs=5e-7)
    assert lines[0]["runtime"] == "onnxruntime" and lines[0]["model"]["format"] == "onnx-int8"


def test_predict_prints_rounded_scores_and_no_runtime_chatter(int8_bundle, images):
    """`medge predict` as a user runs it: no "INFO: Created TensorFlow Lite XNNPACK delegate"
    on stderr (only with --verbose), scores with 6 decimals, not 17 digits."""
    import re
    import subprocess
    import sys

    def run(*flags):
        return subprocess.run([sys.executable, "-m", "medge", "predict", *flags, str(int8_bundle), str(images["png"])],
                              capture_output=True, text=True, timeout=120)

    quiet = run()
    assert quiet.returncode == 0, quiet.stderr
    assert "XNNPACK" not in quiet.stderr and quiet.stderr.strip() == ""
    line = json.loads(quiet.stdout)
    numbers = re.findall(r'"(?:score|threshold|normal|pneumonia)": (-?[0-9.e-]+)', quiet.stdout)
    expected = 4 + (2 if "ood" in line else 0)  # the OOD guard's {score, threshold} too
    assert len(numbers) == expected and all(len(n.split(".")[-1]) <= 6 for n in numbers), quiet.stdout
    assert line["score"] == round(line["score"], 6)
    verbose = run("--verbose")
    assert verbose.returncode == 0 and "XNNPACK" in verbose.stderr
    assert json.loads(verbose.stdout)["score"] == line["score"]


def test_unreadable_image_gets_an_error_line_and_exit_1_but_others_are_classified(int8_bundle, images, tmp_path):
    result, lines = predict(int8_bundle, images["broken"], tmp_path / "missing.png", images["png"])
    assert result.exit_code == 1
    assert [line["status"] for line in lines] == ["error", "error", "classified"]
    assert "broken.jpeg" in lines[0]["error"] and "not a readable image" in lines[0]["error"]
    assert "missing.png" in lines[1]["error"]
    assert "2 of 3 image(s) could not be classified" in result.stderr


def test_predict_refuses_a_tampered_bundle(int8_bundle, images, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(int8_bundle, copy)
    model = copy / "model_int8.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    result, lines = predict(copy, images["png"])
    assert result.exit_code == 1 and not lines
    assert "model_int8.tflite does not match its sha256" in result.stderr


def test_inputs_outside_the_declared_scope_are_not_applicable(int8_bundle, images, tmp_path):
    from tests.fixtures.dicom import bundled_dicom

    copy = tmp_path / "bundle"
    shutil.copytree(int8_bundle, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["applicability"] = {"modalities": ["CR", "DX"], "body_parts": ["CHEST"]}
    write_manifest(copy, manifest)
    result, lines = predict(copy, bundled_dicom("CT_small.dcm"), images["dicom"], images["png"])
    assert result.exit_code == 0, result.output
    assert lines[0]["status"] == "not_applicable" and "modality CT" in lines[0]["reason"] and "class" not in lines[0]
    assert lines[1]["status"] == "classified" and lines[2]["status"] == "classified"


def test_runtime_choice_is_checked(onnx_bundle, images):
    result, _ = predict("--runtime", "litert", onnx_bundle, images["png"])
    assert result.exit_code == 1 and "cannot run onnx models" in result.stderr
    result, _ = predict("--format", "tflite-f32", onnx_bundle, images["png"])
    assert result.exit_code == 1 and "has no 'tflite-f32' model" in result.stderr
