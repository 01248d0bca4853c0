"""The bundle manifest (medge.json): one typed record that `medge convert` writes and the device reads.

Its shape has one home, edge/schemas/bundle.schema.json; both ends check a manifest against
it (`Manifest.from_dict`, which the writer and `load_bundle` both go through), so a bundle a
converter can write is exactly a bundle a device can read. `from_dict` then adds the two
rules JSON Schema cannot say: the positive class is one of the classes, and the
preprocessing spec is one this medge can run. Every refusal is a one-line `BundleError`
naming the field. The hashes and paths of the files are checked by `medge.edge.bundle`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import cache

from .errors import BundleError
from .preprocess import PreprocessSpec
from .schemas import load_schema

MANIFEST_NAME = "medge.json"
BUNDLE_SCHEMA = "medge.bundle/1"


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the runtime sees it; int8 tensors carry scale/zero point."""

    shape: tuple
    dtype: str
    name: str = ""
    scale: float | None = None
    zero_point: int | None = None
    # Outputs only: "sigmoid"/"softmax" when the model file ends at the logits and the runtime
    # applies the activation in float after dequantizing. An int8 *probability* output has a
    # fixed 1/256 grid that ties every confident case; int8 logits keep their order.
    activation: str | None = None
    # Outputs only: the calibration temperature the runtime divides the logits by before the
    # activation (fitted on validation by `medge train`); 1.0 = uncalibrated (older bundles).
    temperature: float = 1.0

    @property
    def quantized(self) -> bool:
        return self.dtype in ("int8", "uint8") and bool(self.scale)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "scale": self.scale, "zero_point": self.zero_point, "activation": self.activation,
                "temperature": self.temperature}

    @classmethod
    def from_dict(cls, data: dict) -> TensorInfo:
        return cls(shape=tuple(data["shape"]), dtype=data["dtype"], name=data.get("name", ""),
                   scale=data.get("scale"), zero_point=data.get("zero_point"), activation=data.get("activation"),
                   temperature=float(data.get("temperature", 1.0) or 1.0))


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    arch: str | None = None
    params: int | None = None
    source_run: str | None = None  # the training run's folder name
    source_sha256: str | None = None  # sha256 of the run's model.keras


@dataclass(frozen=True)
class ModelFile:
    """One model file as the manifest lists it (path relative to the bundle folder)."""

    file: str
    format: str  # a row of medge.convert.formats.FORMATS
    runtime: str  # the runtime the gate measured it on
    sha256: str
    size_bytes: int
    input: TensorInfo
    output: TensorInfo
    gate: dict = field(default_factory=dict)  # the gate's figures for this file

    def to_dict(self) -> dict:
        return {"file": self.file, "format": self.format, "runtime": self.runtime, "sha256": self.sha256,
                "size_bytes": self.size_bytes, "input": self.input.to_dict(), "output": self.output.to_dict(),
                "gate": self.gate}

    @classmethod
    def from_dict(cls, data: dict) -> ModelFile:
        return cls(file=data["file"], format=data["format"], runtime=data["runtime"], sha256=data["sha256"],
                   size_bytes=data["size_bytes"], input=TensorInfo.from_dict(data["input"]),
                   output=TensorInfo.from_dict(data["output"]), gate=data.get("gate") or {})


@dataclass(frozen=True)
class GateRecord:
    """What the accuracy gate checked before the bundle was written (always passed)."""

    limits: dict
    data: str
    n_images: int
    reference: dict = field(default_factory=dict)
    passed: bool = True


@dataclass(frozen=True)
class Applicability:
    """The model's declared scope; empty means no restriction."""

    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"modalities": list(self.modalities), "body_parts": list(self.body_parts)}


