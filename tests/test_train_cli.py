"""`medge train` and `medge evaluate` as a user runs them."""
import json
import os
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
    # Progress per epoch, then the clinical summary.
    assert "epoch 1/2" in result.output and "epoch 2/2" in result.output
    assert "test: AUC" in result.output and "sensitivity" in result.output
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

    for args, message in [(("train", "--threshold-policy", "median"), "threshold_policy"),
                          (("train", "--augment", "spin"), "unknown augmentation 'spin'"),
                          (("evaluate", tmp_path / "nowhere"), "training run folder not found")]:
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 1 and message in result.output
        assert len(result.output.strip().splitlines()) == 1
