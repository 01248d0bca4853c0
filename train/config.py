"""The one typed configuration of a training run (filled by the CLI, by tests, by the demo)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from medge.edge.errors import ConfigError

ARCHS = ("cnn", "mobilenetv2", "efficientnetb0")
AUGMENTATIONS = ("rotate", "zoom", "flip", "translate", "brightness", "contrast")
# The tuned defaults (see BENCHMARKS.md): what `medge train` does with no options.
DEFAULT_AUGMENT = ("rotate", "zoom", "translate", "brightness", "contrast")


@dataclass
class TrainConfig:
    data: Path | str | None = None  # None = the bundled PneumoniaMNIST
    out: Path | str | None = None  # None = runs/<timestamp>
    classes: tuple[str, ...] | None = None
    labels_csv: Path | str | None = None
    val_split: float = 0.1
    test_split: float = 0.1
    limit: int | None = None  # at most this many training samples (quick runs)
    # model
    arch: str = "cnn"
    weights: str = "none"  # backbones: imagenet | none | PATH to a .weights.h5 / .keras file
    input_size: int = 28
    channels: int | None = None  # None = 1 for cnn, 3 for backbones
    interpolation: str = "area"
    filters: tuple[int, ...] = (32, 64, 128)
    batch_norm: bool = True
    dropout: float = 0.3
    dense_units: int = 64
    pooling: str = "global"  # global | flatten
    # training
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    patience: int = 8
    augment: tuple[str, ...] = DEFAULT_AUGMENT
    class_weight: str = "auto"  # auto | none
    seed: int = 0
    ensemble: int = 1
    # evaluation
    threshold_policy: str = "youden"
    bootstrap: int = 1000
    name: str | None = None
    version: str = "1"
    verbose: bool = True

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ConfigError(f"arch: unknown architecture {self.arch!r} (choose from {', '.join(ARCHS)})")
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"augment: unknown augmentation {unknown[0]!r} (choose from {', '.join(AUGMENTATIONS)} or none)")
        if self.class_weight not in ("auto", "none"):
            raise ConfigError(f"class_weight: must be 'auto' or 'none', not {self.class_weight!r}")
        if self.pooling not in ("global", "flatten"):
            raise ConfigError(f"pooling: must be 'global' or 'flatten', not {self.pooling!r}")
        if self.ensemble < 1:
            raise ConfigError(f"ensemble: must be at least 1, not {self.ensemble}")
        if self.epochs < 1:
            raise ConfigError(f"epochs: must be at least 1, not {self.epochs}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: must be in [0, 1), not {self.dropout}")
        for key in ("val_split", "test_split"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be in [0, 1), not {getattr(self, key)}")
        if self.arch != "cnn" and self.input_size < 32:
            raise ConfigError(f"input_size: {self.arch} needs at least 32 pixels, not {self.input_size}")
        if self.arch == "cnn" and str(self.weights).lower() != "none":
            raise ConfigError(f"weights: {self.weights!r} applies to backbones only; the cnn trains from scratch (use --arch mobilenetv2)")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels: must be 1 or 3, not {self.channels}")
        from .thresholds import parse_policy

        parse_policy(self.threshold_policy)  # fail before training, not after

    @property
    def input_channels(self) -> int:
        if self.channels is not None:
            return self.channels
        return 1 if self.arch == "cnn" else 3

    @property
    def normalization(self) -> str:
        # Keras backbones were pretrained on [-1, 1] (MobileNetV2) or take 0..255 and
        # rescale inside (EfficientNet); the CNN learns from 0..1.
        return {"cnn": "unit", "mobilenetv2": "symmetric", "efficientnetb0": "raw"}[self.arch]

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("data", "out", "labels_csv"):
            if data[key] is not None:
                data[key] = str(data[key])
        for key in ("classes", "filters", "augment"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data
