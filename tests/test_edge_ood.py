"""The out-of-distribution guard on the device (edge/ood.py), on the committed bundles and real images:
a real daemon through a real broker refuses noise, constant, CT, MR and fundus images
(not_applicable / out_of_distribution, never a class) while the chest X-rays are classified;
`medge predict --ood warn|off`; a bundle made before the guard still loads, guard off."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import jsonschema
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medge.data import RETINAMNIST
from medge.edge.bundle import MANIFEST_NAME, load_bundle, write_manifest
from medge.edge.ood import OOD_FILE
from medge.edge.schemas import load_schema
from tests.fixtures.edge import SessionSubscriber, write_atomically, xray_files

RESULT_SCHEMA = load_schema("result")


def write_png(path, image) -> None:
    ok, data = cv2.imencode(".png", image)
    write_atomically(path, data.tobytes())


def fundus() -> np.ndarray:
    """A real RetinaMNIST fundus photograph, upscaled as a camera export would be (RGB -> BGR for cv2)."""
    image = np.load(RETINAMNIST)["test_images"][0]
    return cv2.cvtColor(cv2.resize(image, (224, 224), interpolation=cv2.INTER_CUBIC), cv2.COLOR_RGB2BGR)


def noise() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)


def out_of_distribution_inputs(folder):
    """name -> a writer putting that input in `folder` (atomically, as an exporter would)."""
    return {
        "noise": lambda: write_png(folder / "noise.png", noise()),
        "constant": lambda: write_png(folder / "white.png", np.full((256, 256), 255, np.uint8)),
        "ct": lambda: write_atomically(folder / "ct.dcm", open(get_testdata_file("CT_small.dcm"), "rb").read()),
        "mr": lambda: write_atomically(folder / "mr.dcm", open(get_testdata_file("MR_small.dcm"), "rb").read()),
        "fundus": lambda: write_png(folder / "fundus.png", fundus()),
    }


def test_the_daemon_refuses_out_of_distribution_images_and_classifies_the_chest_xrays(tmp_path, broker, int8_bundle,
                                                                                      edge_daemon):
    assert load_bundle(int8_bundle).manifest.ood, "the committed bundle has no OOD reference: regenerate it"
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    consumer = SessionSubscriber(broker.port, "medge/test/dev1/#", client_id="ood-consumer")
    daemon = edge_daemon(int8_bundle, broker.url)
    outcomes = {}
    try:
        consumer.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 20, "online")
        inputs = out_of_distribution_inputs(inbox)
        for index, path in enumerate(xray_files()):
            inputs[f"xray{index}"] = lambda path=path, index=index: shutil.copy(path, inbox / f"xray{index}.jpeg")
        for name, write in inputs.items():  # one at a time, so each result is known to be this input's
            seen = len(consumer.unique("result"))
            write()
            consumer.wait_for(lambda s, seen=seen: len(s.unique("result")) > seen, 30, f"the result for {name}")
            outcomes[name] = list(consumer.unique("result").values())[-1]
        assert daemon.stop() == 0
    finally:
        consumer.close()
    for name, result in outcomes.items():
        jsonschema.validate(result, RESULT_SCHEMA)
        assert result["ood"]["threshold"] > 0
        if name.startswith("xray"):
            assert result["status"] == "classified", (name, result)
            assert result["ood"]["score"] <= result["ood"]["threshold"]
        else:
            assert result["status"] == "not_applicable", (name, result)
            assert result["reason"] == "out_of_distribution"
            assert "class" not in result and "score" not in result and "probabilities" not in result
            assert result["ood"].get("check") or result["ood"]["score"] > result["ood"]["threshold"], (name, result)


def predict(bundle, image, *flags) -> dict:
    completed = subprocess.run([sys.executable, "-m", "medge", "predict", str(bundle), str(image), *flags],
                               capture_output=True, text=True, timeout=120)
    return json.loads(completed.stdout.strip().splitlines()[-1]) | {"stderr": completed.stderr}


@pytest.fixture
def noise_png(tmp_path):
    write_png(tmp_path / "noise.png", noise())
    return tmp_path / "noise.png"


def test_predict_refuses_warns_or_skips_as_ood_mode_says(onnx_bundle, noise_png):
    refused = predict(onnx_bundle, noise_png)
    assert refused["status"] == "not_applicable" and refused["reason"] == "out_of_distribution"
    assert refused["ood"].get("check") == "noise" or refused["ood"]["score"] > refused["ood"]["threshold"]
    warned = predict(onnx_bundle, noise_png, "--ood", "warn")
    assert warned["status"] == "classified"
    assert warned["ood"] == refused["ood"]
    assert any("out of distribution" in warning for warning in warned["warnings"])
    skipped = predict(onnx_bundle, noise_png, "--ood", "off")
    assert skipped["status"] == "classified" and "ood" not in skipped
    xray = predict(onnx_bundle, xray_files()[1])  # [0] is refused by the seconds-trained committed model
    assert xray["status"] == "classified" and xray["ood"]["score"] <= xray["ood"]["threshold"]


def test_a_bundle_made_before_the_guard_still_loads_with_a_warning_that_it_is_off(tmp_path, int8_bundle, noise_png):
    old = shutil.copytree(int8_bundle, tmp_path / "old-bundle")
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    del manifest["ood"]
    (old / OOD_FILE).unlink()
    (old / MANIFEST_NAME).unlink()
    write_manifest(old, manifest)
    result = predict(old, noise_png)
    assert result["status"] == "classified" and "ood" not in result
    assert "guard is off" in result["stderr"]
