"""The table of export formats: one row per format drives option parsing, export, metadata and the gate.

A new format is one row here plus its export function (in `medge.convert.tflite` or
`medge.convert.onnx_export`). The row says everything the rest needs: the file name, whose
suffix is the runtime family (`medge.edge.bundle.RUNTIME_FAMILY`: which device runtimes can
run it and how `medge.convert.metadata` embeds the medge metadata), the runtime the gate
measures it on (recorded in medge.json), and whether it needs calibration data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from medge.edge.bundle import RUNTIME_FAMILY
from medge.edge.errors import InputError
from medge.edge.runtime import runtimes_for


@dataclass(frozen=True)
class Format:
    name: str  # what --formats takes and what medge.json records
    file: str  # file name inside the bundle; its suffix picks the runtime family
    runtime: str  # the medge.edge runtime the gate measures it on (the device default for the family)
    exporter: str  # "module:function" in medge.convert
    calibrated: bool  # needs the representative dataset (integer activations)
    description: str

    def __post_init__(self):
        # A row that no device runtime could run is a programming error: fail at import, not mid-conversion.
        family = RUNTIME_FAMILY.get("." + self.file.rpartition(".")[2])
        if family is None or self.runtime not in runtimes_for(family):
            raise ValueError(f"format {self.name}: runtime {self.runtime!r} cannot run {self.file}")


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("tflite-f32", "model_f32.tflite", "litert", "tflite:export_tflite_f32", False, "TFLite float32"),
    Format("tflite-f16", "model_f16.tflite", "litert", "tflite:export_tflite_f16", False, "TFLite float16 weights"),
    Format("tflite-dynamic", "model_dynamic.tflite", "litert", "tflite:export_tflite_dynamic", False,
           "TFLite dynamic-range (int8 weights, float activations)"),
    Format("tflite-int8", "model_int8.tflite", "litert", "tflite:export_tflite_int8", True,
           "TFLite full-integer int8 (int8 input and output)"),
    Format("onnx-f32", "model_f32.onnx", "onnxruntime", "onnx_export:export_onnx_f32", False, "ONNX float32"),
    Format("onnx-int8", "model_int8.onnx", "onnxruntime", "onnx_export:export_onnx_int8", True,
           "ONNX 8-bit (static QDQ, uint8 weights and activations)"),
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
    choices: dict = field(default_factory=dict)  # format name -> what its export chose (the report keeps it)
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
