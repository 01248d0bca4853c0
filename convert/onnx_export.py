"""ONNX exports: float32 through tf2onnx, and static int8 (QDQ, per-channel) through onnxruntime."""
from __future__ import annotations

import shutil
from pathlib import Path

from medge.edge.errors import MedgeError

from .formats import ExportContext

OPSET = 17
INPUT_NAME = "input"


def export_onnx_f32(context: ExportContext, path: Path) -> None:
    import onnx
    import tensorflow as tf
    import tf2onnx

    model = context.model
    # tf2onnx.from_keras does not understand Keras 3 models; tracing a tf.function with an
    # explicit signature (dynamic batch) does.
    signature = [tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32, name=INPUT_NAME)]
    function = tf.function(lambda x: model(x, training=False), input_signature=signature)
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=OPSET)
        onnx.checker.check_model(proto)
    except Exception as error:
        raise MedgeError(f"ONNX export failed: {str(error).strip().splitlines()[-1]}") from None
    onnx.save(proto, str(path))


def export_onnx_int8(context: ExportContext, path: Path) -> None:
    """Static quantization: QDQ nodes, per-channel int8 weights, int8 activations from calibration."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    context.workdir.mkdir(parents=True, exist_ok=True)
    float_path = context.workdir / "onnx_int8_source.onnx"
    prepared_path = context.workdir / "onnx_int8_prepared.onnx"
    export_onnx_f32(context, float_path)
    # Shape inference and graph optimisation first, as onnxruntime recommends before quantizing.
    quant_pre_process(str(float_path), str(prepared_path), skip_symbolic_shape=False)

    class Samples(CalibrationDataReader):
        def __init__(self):
            self._samples = iter(context.calibration)

        def get_next(self):
            sample = next(self._samples, None)
            if sample is None:
                return None
            context.tick()
            return {INPUT_NAME: sample[None]}

    try:
        quantize_static(str(prepared_path), str(path), Samples(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        onnx.checker.check_model(str(path))
    except Exception as error:
        raise MedgeError(f"ONNX int8 quantization failed: {str(error).strip().splitlines()[-1]}") from None
    shutil.rmtree(context.workdir / "onnx_int8_tmp", ignore_errors=True)
