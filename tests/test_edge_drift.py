"""Drift on the device (edge/drift.py) with the committed int8 bundle and real images, through the
same `analyse` the daemon calls (OOD guard included): an in-distribution stream stays quiet, a
shifted one (fundus photographs, only one class) raises the alert, and a handful
of shifted images cannot. No TensorFlow."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medge.data import PNEUMONIAMNIST, RETINAMNIST
from medge.edge.bundle import MANIFEST_NAME, load_bundle
from medge.edge.classify import Classifier, analyse
from medge.edge.config import load_config
from medge.edge.drift import DriftMonitor, DriftSettings, psi
from medge.edge.errors import ConfigError
from medge.edge.payloads import heartbeat_payload
from medge.edge.preprocess import DecodedImage
from medge.edge.worker import ActiveModel
from tests.fixtures.dashboard import validated

STREAM = 300


@pytest.fixture(scope="module")
def classifier(int8_bundle):
    return Classifier(load_bundle(int8_bundle))


@pytest.fixture(scope="module")
def chest():
    archive = np.load(PNEUMONIAMNIST)
    return archive["test_images"], archive["test_labels"][:, 0]


def fed(classifier, images, settings: DriftSettings | None = None) -> dict:
    """The drift figures after the images went through analyse() and the observer, as in the daemon."""
    monitor = DriftMonitor(settings or DriftSettings(), classifier.bundle)
    active = ActiveModel(classifier=classifier, bundle=classifier.bundle, info={})
    for image in images:
        analysis = analyse(classifier, lambda image=image: DecodedImage([image], "image"))
        monitor.observe(None, analysis, active, [])
    return monitor.snapshot()


def test_the_bundle_carries_its_validation_reference(classifier):
    reference = classifier.bundle.manifest.reference
    assert reference["n"] > 100 and "validation" in reference["source"]
    assert len(reference["histogram"]) == len(reference["edges"]) + 1
    assert sum(reference["histogram"]) == pytest.approx(1.0, abs=1e-3)
    assert max(reference["histogram"]) < 0.3  # decile bins: no bin holds most of the reference


def test_an_in_distribution_stream_stays_quiet(classifier, chest):
    images, _ = chest
    drift = fed(classifier, images[:STREAM])
    assert drift["window_n"] == STREAM and sum(drift["histogram"]) + round(drift["ood_rate"] * STREAM) == STREAM
    assert drift["psi"] < drift["psi_alert"] and drift["alert"] is False
    assert drift["refer_rate"] == pytest.approx(drift["reference"]["refer_rate"], abs=0.15)


@pytest.mark.parametrize("stream", ["fundus", "normal only", "pneumonia only"])
def test_a_shifted_stream_raises_the_alert(classifier, chest, stream):
    images, labels = chest
    if stream == "fundus":
        fundus = np.load(RETINAMNIST)["test_images"][:STREAM]
        shifted = fundus.mean(-1).astype(np.uint8) if fundus.ndim == 4 else fundus
    else:
        shifted = images[labels == (0 if stream == "normal only" else 1)][:STREAM]
    drift = fed(classifier, shifted)
    quiet = fed(classifier, images[:len(shifted)])
    assert drift["alert"] is True and drift["psi"] > drift["psi_alert"]
    assert drift["psi"] > 3 * quiet["psi"]


def test_a_handful_of_images_cannot_alarm(classifier):
    fundus = np.load(RETINAMNIST)["test_images"][:20]
    drift = fed(classifier, fundus.mean(-1).astype(np.uint8) if fundus.ndim == 4 else fundus)
    assert drift["window_n"] == 20 < drift["min_window"]
    assert drift["psi"] > drift["psi_alert"] and drift["alert"] is False


def test_a_bundle_without_reference_reports_counts_only(int8_bundle, tmp_path, chest):
    old = shutil.copytree(int8_bundle, tmp_path / "old")
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    del manifest["reference"]
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))
    drift = fed(Classifier(load_bundle(old)), chest[0][:30])
    assert drift["window_n"] == 30 and drift["psi"] is None and drift["alert"] is False
    assert "reference" not in drift
    heartbeat = heartbeat_payload(site="s", device="d", uptime_s=1.0, counters={"processed": 30, "rejected": 0,
                                                                                "queued": 0},
                                  latency_ms={"p50": 1.0, "p95": 2.0}, drift=drift)
    validated("heartbeat", heartbeat)


def test_psi_is_zero_for_the_reference_itself_and_grows_with_the_shift():
    reference = [0.1] * 10
    assert psi([100] * 10, reference) == pytest.approx(0.0, abs=1e-9)
    assert psi([0] * 5 + [200] * 5, reference) > psi([50] * 5 + [150] * 5, reference) > 0.1


def test_drift_settings_are_checked(tmp_path):
    config = tmp_path / "edge.toml"
    config.write_text("[drift]\nwindow = 50\nmin_window = 80\n")
    with pytest.raises(ConfigError, match="drift.min_window"):
        load_config(config)
