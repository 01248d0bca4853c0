"""A finished training run on disk (`RUN/model.keras`, `RUN/metrics.json`, ...), read back."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medge.edge.errors import InputError
from medge.edge.preprocess import PreprocessSpec

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
REPORT_FILE = "report.md"
REQUIRED_KEYS = ("classes", "task", "threshold", "preprocessing", "data")


@dataclass
class Run:
    path: Path
    metrics: dict

    @property
    def classes(self) -> list[str]:
        return list(self.metrics["classes"])

    @property
    def task(self) -> str:
        return self.metrics["task"]

    @property
    def threshold(self) -> float:
        return float(self.metrics["threshold"])

    @property
    def temperature(self) -> float:
        """The calibration temperature fitted on validation (1.0 for runs made before calibration)."""
        return float((self.metrics.get("calibration") or {}).get("temperature") or 1.0)

    @property
    def ordinal(self) -> bool:
        return bool(self.metrics.get("ordinal"))

    @property
    def positive_class(self) -> str | None:
        return self.metrics.get("positive_class")

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.metrics["preprocessing"])

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    def load_model(self):
        import keras

        try:
            return keras.models.load_model(self.model_file, compile=False)
        except Exception as error:
            raise InputError(f"{self.model_file}: cannot load Keras model ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})") from None

    def load_dataset(self):
        """The run's own train/val/test splits, rebuilt exactly (same files, classes, seed, spec)."""
        from .data import load_dataset

        data = self.metrics["data"]
        return load_dataset(data["path"], classes=self.classes, spec=self.spec,
                            val_split=data.get("val_split", 0.1), test_split=data.get("test_split", 0.1),
                            seed=data.get("seed", 0), labels_csv=data.get("labels_csv"))


def load_run(path) -> Run:
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise InputError(f"{path}: training run folder not found")
    metrics_file = path / METRICS_FILE
    if not metrics_file.is_file():
        raise InputError(f"{path}: not a training run ({METRICS_FILE} missing)")
    if not (path / MODEL_FILE).is_file():
        raise InputError(f"{path}: not a training run ({MODEL_FILE} missing)")
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{metrics_file}: not valid JSON ({error})") from None
    if not isinstance(metrics, dict):
        raise InputError(f"{metrics_file}: expected a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in metrics]
    if missing:
        raise InputError(f"{metrics_file}: missing key {missing[0]!r}")
    run = Run(path, metrics)
    run.spec  # noqa: B018 - validates the preprocessing spec now, as a one-line error
    return run
