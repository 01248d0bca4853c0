"""One `Predictor` interface over the runtimes a device may have.

- "litert": ai-edge-litert's interpreter (the default for .tflite),
- "tflite-runtime": the older tflite-runtime wheel (a fallback on boards without LiteRT),
- "onnxruntime": for .onnx files.

Every predictor takes float32 model input (N, H, W, C), as `medge.edge.preprocess` makes
it, and returns float32 class probabilities (N, K); a binary sigmoid model's (N, 1) output
becomes (N, 2) = [1 - p, p]. Quantized int8 inputs and outputs are converted with the
model's own scale and zero point, read from the model file itself, so the caller never
handles integers. The conversion gate (`medge convert`) measures models through exactly
this code, so the figures it reports are the device's figures.
"""
from __future__ import annotations

import importlib
import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from .bundle import Artifact, TensorInfo
from .errors import BundleError

# Runtime family (medge.edge.bundle.RUNTIME_FAMILY) -> the runtimes that run it, in order of
# preference; the first is the device default and what `medge convert`'s format rows name.
FAMILY_RUNTIMES = {"tflite": ("litert", "tflite-runtime"), "onnx": ("onnxruntime",)}
TFLITE_RUNTIMES = FAMILY_RUNTIMES["tflite"]
ONNX_RUNTIMES = FAMILY_RUNTIMES["onnx"]
RUNTIMES = tuple(name for names in FAMILY_RUNTIMES.values() for name in names)
METADATA_KEY = "medge"  # where `medge convert` embeds the manifest essentials in every model file
_MODULES = {"litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter",
            "onnxruntime": "onnxruntime"}


def runtimes_for(family: str) -> tuple[str, ...]:
    """The runtimes that can execute a model file of this family ("tflite", "onnx")."""
    return FAMILY_RUNTIMES.get(family, ())


def available_runtimes() -> list[str]:
    """The runtimes importable here, in order of preference."""
    found = []
    for name in RUNTIMES:
        try:
            importlib.import_module(_MODULES[name])
        except ImportError:
            continue
        found.append(name)
    return found


