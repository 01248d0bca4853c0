"""Calibrated scores end to end: temperature fitted on validation, ECE/Brier before and after, the
reliability plot, the stable binary threshold, the sealed test split, ordinal metrics, and the
temperature travelling in the bundle to the device's runtime (issue 10)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medge.data import PNEUMONIAMNIST, RETINAMNIST
from tests.fixtures.models import needs_tensorflow, quick_config

TINY = dict(arch="cnn", epochs=2, filters=(16, 32), dense_units=32, batch_size=32, bootstrap=100, verbose=False)


def subset_npz(path: Path, source: Path, counts: dict[str, int], seed: int = 0, scramble_test: bool = False) -> Path:
    """A real MedMNIST file cut to `counts` images per split (first images of a seeded permutation)."""
    archive = np.load(source)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in counts.items():
        images, labels = archive[f"{split}_images"], archive[f"{split}_labels"]
        chosen = np.sort(rng.permutation(len(labels))[:count])
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[chosen], labels[chosen]
    if scramble_test:  # different test images and labels, same train and validation
        noise = np.random.default_rng(99)
        arrays["test_images"] = noise.integers(0, 256, arrays["test_images"].shape, dtype=np.uint8)
        arrays["test_labels"] = noise.permutation(arrays["test_labels"])
    np.savez(path, **arrays)
    return path


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def assert_calibrated(run: Path) -> dict:
    """What a user checks in a run folder: calibration before/after, the temperature, the plot."""
    metrics = metrics_of(run)
    calibration = metrics["calibration"]
    for key in ("temperature", "ece_before", "ece_after", "brier_before", "brier_after"):
        assert isinstance(calibration[key], float), key
    assert calibration["temperature"] > 0 and calibration["split"] == "test"
    fit = calibration["validation"]
    assert fit["fitted_on"] == "validation" and fit["bins"] == 15
    assert fit["ece_after"] <= fit["ece_before"] + 1e-12  # validation ECE after <= before
    assert fit["nll_after"] <= fit["nll_before"] + 1e-12  # what the fit minimises
    # The split figures are the calibrated ones: the test ECE is the "after" value.
    assert metrics["test"]["ece"] == pytest.approx(calibration["ece_after"])
    assert metrics["val"]["ece"] == pytest.approx(fit["ece_after"])
    assert (run / "reliability.png").stat().st_size > 5000
    report = (run / "report.md").read_text()
    assert "reliability.png" in report and "ECE before / after calibration" in report
    assert f"T = {calibration['temperature']:.3f}" in report
    return metrics


def test_binary_grey_run_is_calibrated_with_a_stable_threshold(trained_run):
    metrics = assert_calibrated(trained_run)
    assert metrics["preprocessing"]["channels"] == 1
    low, high = metrics["threshold_ci95"]
    assert metrics["threshold_policy"] == "youden-bootstrap"
    assert low <= metrics["threshold"] <= high  # the bootstrap median lies inside its own interval
    assert "bootstrap 95% interval" in (trained_run / "report.md").read_text()
    assert metrics["test"]["brier"] == pytest.approx(metrics["calibration"]["brier_after"])
    # Four epochs leave the scores shifted, not just overconfident: the fitted logit offset
    # (Platt) brings validation ECE from ~0.2 to a few per cent, where a temperature alone could not.
    assert metrics["calibration"]["bias_correction"]["applied"]
    assert metrics["calibration"]["validation"]["ece_after"] <= 0.1


def test_multiclass_colour_ordinal_run_reports_kappa(tmp_path):
    needs_tensorflow()
    from medge.train.pipeline import train

    data = subset_npz(tmp_path / "retina.npz", RETINAMNIST, {"train": 400, "val": 120, "test": 120})
    run = train(quick_config(data=data, out=tmp_path / "run", task="ordinal", **TINY))
    metrics = assert_calibrated(run)
    assert metrics["preprocessing"]["channels"] == 3 and metrics["ordinal"] is True
    for split in ("val", "test"):
        figures = metrics[split]
        assert -1.0 <= figures["quadratic_weighted_kappa"] <= 1.0
        assert 0.0 <= figures["mean_absolute_grade_error"] <= 4.0
        assert set(figures["sensitivity_per_class"]) == set(metrics["classes"])
        assert figures["balanced_accuracy"] == pytest.approx(np.mean(list(figures["sensitivity_per_class"].values())))
    report = (run / "report.md").read_text()
    assert "quadratic-weighted kappa" in report and "mean absolute grade error" in report


def test_the_test_split_is_sealed_until_the_final_evaluation(tmp_path):
    from medge.train.data import SealedSplitError, load_dataset

    dataset = load_dataset(subset_npz(tmp_path / "p.npz", PNEUMONIAMNIST, {"train": 60, "val": 20, "test": 20}))
    dataset.seal("test")
    sealed = dataset.splits["test"]
    assert len(sealed) == 20 and sum(sealed.counts(2)) == 20  # sizes may be logged
    for read in (lambda: sealed.x, lambda: sealed.y, lambda: sealed.subset([0])):
        with pytest.raises(SealedSplitError, match="sealed until the final evaluation"):
            read()
    assert dataset.unseal("test").x.shape == (20, 28, 28, 1)


def test_no_choice_depends_on_the_test_split(tmp_path):
    """Two runs that differ ONLY in their test split (the second's is noise with shuffled labels)
    choose the same epochs, temperature and threshold: selection never read the test split."""
    needs_tensorflow()
    from medge.train.pipeline import train

    counts = {"train": 300, "val": 120, "test": 100}
    runs = [train(quick_config(data=subset_npz(tmp_path / f"{name}.npz", PNEUMONIAMNIST, counts, scramble_test=scramble),
                               out=tmp_path / name, **TINY))
            for name, scramble in (("real", False), ("scrambled", True))]
    real, scrambled = (metrics_of(run) for run in runs)
    for key in ("threshold", "threshold_ci95"):
        assert real[key] == scrambled[key], key
    assert real["training"]["best_epoch"] == scrambled["training"]["best_epoch"]
    assert real["calibration"]["validation"] == scrambled["calibration"]["validation"]
    assert real["val"]["auc"] == scrambled["val"]["auc"]
    assert real["test"]["auc"] != scrambled["test"]["auc"]  # the test split did differ


def test_bundle_carries_the_temperature_and_the_device_shows_calibrated_scores(trained_run, converted_int8_bundle):
    needs_tensorflow()
    from medge.edge.bundle import load_bundle
    from medge.edge.runtime import create_predictor
    from medge.train.calibration import ScoreModel
    from medge.train.run import load_run

    run = load_run(trained_run)
    bundle = load_bundle(converted_int8_bundle)
    artifact = bundle.artifact()
    assert artifact.output.temperature == pytest.approx(run.temperature)
    record = json.loads((converted_int8_bundle / "medge.json").read_text())["calibration"]
    # the quick model's scores are shifted: a Platt offset is folded into its last bias, T on top
    assert record["method"] in ("temperature", "temperature+offset")
    assert record["temperature"] == pytest.approx(run.temperature)
    assert record["ece_after"] == pytest.approx(run.metrics["calibration"]["validation"]["ece_after"])
    assert artifact.gate["calibration_check"]["verdict"] in ("pass", "noise")

    test = run.load_dataset().splits["test"]
    x = test.x[:200]
    float_scores = ScoreModel(run.load_model()).scores(x)
    calibrated_float = float_scores.probabilities(run.temperature)[:, 1]
    device = create_predictor(artifact).predict(x)[:, 1]
    # Within the quantization tolerance: no image further from the calibrated float score than the
    # gate's measured worst case (on the whole test split), itself a few int8 steps.
    difference = np.abs(device - calibrated_float)
    assert difference.max() <= artifact.gate["max_abs_score_diff"] + 1e-5
    assert artifact.gate["max_abs_score_diff"] < 0.1 and difference.mean() < 0.02
    if abs(np.log(run.temperature)) > 0.2:  # the temperature visibly matters: the device must apply it
        uncalibrated_device = create_predictor(artifact, temperature=1.0).predict(x)[:, 1]
        assert np.mean(np.abs(device - calibrated_float)) < np.mean(np.abs(uncalibrated_device - calibrated_float))


def test_temperature_ece_and_brier_on_known_inputs():
    from medge.edge.runtime import calibrated_probabilities
    from medge.train.calibration import ModelScores, brier_score, expected_calibration_error, fit_temperature
    from medge.train.evaluate import quadratic_weighted_kappa

    # Perfectly calibrated logits stay at T = 1; the same logits times 4 (over-confident) give T = 4.
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-logits))).astype(int)
    assert fit_temperature(ModelScores(logits[:, None].astype(np.float32), "sigmoid"), y) == pytest.approx(1.0, abs=0.05)
    assert fit_temperature(ModelScores(4 * logits[:, None].astype(np.float32), "sigmoid"), y) == pytest.approx(4.0, rel=0.05)
    multi = rng.normal(0, 2, (5000, 4))
    p = np.exp(multi) / np.exp(multi).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    assert fit_temperature(ModelScores(3 * multi.astype(np.float32), "softmax"), labels) == pytest.approx(3.0, rel=0.1)
    # A probability output (ensemble) is calibrated through its logs, sigmoid(logit(p) / T) for binary.
    probability = np.array([[0.9], [0.2]], np.float32)
    calibrated = calibrated_probabilities(probability, None, 2.0)[:, 1]
    assert calibrated == pytest.approx(1 / (1 + np.exp(-np.log(probability[:, 0] / (1 - probability[:, 0])) / 2)), abs=1e-5)

    # ECE: 10 cases at confidence 0.8 of which 6 are right -> |0.8 - 0.6| = 0.2; Brier by hand.
    assert expected_calibration_error(np.r_[np.ones(6), np.zeros(4)].astype(int), np.full(10, 0.8)) == pytest.approx(0.2)
    assert brier_score(np.array([1, 0]), np.array([[0.2, 0.8], [0.6, 0.4]])) == pytest.approx((0.04 + 0.16) / 2)
    assert brier_score(np.array([0, 2]), np.array([[1.0, 0, 0], [0.5, 0.5, 0]])) == pytest.approx(0.75)
    # Class-weighted training shifts the prior by the weights: the correction is logits - log w.
    from medge.train.calibration import class_weight_offsets

    assert class_weight_offsets(np.array([2.0, 0.5]), "sigmoid") == pytest.approx([np.log(4.0)])
    offsets = class_weight_offsets(np.array([1.0, 2.0, 4.0]), "softmax")
    assert offsets - offsets[0] == pytest.approx([0.0, -np.log(2.0), -np.log(4.0)])
    assert class_weight_offsets(np.ones(3), "softmax") is None and class_weight_offsets([1, 2], None) is None
    # The gate's vectorised ECE is training's ECE.
    from medge.convert.calibration_gate import _ece

    for probabilities, labels_ in ((calibrated_probabilities(4 * logits[:500, None], "sigmoid"), y[:500]),
                                   (calibrated_probabilities(3 * multi[:500], "softmax"), labels[:500])):
        assert _ece(labels_, probabilities.astype(np.float64)) == pytest.approx(
            expected_calibration_error(labels_, probabilities))
    # Quadratic-weighted kappa: perfect = 1; one grade off on one case of four: observed weighted
    # disagreement 1/4 against 3/2 expected by chance from the margins -> 1 - (1/4) / (3/2) = 5/6.
    assert quadratic_weighted_kappa([0, 1, 2, 2], [0, 1, 2, 2], 3) == pytest.approx(1.0)
    assert quadratic_weighted_kappa([0, 1, 2, 2], [0, 2, 2, 2], 3) == pytest.approx(5 / 6)
