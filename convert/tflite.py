"""TFLite exports: float32, float16, dynamic-range and full-integer int8, all from one SavedModel."""
from __future__ import annotations

from pathlib import Path

from medge.edge.errors import MedgeError

from .formats import ExportContext


def _converter(context: ExportContext):
    import tensorflow as tf

    return tf, tf.lite.TFLiteConverter.from_saved_model(str(context.saved_model))


def _write(converter, path: Path) -> None:
    try:
        data = converter.convert()
    except Exception as error:  # the converter raises ConverterError and friends
        raise MedgeError(f"TFLite conversion to {path.name} failed: {str(error).strip().splitlines()[-1]}") from None
    path.write_bytes(data)


def export_tflite_f32(context: ExportContext, path: Path) -> None:
    _, converter = _converter(context)
    _write(converter, path)


def export_tflite_f16(context: ExportContext, path: Path) -> None:
    tf, converter = _converter(context)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    _write(converter, path)


def export_tflite_dynamic(context: ExportContext, path: Path) -> None:
    tf, converter = _converter(context)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    _write(converter, path)


def export_tflite_int8(context: ExportContext, path: Path) -> None:
    """Every op in int8, int8 input and output: what microcontrollers and NPUs require."""
    tf, converter = _converter(context)
    samples = context.calibration

    def representative_dataset():
        for sample in samples:
            context.tick()
            yield [sample[None]]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    _write(converter, path)
