"""Architectures, ensembles, multi-class runs, threshold policies and the clinical metrics."""
import json

import numpy as np
import pytest

from medge.edge.errors import ConfigError, InputError
from medge.train.config import TrainConfig
from medge.train.evaluate import binary_metrics, bootstrap_auc_ci, roc_auc
from medge.train.pipeline import sample_weights, train
from medge.train.run import load_run
from medge.train.thresholds import choose_threshold, parse_policy
from tests.fixtures.models import quick_config


def val_scores(run_path):
    run = load_run(run_path)
    val = run.load_dataset().splits["val"]
    return val.y, run.load_model().predict(val.x, verbose=0)[:, 0]


# --------------------------------------------------------------------------- backbones


def test_mobilenetv2_backbone_trains_on_an_image_tree_and_exports(split_tree, tmp_path):
    import keras  # here, not at module level: collecting the tests must not load TensorFlow

    run = train(quick_config(data=split_tree, out=tmp_path / "run", arch="mobilenetv2", weights="none",
                             input_size=32, epochs=2, limit=None, batch_size=32))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"]["arch"] == "mobilenetv2"
    assert metrics["preprocessing"] == {"height": 32, "width": 32, "channels": 3, "interpolation": "area",
                                        "normalization": "symmetric", "version": 1,
                                        "jpeg_reduction": "auto"}
    assert metrics["data"]["format"] == "folder" and metrics["data"]["counts"]["test"] == [20, 20]
    assert metrics["test"]["auc"] is not None and len(metrics["test"]["confusion_matrix"]) == 2
    model = keras.models.load_model(run / "model.keras")
    assert model.inputs[0].shape[1:] == (32, 32, 3) and model.outputs[0].shape[1:] == (1,)
    model.export(str(tmp_path / "saved"), format="tf_saved_model")
    assert (tmp_path / "saved" / "saved_model.pb").is_file()


