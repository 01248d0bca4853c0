"""`medge train` and `medge evaluate` as a user runs them."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from medge.main import cli
from medge.train.evaluate import roc_auc
from medge.train.run import load_run
from tests.fixtures.models import write_split_tree


def medge(*args, env=None):
    """The real command line in a fresh process, as a user's shell runs it."""
    return subprocess.run([sys.executable, "-m", "medge", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def test_help_lists_the_options():
    result = invoke("train", "--help")
    assert result.exit_code == 0
    for option in ("--arch", "--weights", "--ensemble", "--threshold-policy", "--class-weight", "--augment",
                   "--val-split", "--test-split", "--seed", "--limit", "--classes", "--out"):
        assert option in result.output
    result = invoke("evaluate", "--help")
    assert result.exit_code == 0 and "RUN" in result.output and "--split" in result.output


def test_train_defaults_to_bundled_pneumoniamnist_with_options_from_the_environment(tmp_path):
    result = invoke("train", "--out", tmp_path / "run", "--limit", 400, "--filters", "8,16",
                    env={"MEDGE_TRAIN_EPOCHS": "2", "MEDGE_TRAIN_BOOTSTRAP": "100", "MEDGE_TRAIN_AUGMENT": "none"})
    assert result.exit_code == 0, result.output
    # What is printed is what is trained on: the limited count, not the dataset's 4708.
    assert "train: 400 images" in result.output and "--limit: 400 of 4708" in result.output
    # ... and the settings really used, environment and defaults resolved.
    assert "training cnn (filters 8,16, input 28x28x1): up to 2 epochs" in result.output
    assert "augment none" in result.output
    # Progress per epoch with an estimate of the whole run and of what is left, then the summary.
    assert re.search(r"epoch 1/2 .*estimate 2 epochs x [\d.]+s = [\dm]+s, at most [\dm]+s left", result.output), result.output
    assert "epoch 2/2" in result.output
    assert "test: AUC" in result.output and "sensitivity" in result.output
    # Rates carry Wilson intervals.
    assert re.search(r"sensitivity [\d.]+ \(95% CI [\d.]+-[\d.]+\)", result.output), result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["classes"] == ["normal", "pneumonia"] and metrics["data"]["format"] == "npz"
    assert metrics["training"]["epochs_run"] == [2] and metrics["training"]["train_samples"] == 400
    assert metrics["training"]["config"]["augment"] == []


def test_train_dicom_folder_as_an_ensemble_with_a_screening_threshold(dicom_folder, tmp_path):
    result = invoke("train", dicom_folder, "--out", tmp_path / "run", "--ensemble", 2, "--epochs", 3,
                    "--filters", "8,16", "--dense-units", 16, "--batch-size", 16, "--val-split", 0.25,
                    "--test-split", 0.25, "--threshold-policy", "sensitivity:0.95", "--bootstrap", 100)
    assert result.exit_code == 0, result.output
    assert "ensemble member 2/2" in result.output
    run = load_run(tmp_path / "run")
    assert run.metrics["data"]["format"] == "dicom" and run.metrics["model"]["ensemble"] == 2
    assert run.metrics["threshold_policy"] == "sensitivity:0.95"
    val = run.load_dataset().splits["val"]
    model = run.load_model()
    assert [layer.name for layer in model.layers if layer.name.startswith("member")] == ["member0", "member1"]
    scores = model.predict(val.x, verbose=0)[:, 0]
    assert (scores[val.y == 1] >= run.threshold).mean() >= 0.95
    assert run.metrics["val"]["sensitivity"] >= 0.95
    assert roc_auc(val.y, scores) == pytest.approx(run.metrics["val"]["auc"], abs=1e-6)


def test_evaluate_a_run_on_another_dataset_and_on_its_own_test_split(trained_run, tmp_path):
    data = write_split_tree(tmp_path / "tree", {"test": 40})
    result = invoke("evaluate", trained_run, data, "--out", tmp_path / "eval", "--bootstrap", 200)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["data"]["format"] == "folder" and evaluation["data"]["split"] == "test"
    test = evaluation["test"]
    assert test["n"] == 80 and np.asarray(test["confusion_matrix"]).sum() == 80 and test["auc"] > 0.75
    assert evaluation["threshold"] == load_run(trained_run).threshold
    for name in ("evaluation.md", "roc.png", "confusion_matrix.png"):
        assert (tmp_path / "eval" / name).is_file()
    assert "not for diagnostic use" in (tmp_path / "eval" / "evaluation.md").read_text()

    result = invoke("evaluate", trained_run, "--bootstrap", 0)  # no DATA: the run's own test split
    assert result.exit_code == 0, result.output
    own = json.loads((trained_run / "evaluations" / "pneumoniamnist_28-test" / "evaluation.json").read_text())
    assert own["test"]["auc"] == pytest.approx(load_run(trained_run).metrics["test"]["auc"], abs=1e-6)


def test_bad_data_ends_with_one_line_and_a_non_zero_exit(tmp_path, trained_run):
    data = write_split_tree(tmp_path / "tree", {"train": 4, "val": 2})
    real = sorted((data / "train" / "normal").glob("*.png"))[0]
    (data / "train" / "normal" / "scan7.png").write_bytes(real.read_bytes()[:60])  # truncated copy
    done = medge("train", data, "--out", tmp_path / "run", "--epochs", 1)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "scan7.png: not a readable image" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "model.keras").exists()

    other = tmp_path / "other"
    shutil.copytree(data, other)
    (other / "train" / "normal" / "scan7.png").unlink()
    (other / "train" / "covid").mkdir()
    result = CliRunner().invoke(cli, ["evaluate", str(trained_run), str(other)])
    assert result.exit_code == 1 and "'covid' not in classes (normal, pneumonia)" in result.output

    for args, message in [(("train", "--threshold-policy", "median"), "--threshold-policy: 'median' is not one of"),
                          (("train", "--augment", "spin"), "unknown augmentation 'spin'"),
                          (("evaluate", tmp_path / "nowhere"), "training run folder not found")]:
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 1 and message in result.output
        assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (("--batch-size", -5), "--batch-size: must be an integer >= 1, not -5"),
    (("--learning-rate", -1), "--learning-rate: must be in (0, 1], not -1.0"),
    (("--limit", 0), "--limit: must be an integer >= 1, not 0"),
    (("--epochs", 0), "--epochs: must be an integer >= 1, not 0"),
    (("--filters", "16,0"), "--filters: must be one or more positive integers"),
    (("--val-split", 0.6, "--test-split", 0.5), "val_split + test_split: must leave images to train on"),
    (("--patience", -1), "--patience: must be an integer >= 0"),
    (("--arch", "resnet"), "'resnet' is not one of 'auto', 'cnn', 'resnet18', 'mobilenetv2', 'efficientnetb0'"),
])
def test_bad_train_options_stop_in_one_line_before_a_run_folder_exists(tmp_path, args, message):
    done = medge("train", "--out", tmp_path / "run", *args)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len([line for line in lines if line.startswith("Error")]) == 1
    assert not (tmp_path / "run").exists()


