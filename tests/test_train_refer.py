"""The refer band chosen on validation (train/refer.py): it meets its accuracy target on the
validation images it was chosen on, no band deciding more of them does, the training run reports
it (metrics.json, plot, report.md) and `medge convert` puts it in the bundle."""
from __future__ import annotations

import json

import numpy as np
import pytest

from medge.data import PNEUMONIAMNIST
from medge.edge.bundle import load_bundle
from medge.edge.preprocess import preprocess
from medge.edge.runtime import create_predictor
from medge.train import refer


@pytest.fixture(scope="module")
def validation(int8_bundle):
    """The committed int8 model's calibrated P(pneumonia) on the real PneumoniaMNIST validation split."""
    bundle = load_bundle(int8_bundle)
    predictor = create_predictor(bundle.artifact())
    archive = np.load(PNEUMONIAMNIST)
    x = np.stack([preprocess(image, bundle.spec) for image in archive["val_images"]])
    probabilities = np.concatenate([predictor.predict(x[i:i + 128]) for i in range(0, len(x), 128)])
    return archive["val_labels"][:, 0], probabilities, bundle.threshold


def accuracy_outside(y, scores, low, high) -> tuple[float, int]:
    decided = (scores < low) | (scores >= high)
    correct = np.where(scores >= high, y == 1, y == 0)
    return float(correct[decided].mean()), int(decided.sum())


@pytest.mark.parametrize("target", [0.9, 0.95, 0.97])
def test_the_band_meets_its_target_on_validation_and_is_the_widest_coverage_that_does(validation, target):
    y, probabilities, threshold = validation
    scores = probabilities[:, 1]
    rule = refer.choose_band(y, scores, threshold, target)
    assert rule["low"] <= threshold <= rule["high"]
    accuracy, decided = accuracy_outside(y, scores, rule["low"], rule["high"])
    assert rule["validation"]["target_met"] and accuracy >= target
    assert rule["validation"]["decided"] == decided and rule["validation"]["accuracy_outside"] == pytest.approx(accuracy)
    # brute force over a coarse grid of edges: no band that meets the target decides more images
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, 41)))
    for low in [e for e in edges if e <= threshold] + [threshold]:
        for high in [e for e in edges if e >= threshold] + [threshold]:
            other, n = accuracy_outside(y, scores, low, high)
            if n and other >= target:
                assert n <= decided


def test_an_unreachable_target_is_reported_not_hidden(validation):
    y, probabilities, threshold = validation  # labels swapped: a model that is wrong far more than right
    section = refer.refer_metrics("binary", ["normal", "pneumonia"], threshold, 1 - y, probabilities[:, 1:])
    assert section["val"]["target_met"] is False
    assert f"no band reaches accuracy {refer.DEFAULT_TARGET:.2f}" in refer.warnings_for(section)[0]
    assert section["val"]["coverage"] >= refer.MIN_DECIDED_SHARE


def test_multiclass_rules_are_compared_and_the_chosen_one_meets_the_target(validation):
    y, probabilities, _ = validation  # two classes through the K-class rules
    rule = refer.choose_multiclass(y, probabilities, 0.95)
    assert {c["method"] for c in rule["comparison"]} == {"top_probability", "lac", "margin"}
    best = max(c["coverage"] for c in rule["comparison"] if c["target_met"])
    assert rule["validation"]["coverage"] == pytest.approx(best)
    made = refer.decisions(rule, probabilities, ["normal", "pneumonia"], "multiclass", None)
    decided = made != "refer"
    truth = np.array(["normal", "pneumonia"])[y]
    assert (made[decided] == truth[decided]).mean() >= 0.95


def test_the_run_reports_the_band_and_convert_bundles_it(trained_run, converted_int8_bundle):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    section = metrics["refer"]
    assert section["rule"]["method"] == "band" and section["val"]["n"] > 0
    if section["val"]["target_met"]:
        assert section["val"]["accuracy_outside"] >= section["rule"]["target_accuracy"]
    assert "test" in section and section["test"]["n"] > 0
    assert (trained_run / refer.PLOT).stat().st_size > 5000
    report = (trained_run / "report.md").read_text()
    assert "## Refer band (chosen on validation)" in report and refer.PLOT in report
    bundle = load_bundle(converted_int8_bundle)
    decision = bundle.manifest.decision
    assert {k: decision[k] for k in ("method", "low", "high")} == \
        {k: section["rule"][k] for k in ("method", "low", "high")}
    reference = bundle.manifest.reference
    assert reference["n"] == section["val"]["n"] and len(reference["histogram"]) == len(reference["edges"]) + 1