def test_backbone_loads_a_local_weights_file_and_rejects_a_wrong_one(tmp_path):
    import keras  # here, not at module level: collecting the tests must not load TensorFlow

    from medge.train.models import build_backbone

    config = TrainConfig(arch="mobilenetv2", weights="none", input_size=32)
    source = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), include_top=False,
                                            weights=None, pooling="avg")
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    model = build_backbone((32, 32, 3), 2, TrainConfig(arch="mobilenetv2", weights=str(path), input_size=32))
    loaded = model.get_layer(index=1)
    for mine, theirs in zip(loaded.get_weights(), source.get_weights()):
        assert np.array_equal(mine, theirs)
    fresh = build_backbone((32, 32, 3), 2, config).get_layer(index=1).get_weights()[0]
    assert not np.array_equal(fresh, source.get_weights()[0])  # i.e. the file really was used

    other = keras.applications.EfficientNetB0(input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg")
    wrong = tmp_path / "efficientnet.weights.h5"
    other.save_weights(wrong)
    with pytest.raises(InputError) as error:
        build_backbone((32, 32, 3), 2, TrainConfig(arch="mobilenetv2", weights=str(wrong), input_size=32))
    assert "cannot load into mobilenetv2" in str(error.value)
    with pytest.raises(InputError, match="weights file not found"):
        build_backbone((32, 32, 3), 2, TrainConfig(arch="mobilenetv2", weights=str(tmp_path / "nope.weights.h5"),
                                                   input_size=32))


def test_efficientnetb0_builds_for_binary_and_multiclass():
    from medge.train.models import build_backbone

    binary = build_backbone((32, 32, 3), 2, TrainConfig(arch="efficientnetb0", input_size=32))
    multi = build_backbone((32, 32, 3), 4, TrainConfig(arch="efficientnetb0", input_size=32))
    assert binary.outputs[0].shape[1:] == (1,) and multi.outputs[0].shape[1:] == (4,)
    out = multi.predict(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32"), verbose=0)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_config_rejects_bad_values_with_the_key_named():
    for kwargs, key in [({"arch": "resnet"}, "arch"), ({"augment": ("spin",)}, "augment"),
                        ({"threshold_policy": "sensitivity:2"}, "threshold_policy"), ({"ensemble": 0}, "ensemble"),
                        ({"arch": "mobilenetv2", "input_size": 28}, "input_size"),
                        ({"arch": "cnn", "weights": "imagenet"}, "weights")]:
        with pytest.raises(ConfigError) as error:
            TrainConfig(**kwargs)
        assert str(error.value).startswith(key)


# --------------------------------------------------------------------------- ensembles


def test_ensemble_is_one_keras_model_averaging_its_members(trained_run, tmp_path):
    import keras  # here, not at module level: collecting the tests must not load TensorFlow

    from medge.train.models import build_ensemble

    member = load_run(trained_run).load_model()
    member.name, other = "member0", keras.models.clone_model(member)
    other.name = "member1"
    other.set_weights([w * 0.9 for w in member.get_weights()])
    ensemble = build_ensemble([member, other])
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    loaded = keras.models.load_model(path)
    x = load_run(trained_run).load_dataset().splits["test"].x[:16]
    expected = (member.predict(x, verbose=0) + other.predict(x, verbose=0)) / 2
    assert np.allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    loaded.export(str(tmp_path / "saved"), format="tf_saved_model")
    assert (tmp_path / "saved" / "saved_model.pb").is_file()


# --------------------------------------------------------------------------- multi-class


def test_multiclass_run_reports_per_class_and_macro_auc(multiclass_run):
    metrics = json.loads((multiclass_run / "metrics.json").read_text())
    assert metrics["classes"] == ["normal", "other", "pneumonia"] and metrics["task"] == "multiclass"
    assert metrics["positive_class"] is None and metrics["threshold_policy"] == "argmax"
    test = metrics["test"]
    assert set(test["per_class"]) == {"normal", "other", "pneumonia"}
    aucs = [m["auc"] for m in test["per_class"].values()]
    assert test["auc"] == pytest.approx(np.mean(aucs))
    assert test["per_class"]["other"]["auc"] > 0.9  # CT/MR/US frames are easy to tell from chest X-rays
    matrix = np.asarray(test["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == test["n"]
    assert test["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    model = load_run(multiclass_run).load_model()
    x = load_run(multiclass_run).load_dataset().splits["test"].x
    probabilities = model.predict(x, verbose=0)
    assert probabilities.shape == (len(x), 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    report = (multiclass_run / "report.md").read_text()
    assert "| other |" in report and "not for diagnostic use" in report

    from medge.train.reevaluate import evaluate_run

    again = evaluate_run(multiclass_run, bootstrap=0, log=lambda *_: None)
    evaluation = json.loads((again / "evaluation.json").read_text())
    assert evaluation["test"]["confusion_matrix"] == test["confusion_matrix"]
    assert evaluation["test"]["per_class"]["other"]["auc"] == pytest.approx(test["per_class"]["other"]["auc"])


# --------------------------------------------------------------------------- thresholds and metrics


def test_threshold_policies_on_real_validation_scores(trained_run):
    y, scores = val_scores(trained_run)
    youden = choose_threshold("youden", y, scores)
    j = lambda t: (scores[y == 1] >= t).mean() + (scores[y == 0] < t).mean() - 1  # noqa: E731
    assert all(j(youden) >= j(t) - 1e-9 for t in np.unique(scores))
    screening = choose_threshold("sensitivity:0.95", y, scores)
    assert (scores[y == 1] >= screening).mean() >= 0.95
    assert screening <= youden or j(youden) == j(screening)
    strict = choose_threshold("specificity:0.9", y, scores)
    assert (scores[y == 0] < strict).mean() >= 0.9
    assert choose_threshold("fixed:0.5", y, scores) == 0.5
    assert str(parse_policy("Sensitivity:0.95")) == "sensitivity:0.95"
    for bad in ("youden:1", "sensitivity", "fixed:abc", "median"):
        with pytest.raises(ConfigError):
            parse_policy(bad)


def test_clinical_metrics_match_first_principles():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = np.clip(y * 0.3 + rng.normal(0.35, 0.2, 300), 0, 1).round(2)  # with ties
    pairs = [(p, n) for p in scores[y == 1] for n in scores[y == 0]]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(y, scores) == pytest.approx(brute)
    low, high = bootstrap_auc_ci(y, scores, n=300)
    assert low < brute < high
    metrics = binary_metrics(y, scores, 0.5, bootstrap=0)
    tp = int(((scores >= 0.5) & (y == 1)).sum())
    assert metrics["tp"] == tp and metrics["sensitivity"] == pytest.approx(tp / (y == 1).sum())
    assert metrics["auc_ci95"] is None


def test_balanced_class_weights():
    y = np.array([0] * 10 + [1] * 30)
    weights = sample_weights(y, 2)
    assert weights[0] == pytest.approx(2.0) and weights[-1] == pytest.approx(40 / 60)
    assert weights[y == 0].sum() == pytest.approx(weights[y == 1].sum())


def test_augmentation_changes_training_images_only():
    from medge.train.augment import augmentation_layers

    x = load_run_free_images()
    layers = augmentation_layers(("rotate", "zoom", "flip", "translate", "brightness", "contrast"), (0.0, 1.0), 0)
    augmented = np.asarray(layers(x, training=True))
    assert augmented.shape == x.shape and not np.allclose(augmented, x)
    assert 0.0 <= augmented.min() and augmented.max() <= 1.0
    assert np.allclose(np.asarray(layers(x, training=False)), x)


def load_run_free_images():
    from medge.train.data import load_dataset

    return load_dataset().splits["val"].x[:8]


# --------------------------------------------------------------------------- the architecture table


def build_tiny_dense(input_shape, n_classes, config, arch=None, name="tiny"):
    """A builder living outside medge: what a new architecture's author writes."""
    import keras  # here, not at module level: collecting the tests must not load TensorFlow
    from keras import layers

    from medge.train.models import output_layer

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Dense(arch.options["units"], activation="relu")(layers.Flatten()(inputs))
    return keras.Model(inputs, output_layer(n_classes)(x), name=name)


def test_a_new_architecture_is_one_table_row_and_its_builder(monkeypatch, tmp_path):
    import keras  # here, not at module level: collecting the tests must not load TensorFlow

    from medge.train.architectures import ARCHITECTURES, Architecture

    monkeypatch.setitem(ARCHITECTURES, "tinydense", Architecture(
        "tinydense", "a one-layer dense net", builder="tests.test_train_models:build_tiny_dense",
        normalization="symmetric", min_input_size=16, options={"units": 8}))
    config = quick_config(arch="tinydense", out=tmp_path / "run", limit=100, epochs=1, bootstrap=0, augment=())
    assert config.normalization == "symmetric" and config.input_channels == 1
    with pytest.raises(ConfigError, match="tinydense needs at least 16 pixels"):
        quick_config(arch="tinydense", input_size=12)
    run = train(config)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"]["arch"] == "tinydense" and metrics["preprocessing"]["normalization"] == "symmetric"
    assert keras.models.load_model(run / "model.keras").name == "tinydense"


def test_cli_choices_and_config_errors_come_from_the_table():
    from click.testing import CliRunner

    from medge.main import cli
    from medge.train.architectures import ARCHITECTURES
    from medge.train.cli import train_command

    option = next(p for p in train_command.params if p.name == "arch")
    assert list(option.type.choices) == ["auto", *ARCHITECTURES]
    with pytest.raises(ConfigError, match="choose from " + ", ".join(ARCHITECTURES)):
        TrainConfig(arch="resnet")
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert all(arch.summary.split()[0] in result.output for arch in ARCHITECTURES.values())


# --------------------------------------------------------------------------- honest intervals


def test_wilson_intervals_for_rates_on_small_samples():
    from medge.train.evaluate import wilson_interval

    # Published values (Wilson 1927; e.g. Newcombe 1998, table I): 0/10 -> 0-0.2775, 10/10 -> 0.7225-1.
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)
    assert wilson_interval(50, 100) == pytest.approx([0.4038, 0.5962], abs=1e-4)
    assert wilson_interval(0, 0) is None
    # Seven images, all right: a perfect score is not certainty.
    metrics = binary_metrics([0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 0.95], 0.5, bootstrap=500)
    assert metrics["accuracy"] == 1.0 and metrics["accuracy_ci95"][0] < 0.7
    assert metrics["sensitivity_ci95"][0] < 0.6 and metrics["specificity_ci95"][0] < 0.5
    assert metrics["auc_ci95"] is None and metrics["auc_ci_note"].startswith("no AUC interval: only 3/4")


def test_a_degenerate_bootstrap_auc_interval_is_flagged():
    y = np.array([0] * 30 + [1] * 30)
    perfect = np.where(y == 1, 0.9, 0.1)
    metrics = binary_metrics(y, perfect, 0.5, bootstrap=300)
    assert metrics["auc_ci95"] == [1.0, 1.0] and metrics["auc_ci_note"].startswith("degenerate AUC interval")
    rng = np.random.default_rng(1)
    noisy = np.clip(y * 0.3 + rng.normal(0.35, 0.2, 60), 0, 1)
    assert binary_metrics(y, noisy, 0.5, bootstrap=300)["auc_ci_note"] is None


def test_expected_calibration_error():
    from medge.train.evaluate import expected_calibration_error

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    calibrated = (rng.uniform(0, 1, 20000) < p).astype(int)  # outcomes drawn with probability p
    assert expected_calibration_error(calibrated, p) < 0.02
    overconfident = np.where(p > 0.5, 0.99, 0.01)  # same decisions, extreme scores
    assert expected_calibration_error(calibrated, overconfident) > 0.2