@dataclass(frozen=True)
class Manifest:
    """Everything a device needs to run the bundle's models, and nothing it must guess."""

    model: ModelInfo
    task: str  # "binary" or "multiclass"
    classes: tuple[str, ...]  # model output order
    preprocessing: PreprocessSpec
    positive_class: str | None = None  # binary: the class whose probability is the score
    threshold: float | None = None  # binary: operating threshold on that probability
    threshold_policy: str | None = None
    applicability: Applicability | None = None
    created: str = ""
    medge_version: str = ""
    disclaimer: str = ""
    artifacts: tuple[ModelFile, ...] = ()  # the first is the default a device loads
    gate: GateRecord | None = None
    files: dict = field(default_factory=dict)  # file name -> sha256, every other file of the bundle
    file_sizes: dict = field(default_factory=dict)
    # How the scores were calibrated (method, temperature, validation ECE/Brier before and after);
    # the runtime applies the temperature from each artifact's output.temperature.
    calibration: dict | None = None
    # The refer band (edge/decision.py) and the drift reference (edge/drift.py), both chosen on
    # validation by the training run (train/refer.py); None in bundles made before them.
    decision: dict | None = None
    reference: dict | None = None
    # The on-device self-test (edge/fleet/selftest.py): {file, tolerance, inputs}; None in older bundles.
    self_test: dict | None = None
    # The out-of-distribution guard (edge/ood.py): {method, file, threshold, acceptance, ...};
    # the arrays are in its `file` (ood.npz). None in older bundles: the guard is off, with a warning.
    ood: dict | None = None
    schema: str = BUNDLE_SCHEMA

    def to_dict(self) -> dict:
        return {
            "schema": self.schema,
            "model": asdict(self.model),
            "created": self.created,
            "medge_version": self.medge_version,
            "task": self.task,
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            "threshold": self.threshold,
            "threshold_policy": self.threshold_policy,
            "preprocessing": self.preprocessing.to_dict(),
            "applicability": self.applicability.to_dict() if self.applicability is not None else None,
            "disclaimer": self.disclaimer,
            "artifacts": [artifact.to_dict() for artifact in self.artifacts],
            "gate": asdict(self.gate) if self.gate is not None else None,
            "files": dict(self.files),
            "file_sizes": dict(self.file_sizes),
            **({"calibration": dict(self.calibration)} if self.calibration is not None else {}),
            **({"decision": dict(self.decision)} if self.decision is not None else {}),
            **({"reference": dict(self.reference)} if self.reference is not None else {}),
            **({"self_test": dict(self.self_test)} if self.self_test is not None else {}),
            **({"ood": dict(self.ood)} if self.ood is not None else {}),
        }

    def to_json(self) -> bytes:
        """The exact bytes of medge.json (strict JSON: a NaN here is a bug upstream, not a file to ship)."""
        data = self.to_dict()
        validate_manifest(data)
        return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()

    @classmethod
    def from_dict(cls, data, where: str = MANIFEST_NAME) -> Manifest:
        """Validate against the schema, then build; raises BundleError naming the first problem."""
        validate_manifest(data, where)
        if data["task"] == "binary" and data["positive_class"] not in data["classes"]:
            raise BundleError(f"{where}: positive_class {data['positive_class']!r} is not one of the classes "
                              f"{data['classes']!r}")
        try:
            spec = PreprocessSpec.from_dict(data["preprocessing"])
        except Exception as error:
            raise BundleError(f"{where}: invalid preprocessing spec ({error})") from None
        scope = data.get("applicability")
        gate = {item.name: data["gate"][item.name] for item in fields(GateRecord) if item.name in data["gate"]}
        return cls(
            schema=data["schema"],
            model=ModelInfo(**{item.name: data["model"].get(item.name) for item in fields(ModelInfo)}),
            created=data["created"],
            medge_version=data["medge_version"],
            task=data["task"],
            classes=tuple(data["classes"]),
            positive_class=data["positive_class"],
            threshold=data["threshold"],
            threshold_policy=data.get("threshold_policy"),
            preprocessing=spec,
            applicability=None if scope is None else Applicability(
                modalities=tuple(scope.get("modalities") or ()), body_parts=tuple(scope.get("body_parts") or ())),
            disclaimer=data["disclaimer"],
            artifacts=tuple(ModelFile.from_dict(entry) for entry in data["artifacts"]),
            gate=GateRecord(**gate),
            files=dict(data["files"]),
            file_sizes=dict(data.get("file_sizes") or {}),
            calibration=data.get("calibration"),
            decision=data.get("decision"),
            reference=data.get("reference"),
            self_test=data.get("self_test"),
            ood=data.get("ood"),
        )


@cache
def _validator():
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema("bundle"))


def validate_manifest(data, where: str = MANIFEST_NAME) -> None:
    """Check a parsed medge.json against bundle.schema.json; BundleError names the field at fault."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: the manifest must be a JSON object")
    if data.get("schema") != BUNDLE_SCHEMA:
        raise BundleError(f"{where}: unsupported bundle schema {data.get('schema')!r} (this medge reads {BUNDLE_SCHEMA})")
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(data))
    if error is None:
        return
    location = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    raise BundleError(f"{where}: {location.lstrip('.') + ': ' if location else ''}{message}")