def write_label_noise_tree(root, per_class: dict[str, int], seed: int = 0):
    """Real X-rays filed under two classes at random: a dataset no model can learn from."""
    import cv2

    from tests.fixtures.models import pneumoniamnist_images

    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        images = np.concatenate([pneumoniamnist_images(label, count, split, seed)[0] for label in (0, 1)])
        for index, image in enumerate(images):
            folder = root / split / ("a" if rng.random() < 0.5 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{split}_{index}.png"), image)
    return root


def test_a_run_that_did_not_learn_is_flagged_on_the_terminal_and_in_the_report(tmp_path):
    data = write_label_noise_tree(tmp_path / "noise", {"train": 40, "val": 30, "test": 10})
    done = medge("train", data, "--out", tmp_path / "run", "--epochs", 2, "--filters", "4,8", "--dense-units", 8,
                 "--batch-size", 16, "--bootstrap", 200, "--augment", "none")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING: the model did not learn: validation AUC" in done.stdout, done.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any("did not learn" in warning for warning in metrics["warnings"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Warnings" in report and "did not learn" in report
    # TensorFlow's import-time absl/cudart lines are not shown (they are under --verbose).
    assert "absl::InitializeLog" not in done.stderr and "cudart" not in done.stderr, done.stderr


def test_a_run_that_learned_has_no_warnings(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["warnings"] == []
    assert "## Warnings" not in (trained_run / "report.md").read_text()


def test_evaluate_matches_class_folders_ignoring_case_and_reports_honest_small_sample_intervals(trained_run, tmp_path):
    data = write_split_tree(tmp_path / "holdout", {"test": 4})
    for name in ("normal", "pneumonia"):  # the Kermany dataset's own folder names
        (data / "test" / name).rename(data / "test" / name.upper())
    done = medge("evaluate", trained_run, data, "--out", tmp_path / "eval", "--bootstrap", 200)
    assert done.returncode == 0, done.stderr[-3000:]
    test = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["test"]
    assert test["n"] == 8 and sum(map(sum, test["confusion_matrix"])) == 8
    # 8 images cannot give a tight interval: Wilson intervals, and no bootstrap AUC interval.
    low, high = test["accuracy_ci95"]
    assert high - low > 0.3 and low <= test["accuracy"] <= high
    assert test["auc_ci95"] is None and "only 4/4 images per class" in test["auc_ci_note"]
    assert "no AUC interval: only 4/4 images per class" in done.stdout
    assert "Wilson" in (tmp_path / "eval" / "evaluation.md").read_text()


def test_evaluate_maps_other_folder_names_with_class_map(trained_run, tmp_path):
    data = write_split_tree(tmp_path / "holdout", {"test": 3})
    (data / "test" / "normal").rename(data / "test" / "healthy")
    (data / "test" / "pneumonia").rename(data / "test" / "sick")
    result = CliRunner().invoke(cli, ["evaluate", str(trained_run), str(data), "--bootstrap", "0"])
    assert result.exit_code == 1 and "--class-map healthy=CLASS" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = invoke("evaluate", trained_run, data, "--out", tmp_path / "eval", "--bootstrap", 0,
                    "--class-map", "healthy=normal,sick=pneumonia")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["test"]["n"] == 6 and evaluation["classes"] == ["normal", "pneumonia"]
    for bad, message in [("healthy=covid", "'covid' is not a class (normal, pneumonia)"),
                         ("healthy", "is not NAME=CLASS")]:
        result = CliRunner().invoke(cli, ["evaluate", str(trained_run), str(data), "--class-map", bad])
        assert result.exit_code != 0 and message in result.output, result.output
