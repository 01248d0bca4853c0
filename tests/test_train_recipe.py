"""The training recipe of issue 10: auto settings from the data, ResNet-18 (28), --search, mixed ensembles."""
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from medge.data import PNEUMONIAMNIST
from medge.edge.errors import ConfigError
from medge.train import recipe
from medge.train.callbacks import smoothed
from medge.train.config import TrainConfig
from tests.fixtures.models import needs_tensorflow

RETINAMNIST = PNEUMONIAMNIST.parent / "retinamnist_28.npz"


# --------------------------------------------------------------------------- settings from the data


def test_colour_data_trains_in_colour_and_grey_stays_grey(tmp_path):
    assert recipe.data_channels(RETINAMNIST) == 3
    assert recipe.data_channels(PNEUMONIAMNIST) == 1
    # Grey X-rays saved as 3-channel PNGs (as many exports are) are grey, not colour.
    grey = np.load(PNEUMONIAMNIST)["train_images"][:6]
    for index, image in enumerate(grey):
        folder = tmp_path / ("a" if index % 2 else "b")
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / f"{index}.png"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    assert recipe.data_channels(tmp_path) == 1
    config = recipe.resolve_channels(TrainConfig(data=RETINAMNIST))
    assert config.input_channels == 3
    assert recipe.resolve_channels(TrainConfig(data=RETINAMNIST, channels=1)).input_channels == 1


def test_schedule_patience_and_batch_norm_follow_the_dataset_size():
    small, large = 1080, 4708  # RetinaMNIST, PneumoniaMNIST training images
    assert recipe.auto_epochs(small, 64) == recipe.MAX_EPOCHS  # 17 steps an epoch: many epochs
    assert recipe.auto_epochs(large, 64) < recipe.auto_epochs(small, 64)
    assert recipe.auto_epochs(100_000, 64) == recipe.MIN_EPOCHS
    assert recipe.auto_patience(100) == 20 and recipe.auto_patience(20) == 5
    # warm-up is ~200 steps but never more than a tenth of the run
    assert recipe.auto_warmup_epochs(large, 64, 41) == 3 and recipe.auto_warmup_epochs(small, 64, 100) == 10
    # batch-norm statistics average over about one epoch: short epochs, shorter memory
    assert recipe.auto_bn_momentum(small, 64) < recipe.auto_bn_momentum(large, 64) <= 0.99
    assert recipe.auto_bn_momentum(100, 64) == 0.9


def test_sqrt_class_weights_are_milder_than_balanced():
    y = np.array([0] * 80 + [1] * 15 + [2] * 5)
    balanced = recipe.class_weight_vector(y, 3, "balanced")
    sqrt = recipe.class_weight_vector(y, 3, "sqrt")
    assert balanced[y].mean() == pytest.approx(1) and sqrt[y].mean() == pytest.approx(1)
    assert balanced[2] / balanced[0] == pytest.approx(16) and sqrt[2] / sqrt[0] == pytest.approx(4)
    assert np.all(recipe.class_weight_vector(y, 3, "none") == 1)
    # auto: no weights for mild imbalance (RetinaMNIST's 7.4:1), sqrt weights beyond 10:1
    assert recipe.auto_class_weight(np.array([0] * 74 + [1] * 10), 2) == "none"
    assert recipe.auto_class_weight(y, 3) == "sqrt"


def test_early_stopping_watches_a_smoothed_metric():
    # One lucky epoch (0.9) does not beat a steady run of 0.8s once averaged over 3 epochs.
    values = [0.5, 0.9, 0.5, 0.8, 0.8, 0.8]
    assert int(np.argmax(values)) == 1 and int(np.argmax(smoothed(values))) == 5


