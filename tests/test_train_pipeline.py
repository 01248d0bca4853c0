"""The trained run folder, as the converter and a user read it (real CNN on real PneumoniaMNIST)."""
import json

import numpy as np
import pytest

from medge import DISCLAIMER
from medge.edge.errors import InputError
from medge.edge.preprocess import PreprocessSpec
from medge.train.evaluate import roc_auc
from medge.train.run import load_run

RUN_FILES = ("model.keras", "metrics.json", "history.json", "report.md", "training_curves.png", "roc.png",
             "confusion_matrix.png", "samples.png")


def test_run_folder_holds_model_metrics_history_plots_and_report(trained_run):
    for name in RUN_FILES:
        assert (trained_run / name).is_file(), name
        assert (trained_run / name).stat().st_size > 0, name
    for name in RUN_FILES[4:]:
        assert (trained_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    history = json.loads((trained_run / "history.json").read_text())
    assert {"loss", "auc", "val_loss", "val_auc"} <= set(history)
    report = (trained_run / "report.md").read_text()
    assert "not for diagnostic use" in report and DISCLAIMER in report
    for name in RUN_FILES[4:]:
        assert f"]({name})" in report


def test_metrics_json_has_the_documented_keys_and_sane_clinical_figures(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["classes"] == ["normal", "pneumonia"]
    assert metrics["task"] == "binary" and metrics["positive_class"] == "pneumonia"
    assert metrics["threshold_policy"] == "youden-bootstrap" and 0.0 < metrics["threshold"] < 1.0
    assert PreprocessSpec.from_dict(metrics["preprocessing"]).input_shape == (28, 28, 1)
    assert metrics["data"]["format"] == "npz" and metrics["data"]["counts"]["test"] == [234, 390]
    assert metrics["model"]["arch"] == "cnn" and metrics["model"]["params"] > 1000
    test = metrics["test"]
    # A real model on real data: well above chance even when trained for seconds.
    assert test["auc"] > 0.85
    low, high = test["auc_ci95"]
    assert low < test["auc"] < high and high - low < 0.15
    matrix = np.asarray(test["confusion_matrix"])
    assert matrix.sum() == 624 and matrix.sum(axis=1).tolist() == [234, 390]
    tn, fp, fn, tp = matrix.ravel()
    assert test["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert test["specificity"] == pytest.approx(tn / (tn + fp))
    assert test["accuracy"] == pytest.approx((tp + tn) / 624)
    assert test["precision"] == pytest.approx(tp / (tp + fp))
    assert test["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert set(metrics["val"]) >= {"auc", "sensitivity", "specificity"}


def test_load_run_rebuilds_the_splits_and_the_saved_model_reproduces_the_test_auc(trained_run):
    run = load_run(trained_run)
    assert run.classes == ["normal", "pneumonia"] and run.task == "binary"
    assert run.spec == PreprocessSpec(28, 28, 1, "area", "unit")
    dataset = run.load_dataset()
    test = dataset.splits["test"]
    assert test.x.shape == (624, 28, 28, 1) and test.x.dtype == np.float32
    from medge.train.calibration import ScoreModel

    # The run's scores are calibrated (logits / its temperature): its threshold is on that scale.
    scores = ScoreModel(run.load_model()).scores(test.x).probabilities(run.temperature)[:, 1]
    assert roc_auc(test.y, scores) == pytest.approx(run.metrics["test"]["auc"], abs=1e-6)
    predicted = (scores >= run.threshold).astype(int)
    assert (predicted == test.y).mean() == pytest.approx(run.metrics["test"]["accuracy"], abs=1e-6)


def test_saved_model_has_no_augmentation_and_exports_as_saved_model(trained_run, tmp_path):
    model = load_run(trained_run).load_model()
    names = [layer.name for layer in model.layers]
    assert not [n for n in names if n.startswith("random_") or "augment" in n]
    model.export(str(tmp_path / "saved"), format="tf_saved_model")
    assert (tmp_path / "saved" / "saved_model.pb").is_file()


@pytest.mark.parametrize("damage, message", [
    ("missing", "training run folder not found"),
    ("no_metrics", "metrics.json missing"),
    ("bad_json", "not valid JSON"),
    ("no_model", "model.keras missing"),
])
def test_load_run_rejects_broken_runs_with_one_line(trained_run, tmp_path, damage, message):
    import shutil

    run = tmp_path / "run"
    if damage != "missing":
        shutil.copytree(trained_run, run)
    if damage == "no_metrics":
        (run / "metrics.json").unlink()
    elif damage == "bad_json":
        (run / "metrics.json").write_text("{not json")
    elif damage == "no_model":
        (run / "model.keras").unlink()
    with pytest.raises(InputError) as error:
        load_run(run)
    assert message in str(error.value) and "\n" not in str(error.value)