# --------------------------------------------------------------------------- int8 conversion


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype: str = "int8") -> np.ndarray:
    """float -> int8/uint8 with round-to-nearest and saturation, as TFLite's own quantizer does."""
    info = np.iinfo(np.dtype(dtype))
    quantized = np.round(np.asarray(values, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((np.asarray(values).astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def apply_activation(logits: np.ndarray, activation: str | None) -> np.ndarray:
    """The output activation a logits-ending model leaves to the runtime (float32, numerically stable)."""
    if activation is None:
        return logits
    logits = np.asarray(logits, dtype=np.float64)
    if activation == "sigmoid":
        return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)
    if activation == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
    raise BundleError(f"unknown output activation {activation!r} (expected sigmoid or softmax)")


def calibrated_probabilities(output: np.ndarray, activation: str | None, temperature: float = 1.0) -> np.ndarray:
    """Model output -> (N, K) calibrated probabilities: the logits divided by the bundle's
    temperature (`output.temperature`, fitted on validation by `medge train`) before the
    activation. A file that ends at probabilities (an ensemble's average) is calibrated through
    the logs of its probabilities, softmax(log p / T), which for [1 - p, p] is sigmoid(logit(p) / T)."""
    temperature = 1.0 if temperature is None else float(temperature)
    if not temperature > 0:
        raise BundleError(f"output temperature must be > 0, not {temperature}")
    if activation is not None:
        logits = np.asarray(output, dtype=np.float64)
        return to_probabilities(apply_activation(logits / temperature if temperature != 1.0 else logits, activation))
    probabilities = to_probabilities(output)
    if temperature == 1.0:
        return probabilities
    return apply_activation(np.log(np.clip(probabilities.astype(np.float64), 1e-7, 1.0)) / temperature, "softmax")


def to_probabilities(output: np.ndarray) -> np.ndarray:
    """Model output -> (N, K) probabilities; a single sigmoid column becomes [1 - p, p]."""
    output = np.asarray(output, dtype=np.float32).reshape(len(output), -1)
    if output.shape[1] == 1:
        positive = np.clip(output[:, 0], 0.0, 1.0)
        return np.stack([1.0 - positive, positive], axis=1).astype(np.float32)
    return output


# --------------------------------------------------------------------------- predictors


class Predictor:
    """Runs one model file. `predict` is serialised with a lock: interpreters are not thread-safe."""

    runtime_name: str = ""

    def __init__(self, path: Path, threads: int | None, activation: str | None = None, temperature: float = 1.0):
        self.path = Path(path)
        self.threads = threads
        self.activation = activation
        self.temperature = 1.0 if temperature is None else float(temperature)  # calibration: logits / T
        self._lock = threading.Lock()
        self._features_out: list[np.ndarray] | None = None  # collecting features (predict_with_features)

    input: TensorInfo
    output: TensorInfo
    # The features, a second output of files made for the OOD guard (edge/ood.py); None otherwise.
    features: TensorInfo | None = None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        expected = tuple(self.input.shape[1:])
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise BundleError(f"{self.path.name}: model expects input (N, {', '.join(map(str, expected))}), got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, max(2, int(self.output.shape[-1]))), dtype=np.float32)
        with self._lock:
            output = self._run(batch)
        return calibrated_probabilities(output, self.activation, self.temperature)

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities as `predict` gives them, the OOD features (N, D) or None when the
        file has no features output): one model call for both."""
        batch = np.asarray(batch, dtype=np.float32)
        if self.features is None or batch.ndim != 4 or len(batch) == 0 or tuple(batch.shape[1:]) != tuple(
                self.input.shape[1:]):
            return self.predict(batch), None  # predict gives the empty answer or the error
        with self._lock:
            self._features_out = []  # _run appends the features of each invoke while this is a list
            try:
                output = self._run(batch)
                features = np.concatenate(self._features_out)[:len(batch)]
            finally:
                self._features_out = None
        return calibrated_probabilities(output, self.activation, self.temperature), features

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class TFLitePredictor(Predictor):
    def __init__(self, path: Path, runtime: str, threads: int | None, activation: str | None = None,
                 temperature: float = 1.0):
        super().__init__(path, threads, activation, temperature)
        self.runtime_name = runtime
        module = importlib.import_module(_MODULES[runtime])
        try:
            self._interpreter = module.Interpreter(model_path=str(path), num_threads=threads)
        except ValueError as error:
            raise BundleError(f"{path.name}: {runtime} cannot load this model ({str(error).splitlines()[0]})") from None
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output, self._feature_output = _tflite_outputs(self._interpreter)
        self._batch = int(self._input["shape"][0])
        signature = self._input.get("shape_signature")
        # Models exported with a dynamic batch can be resized to evaluate many images per call.
        self._resizable = signature is not None and len(signature) and int(signature[0]) == -1
        self.input = _tflite_tensor_info(self._input)
        self.output = replace(_tflite_tensor_info(self._output), activation=activation, temperature=self.temperature)
        self.features = None if self._feature_output is None else _tflite_tensor_info(self._feature_output)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if not self._resizable and len(batch) < self._batch:
            # A fixed batch larger than the images given: pad with copies, keep only the real rows.
            padding = np.repeat(batch[-1:], self._batch - len(batch), axis=0)
            return self._run(np.concatenate([batch, padding]))[:len(batch)]
        if not self._resizable and len(batch) != self._batch:
            return np.concatenate([self._run(batch[i:i + self._batch]) for i in range(0, len(batch), self._batch)])
        if len(batch) != self._batch:
            shape = [len(batch)] + [int(d) for d in self._input["shape"][1:]]
            self._interpreter.resize_tensor_input(self._input["index"], shape)
            self._interpreter.allocate_tensors()
            self._batch = len(batch)
            self._input = self._interpreter.get_input_details()[0]
            self._output, self._feature_output = _tflite_outputs(self._interpreter)
        values = batch
        if self.input.quantized:
            values = quantize(batch, self.input.scale, self.input.zero_point, self.input.dtype)
        self._interpreter.set_tensor(self._input["index"], values.astype(self._input["dtype"], copy=False))
        self._interpreter.invoke()
        output = self._interpreter.get_tensor(self._output["index"])
        if self._features_out is not None and self._feature_output is not None:
            features = self._interpreter.get_tensor(self._feature_output["index"])
            self._features_out.append(dequantize(features, self.features.scale, self.features.zero_point)
                                      if self.features.quantized else features.astype(np.float32, copy=True))
        if self.output.quantized:
            return dequantize(output, self.output.scale, self.output.zero_point)
        return output.astype(np.float32, copy=True)


def _tflite_outputs(interpreter) -> tuple[dict, dict | None]:
    """(the scores output, the features output or None). A file made for the OOD guard has two
    outputs; the converter lists them in no fixed order, its signature names them output_0
    (scores) and output_1 (features) in the order the model returns them."""
    details = interpreter.get_output_details()
    if len(details) == 1:
        return details[0], None
    by_index = {d["index"]: d for d in details}
    try:
        named = interpreter.get_signature_runner().get_output_details()
        ordered = [by_index[named[key]["index"]] for key in sorted(named)]
    except (ValueError, KeyError, AttributeError):
        ordered = sorted(details, key=lambda d: d.get("name", ""))  # "...:0" before "...:1"
    return ordered[0], ordered[1]


def _tflite_tensor_info(details: dict) -> TensorInfo:
    scale, zero_point = details.get("quantization", (0.0, 0))
    dtype = np.dtype(details["dtype"]).name
    signature = details.get("shape_signature")
    shape = [int(d) for d in (signature if signature is not None and len(signature) else details["shape"])]
    quantized = dtype in ("int8", "uint8") and scale
    return TensorInfo(shape=tuple(shape), dtype=dtype, name=details.get("name", ""),
                      scale=float(scale) if quantized else None, zero_point=int(zero_point) if quantized else None)


class OnnxPredictor(Predictor):
    runtime_name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None, activation: str | None = None, temperature: float = 1.0):
        super().__init__(path, threads, activation, temperature)
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                         providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{path.name}: onnxruntime cannot load this model ({str(error).splitlines()[0]})") from None
        model_input = self._session.get_inputs()[0]
        model_output = self._session.get_outputs()[0]
        outputs = self._session.get_outputs()
        if len(outputs) > 1:  # the features, for the OOD guard (edge/ood.py)
            self.features = TensorInfo(shape=_onnx_shape(outputs[1].shape), dtype=_onnx_dtype(outputs[1].type),
                                       name=outputs[1].name)
        self._input_name = model_input.name
        self.input = TensorInfo(shape=_onnx_shape(model_input.shape), dtype=_onnx_dtype(model_input.type), name=model_input.name)
        self.output = TensorInfo(shape=_onnx_shape(model_output.shape), dtype=_onnx_dtype(model_output.type),
                                 name=model_output.name, activation=activation, temperature=self.temperature)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        outputs = self._session.run(None, {self._input_name: batch})
        if self._features_out is not None and len(outputs) > 1:
            self._features_out.append(np.asarray(outputs[1], dtype=np.float32))
        return np.asarray(outputs[0], dtype=np.float32)


def _onnx_shape(shape) -> tuple:
    return tuple(d if isinstance(d, int) else -1 for d in shape)


def _onnx_dtype(type_name: str) -> str:
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
            "tensor(uint8)": "uint8"}.get(type_name, type_name)


# --------------------------------------------------------------------------- factory


def create_predictor(artifact: Artifact | str | Path, runtime: str | None = None, threads: int | None = None,
                     temperature: float | None = None) -> Predictor:
    """A predictor for a bundle artifact or a bare .tflite/.onnx file.

    `temperature=None` takes the calibration temperature from the bundle's artifact output (or a
    bare file's embedded metadata), 1.0 when neither has one (bundles made before calibration).

    `runtime=None` picks the best available for the file type; naming one that cannot run
    the file, or is not installed, is a BundleError with the fix in its message.
    """
    if not isinstance(artifact, Artifact):
        artifact = Artifact.from_file(artifact)
    path = Path(artifact.file)
    if not path.is_file():
        raise BundleError(f"{path}: model file not found")
    if threads is not None and threads < 1:
        raise BundleError(f"threads must be at least 1, not {threads}")
    family = artifact.family
    candidates = runtimes_for(family)
    installed = available_runtimes()
    if runtime in (None, "auto"):
        usable = [name for name in candidates if name in installed]
        if not usable:
            raise BundleError(f"{path.name}: no runtime for {family} models is installed "
                              f"(pip install {'ai-edge-litert' if family == 'tflite' else 'onnxruntime'})")
        runtime = usable[0]
    elif runtime not in RUNTIMES:
        raise BundleError(f"unknown runtime {runtime!r} (choose from: auto, {', '.join(RUNTIMES)})")
    elif runtime not in candidates:
        raise BundleError(f"{path.name}: runtime {runtime!r} cannot run {family} models (use one of: {', '.join(candidates)})")
    elif runtime not in installed:
        raise BundleError(f"runtime {runtime!r} is not installed here (installed: {', '.join(installed) or 'none'})")
    # A bundle says whether the file ends at the logits; a bare file says so in its embedded metadata.
    if artifact.output is not None:
        activation, stored_temperature = artifact.output.activation, artifact.output.temperature
    else:
        metadata = embedded_metadata(path) or {}
        activation, stored_temperature = metadata.get("output_activation"), metadata.get("output_temperature")
    temperature = stored_temperature if temperature is None else temperature
    temperature = 1.0 if temperature is None else float(temperature)
    if not temperature > 0:
        raise BundleError(f"{path.name}: output temperature must be > 0, not {temperature}")
    if family == "tflite":
        return TFLitePredictor(path, runtime, threads, activation, temperature)
    return OnnxPredictor(path, threads, activation, temperature)


def embedded_metadata(path: str | Path) -> dict | None:
    """The medge metadata `medge convert` embeds in every model file, read without TensorFlow."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
            text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
            return json.loads(text) if text else None
        from ai_edge_litert import schema_py_generated as schema

        model = schema.Model.GetRootAs(bytearray(path.read_bytes()), 0)
        for index in range(model.MetadataLength()):
            entry = model.Metadata(index)
            if entry.Name().decode() == METADATA_KEY:
                return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    except Exception:  # best effort: an unreadable file is reported when the runtime loads it
        return None
    return None
