"""The device runtimes behind one Predictor: int8 handling, batching, and clear refusals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medge.data import PNEUMONIAMNIST
from medge.edge.bundle import load_bundle
from medge.edge.errors import BundleError
from medge.edge.preprocess import preprocess
from medge.edge.runtime import (
    apply_activation,
    available_runtimes,
    create_predictor,
    dequantize,
    quantize,
    to_probabilities,
)
from tests.fixtures.models import needs_tensorflow


def test_quantize_rounds_saturates_and_dequantize_inverts():
    scale, zero_point = 1 / 255, -128
    values = np.array([0.0, 0.25, 1.0, 1.5, -0.2], dtype=np.float32)
    q = quantize(values, scale, zero_point)
    assert q.dtype == np.int8
    assert q.tolist() == [-128, -64, 127, 127, -128]  # 0.25 -> 63.75 rounds to 64; out of range saturates
    back = dequantize(q, scale, zero_point)
    assert np.all(np.abs(back[:3] - values[:3]) <= scale / 2 + 1e-7)


def test_binary_sigmoid_output_becomes_two_class_probabilities():
    p = to_probabilities(np.array([[0.2], [0.9]], dtype=np.float32))
    assert p.shape == (2, 2) and np.allclose(p, [[0.8, 0.2], [0.1, 0.9]])
    softmax = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    assert np.array_equal(to_probabilities(softmax), softmax)


def test_output_activations_applied_after_dequantizing_are_stable():
    logits = np.array([[-800.0], [0.0], [800.0]], dtype=np.float32)
    assert apply_activation(logits, "sigmoid")[:, 0].tolist() == [0.0, 0.5, 1.0]
    softmax = apply_activation(np.array([[1000.0, 1000.0, -1000.0]], dtype=np.float32), "softmax")
    assert np.allclose(softmax, [[0.5, 0.5, 0.0]])
    assert apply_activation(logits, None) is logits
    with pytest.raises(BundleError, match="unknown output activation"):
        apply_activation(logits, "relu")


def test_device_runtimes_are_available():
    assert {"litert", "onnxruntime"} <= set(available_runtimes())


def test_every_format_row_names_a_device_runtime_that_runs_its_file():
    from medge.convert.formats import FORMATS
    from medge.edge.bundle import RUNTIME_FAMILY
    from medge.edge.runtime import runtimes_for
    from medge.edge.schemas import load_schema

    recorded = load_schema("bundle")["properties"]["artifacts"]["items"]["properties"]["runtime"]["enum"]
    for fmt in FORMATS.values():
        family = RUNTIME_FAMILY[Path(fmt.file).suffix]
        # The row's runtime is the family's device default, the one the gate measures on.
        assert fmt.runtime == runtimes_for(family)[0], fmt
        assert fmt.runtime in recorded, fmt
    from medge.convert.formats import Format

    with pytest.raises(ValueError, match="cannot run"):
        Format("onnx-bad", "model.onnx", "litert", "onnx_export:export_onnx_f32", False, "ONNX on LiteRT")


@pytest.mark.parametrize("fixture", ["int8_bundle", "onnx_bundle"])
def test_batches_of_any_size_give_the_same_per_image_result(fixture, request):
    bundle = load_bundle(request.getfixturevalue(fixture))
    predictor = create_predictor(bundle.artifact(), threads=2)
    assert predictor.threads == 2
    images = np.load(PNEUMONIAMNIST)["test_images"][:7]
    x = np.stack([preprocess(image, bundle.spec) for image in images])
    batch = predictor.predict(x)
    single = np.concatenate([predictor.predict(x[i:i + 1]) for i in range(len(x))])
    assert batch.shape == (7, 2) and batch.dtype == np.float32
    assert np.allclose(batch, single, atol=1e-6)
    assert np.allclose(batch.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(BundleError, match="model expects input"):
        predictor.predict(np.zeros((1, 32, 32, 1), dtype=np.float32))


def test_bad_runtime_requests_and_bad_files_are_refused(int8_bundle, tmp_path):
    artifact = load_bundle(int8_bundle).artifact()
    with pytest.raises(BundleError, match="unknown runtime 'tensorrt'"):
        create_predictor(artifact, runtime="tensorrt")
    with pytest.raises(BundleError, match="cannot run tflite models"):
        create_predictor(artifact, runtime="onnxruntime")
    if "tflite-runtime" not in available_runtimes():
        with pytest.raises(BundleError, match="not installed"):
            create_predictor(artifact, runtime="tflite-runtime")
    with pytest.raises(BundleError, match="threads must be at least 1"):
        create_predictor(artifact, threads=0)
    with pytest.raises(BundleError, match="not found"):
        create_predictor(tmp_path / "none.tflite")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(BundleError, match="unknown model file type"):
        create_predictor(tmp_path / "model.pt")
    (tmp_path / "garbage.tflite").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="cannot load this model"):
        create_predictor(tmp_path / "garbage.tflite")
    (tmp_path / "garbage.onnx").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="cannot load this model"):
        create_predictor(tmp_path / "garbage.onnx")


def test_a_fixed_batch_model_accepts_fewer_or_more_images_than_its_batch(tmp_path):
    needs_tensorflow()
    import tensorflow as tf

    inputs = tf.keras.Input(shape=(8, 8, 1), batch_size=4)
    outputs = tf.keras.layers.Dense(1, activation="sigmoid")(tf.keras.layers.Flatten()(inputs))
    path = tmp_path / "fixed4.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inputs, outputs)).convert())
    predictor = create_predictor(path)
    x = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)
    batch = predictor.predict(x)  # 4 + a padded 2: used to recurse forever
    single = np.concatenate([predictor.predict(x[i:i + 1]) for i in range(len(x))])
    assert batch.shape == (6, 2) and np.allclose(batch, single, atol=1e-6)
