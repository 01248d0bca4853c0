"""The table of export formats: one row per format drives option parsing, export and the gate.

Each row names the function that writes the file (one function per format, in
`medge.convert.tflite` and `medge.convert.onnx_export`), the runtime the gate measures it on
(the device's runtime, `medge.edge.runtime`), and whether it needs calibration data.
"""
from __future__ import annotations

from dataclasses import dataclass

from medge.edge.errors import InputError


@dataclass(frozen=True)
class Format:
    name: str  # what --formats takes and what medge.json records
    file: str  # file name inside the bundle
    runtime: str  # the medge.edge runtime the gate uses
    exporter: str  # "module:function" in medge.convert
    calibrated: bool  # needs the representative dataset
    quantized: bool  # integer weights (and activations, for int8)
    description: str


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("tflite-f32", "model_f32.tflite", "litert", "tflite:export_tflite_f32", False, False,
           "TFLite float32"),
    Format("tflite-f16", "model_f16.tflite", "litert", "tflite:export_tflite_f16", False, False,
           "TFLite float16 weights"),
    Format("tflite-dynamic", "model_dynamic.tflite", "litert", "tflite:export_tflite_dynamic", False, True,
           "TFLite dynamic-range (int8 weights, float activations)"),
    Format("tflite-int8", "model_int8.tflite", "litert", "tflite:export_tflite_int8", True, True,
           "TFLite full-integer int8 (int8 input and output)"),
    Format("onnx-f32", "model_f32.onnx", "onnxruntime", "onnx_export:export_onnx_f32", False, False,
           "ONNX float32"),
    Format("onnx-int8", "model_int8.onnx", "onnxruntime", "onnx_export:export_onnx_int8", True, True,
           "ONNX int8 (static QDQ, per-channel)"),
)}


def parse_formats(text: str | None, int8: bool = False, onnx: bool = False) -> list[Format]:
    """--formats a,b (explicit) or the --int8/--onnx shorthands -> formats in the given order.

    The first format is the bundle's default artifact, the one a device loads.
    """
    if text:
        names = [part.strip() for part in text.split(",") if part.strip()]
    else:
        names = []
        if int8:
            names.append("tflite-int8")
            if onnx:
                names.append("onnx-int8")
        elif onnx:
            names.append("onnx-f32")
    if not names:
        raise InputError("nothing to convert: pass --int8 (the common case) or --formats "
                         f"(choose from: {', '.join(FORMATS)})")
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise InputError(f"unknown format {unknown[0]!r} (choose from: {', '.join(FORMATS)})")
    seen = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return [FORMATS[name] for name in seen]


@dataclass
class ExportContext:
    """What every export function receives: the float model and, lazily, its SavedModel."""

    model: object  # keras.Model
    workdir: object  # pathlib.Path for intermediate files (SavedModel, pre-processed ONNX)
    calibration: object = None  # float32 (n, H, W, C) or None
    progress: object = None  # callable(advance: int) ticked once per calibration sample
    output_activation: str | None = None  # set when `model` ends at the logits (see convert/head.py)
    _saved_model: object = None

    @property
    def saved_model(self):
        """The SavedModel every TFLite format converts from (exported once per conversion)."""
        if self._saved_model is None:
            path = self.workdir / "saved_model"
            self.workdir.mkdir(parents=True, exist_ok=True)
            # Keras 3 -> TFLite must go through a SavedModel: from_concrete_functions gives NaN outputs.
            self.model.export(str(path), format="tf_saved_model", verbose=False)
            self._saved_model = path
        return self._saved_model

    def tick(self, count: int = 1) -> None:
        if self.progress is not None:
            self.progress(count)
