"""The refer band on the device: real images whose calibrated score falls inside the bundle's
band come back `decision: refer` from `medge predict` and from a real daemon through a real
broker; outside it they are decided; a bundle without a band never refers. No TensorFlow."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from medge.data import PNEUMONIAMNIST
from medge.edge.bundle import MANIFEST_NAME, load_bundle
from medge.edge.classify import Classifier
from medge.edge.errors import BundleError
from tests.fixtures.broker import Subscriber
from tests.fixtures.dashboard import validated

IMAGES = 24


def write_test_images(folder: Path, count: int = IMAGES) -> list[Path]:
    """Real PneumoniaMNIST test images as PNG files (the test split: never used to choose anything)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.load(PNEUMONIAMNIST)["test_images"][:count]
    paths = []
    for index, image in enumerate(images):
        path = folder / f"chest-{index:03d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def scores_of(bundle_path: Path, paths: list[Path]) -> np.ndarray:
    classifier = Classifier(load_bundle(bundle_path))
    return np.array([classifier.classify(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)).score for p in paths])


def with_decision(source: Path, target: Path, decision: dict | None) -> Path:
    """A copy of a real bundle whose manifest carries `decision` (None: the section removed, as in a
    bundle made before the refer band). The manifest is unsigned, as the committed bundles are."""
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    manifest.pop("decision", None)
    if decision is not None:
        manifest["decision"] = decision
    (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return target


def band_around_threshold(scores: np.ndarray, threshold: float) -> dict:
    """A band holding the middle third of these images' scores and the threshold, its edges
    half-way between neighbouring scores (so rounding to 6 decimals cannot move an image across)."""
    distinct = np.unique(scores)
    assert len(distinct) >= 6, "the test images must spread over several scores"

    def between(value: float) -> float:
        index = int(np.clip(np.searchsorted(distinct, value), 1, len(distinct) - 1))
        return float((distinct[index - 1] + distinct[index]) / 2)

    low = min(between(np.quantile(scores, 1 / 3)), threshold)
    high = max(between(np.quantile(scores, 2 / 3)), threshold)
    return {"method": "band", "low": low, "high": high, "target_accuracy": 0.95}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_test_images(tmp_path_factory.mktemp("refer-images"))


@pytest.fixture(scope="module")
def banded(int8_bundle, images, tmp_path_factory) -> tuple[Path, dict, np.ndarray]:
    scores = scores_of(int8_bundle, images)
    band = band_around_threshold(scores, load_bundle(int8_bundle).threshold)
    return with_decision(int8_bundle, tmp_path_factory.mktemp("banded") / "bundle", band), band, scores


def expected_decision(score: float, band: dict) -> str:
    return "positive" if score >= band["high"] else ("negative" if score < band["low"] else "refer")


def test_medge_predict_refers_the_images_inside_the_band(banded, images):
    bundle, band, _ = banded
    out = subprocess.run([sys.executable, "-m", "medge", "predict", str(bundle), *map(str, images)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # an image the OOD guard refuses (a few % of real ones) is not_applicable: no class, no decision
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == len(images)
    lines = [line for line in lines if line["status"] == "classified"]
    assert len(lines) >= len(images) * 0.8
    assert [line["decision"] for line in lines] == [expected_decision(line["score"], band) for line in lines]
    decisions = {line["decision"] for line in lines}
    assert decisions == {"positive", "negative", "refer"}
    threshold = load_bundle(bundle).threshold
    for line in lines:  # a decided image agrees with the threshold rule; `positive` keeps it
        assert line["positive"] == (line["score"] >= threshold)
        if line["decision"] != "refer":
            assert (line["decision"] == "positive") == line["positive"]


def test_a_bundle_without_a_band_never_refers(int8_bundle, images, tmp_path):
    bundle = with_decision(int8_bundle, tmp_path / "old", None)
    classifier = Classifier(load_bundle(bundle))
    for path in images:
        result = classifier.classify(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
        assert result.decision == ("positive" if result.positive else "negative")


def test_a_broken_band_is_refused_with_the_field_named(int8_bundle, tmp_path):
    bundle = with_decision(int8_bundle, tmp_path / "bad", {"method": "band", "low": 0.2})
    with pytest.raises(BundleError, match="decision"):
        load_bundle(bundle)


def test_the_real_daemon_publishes_refer_results(banded, images, tmp_path, broker, edge_daemon):
    bundle, band, scores = banded
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    wire = Subscriber(broker.port, "medge/ward/xr-9/#")
    daemon = edge_daemon(bundle, broker.url, site="ward", device="xr-9", watch=inbox)
    for path in images:
        shutil.copy(path, inbox / path.name)
    wire.wait_for(lambda sub: len(sub.unique("result")) >= len(images), 90, "every result")
    wire.wait_for(lambda sub: any((p.get("drift") or {}).get("window_n", 0) >= len(images)
                                  for p in sub.payloads("heartbeat")), 30, "a heartbeat counting every input")
    daemon.stop()
    wire.close()
    published = [validated("result", payload) for payload in wire.unique("result").values()]
    results = [r for r in published if r["status"] == "classified"]
    assert all("decision" not in r for r in published if r["status"] != "classified")
    assert all(r["decision"] == expected_decision(r["score"], band) for r in results)
    assert {round(float(s), 6) for s in scores} >= {r["score"] for r in results}
    refers = [r for r in results if r["decision"] == "refer"]
    assert refers and all(band["low"] <= r["score"] < band["high"] for r in refers)
    beat = [validated("heartbeat", p) for p in wire.payloads("heartbeat") if p.get("drift")][-1]
    assert beat["drift"]["refer_rate"] == pytest.approx(len(refers) / len(published), abs=1e-3)
    assert "pixels" not in json.dumps(beat)