def test_arch_auto_rule_and_resolved_config_records_numbers():
    from medge.train.data import load_dataset

    assert recipe.choose_arch(100_000, 20, 28) == "cnn"
    budget = recipe.RESNET_BUDGET_IMAGE_EPOCHS_28
    assert recipe.choose_arch(max(1, budget // 100), 100, 28) == ("resnet18" if budget >= 100 else "cnn")
    config = TrainConfig(data=PNEUMONIAMNIST)
    assert config.arch == "auto" and config.epochs is None and config.patience is None
    resolved = recipe.resolve(config, load_dataset(PNEUMONIAMNIST))
    record = resolved.to_dict()
    assert record["arch"] in ("cnn", "resnet18") and record["class_weight"] == "none"  # PneumoniaMNIST: 2.9:1
    assert all(isinstance(record[key], int) for key in ("epochs", "patience", "warmup_epochs"))
    assert 0.9 <= record["bn_momentum"] <= 0.99


def test_bad_recipe_options_fail_before_training():
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=0.7)
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ConfigError, match="ensemble_archs: cnn, mobilenetv2 expect different preprocessing"):
        TrainConfig(ensemble_archs=("cnn", "mobilenetv2"))
    assert TrainConfig(ensemble_archs=("cnn", "resnet18")).ensemble == 2


# --------------------------------------------------------------------------- ResNet-18 (28)


def test_resnet18_row_builds_the_small_input_network_and_trains_a_step():
    needs_tensorflow()
    import keras

    from convert.head import split_output_activation
    from medge.train.models import build_model, compile_model

    config = TrainConfig(arch="resnet18", bn_momentum=0.9)
    model = build_model((28, 28, 3), 5, config)
    # 3x3 stride-1 stem and no max-pool: the first stage still sees 28x28; the last 4x4.
    assert model.get_layer("stem_conv").kernel_size == (3, 3)
    assert model.get_layer("stage0_block1_out").output.shape[1:3] == (28, 28)
    assert model.get_layer("stage3_block1_out").output.shape[1:3] == (4, 4)
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)
    assert 11_000_000 < model.count_params() < 11_400_000  # ResNet-18's ~11.2 M
    compile_model(model, 5, 1e-3, label_smoothing=0.05)
    x = np.random.default_rng(0).random((16, 28, 28, 3), dtype=np.float32)
    y = np.eye(5, dtype=np.float32)[np.arange(16) % 5]
    before = model.get_layer("stem_conv").get_weights()[0].copy()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert not np.allclose(before, model.get_layer("stem_conv").get_weights()[0])
    # ends at one softmax Dense: convert can cut it at the logits for full-integer int8
    logits_model, activation = split_output_activation(model)
    assert activation == "softmax" and logits_model.outputs[0].shape[-1] == 5


def test_mixed_ensemble_trains_a_cnn_and_a_resnet(monkeypatch, tmp_path):
    needs_tensorflow()
    import keras

    from medge.train.architectures import ARCHITECTURES, Architecture
    from medge.train.pipeline import train

    # The real builder at a quarter of the width keeps this test quick.
    monkeypatch.setitem(ARCHITECTURES, "resnet18", Architecture(
        "resnet18", "ResNet-18 (test width)", builder="medge.train.resnet:build_resnet", normalization="unit",
        options={"widths": (8, 16, 32, 64), "blocks": (2, 2, 2, 2)}))
    run = train(TrainConfig(data=RETINAMNIST, out=tmp_path / "run", ensemble_archs=("cnn", "resnet18"),
                            filters=(8, 16), dense_units=0, limit=120, epochs=1, bootstrap=0, verbose=False))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"]["arch"] == "cnn+resnet18" and metrics["model"]["ensemble"] == 2
    assert metrics["preprocessing"]["channels"] == 3  # colour data, no --channels given
    model = keras.models.load_model(run / "model.keras")
    names = {layer.name for layer in model.layers}
    assert {"member0", "member1"} <= names


# --------------------------------------------------------------------------- --search


def test_search_runs_trials_on_validation_and_saves_the_best(tmp_path):
    needs_tensorflow()
    from medge.main import cli

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", str(RETINAMNIST), "--out", str(out), "--limit", "150", "--epochs", "1",
                                      "--search", "2", "--search-epochs", "1", "--arch", "cnn", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert "search trial 1/2:" in result.output and "search trial 2/2:" in result.output
    assert "the test split is not used" in result.output
    record = json.loads((out / "search.json").read_text())
    assert len(record["trials"]) == 2 and record["split"].startswith("validation only")
    best = record["best"]
    assert best["value"] == max(trial["value"] for trial in record["trials"])
    metrics = json.loads((out / "metrics.json").read_text())
    used = metrics["training"]["config"]
    for key, value in best["settings"].items():  # the run's model was trained with the best settings
        assert used[key] == pytest.approx(value) if isinstance(value, float) else used[key] == value
