"""The one typed configuration of a training run (filled by the CLI, by tests, by the demo)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from medge.edge.errors import ConfigError
from medge.edge.preprocess import INTERPOLATIONS as RESIZE_INTERPOLATIONS

from .architectures import ARCHITECTURES, architecture

AUGMENTATIONS = ("rotate", "zoom", "flip", "translate", "brightness", "contrast")
# The tuned defaults (see BENCHMARKS.md): what `medge train` does with no options.
DEFAULT_AUGMENT = ("rotate", "zoom", "translate", "brightness", "contrast")
INTERPOLATIONS = tuple(RESIZE_INTERPOLATIONS)


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
        # Every option is checked here, before any data is read or a run folder is made: the CLI,
        # the demo and the tests all build a TrainConfig, so this is the one place for the bounds.
        arch = architecture(self.arch)
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"augment: unknown augmentation {unknown[0]!r} (choose from {', '.join(AUGMENTATIONS)} or none)")
        _choice("class_weight", self.class_weight, ("auto", "none"))
        _choice("pooling", self.pooling, ("global", "flatten"))
        _choice("interpolation", self.interpolation, INTERPOLATIONS)
        for key in ("ensemble", "epochs", "batch_size"):
            _at_least(key, getattr(self, key), 1)
        for key in ("patience", "dense_units", "bootstrap"):
            _at_least(key, getattr(self, key), 0)
        if self.limit is not None:
            # 0 used to mean "no limit": leave the option out for that.
            _at_least("limit", self.limit, 1)
        if not (isinstance(self.learning_rate, int | float) and 0 < self.learning_rate <= 1):
            raise ConfigError(f"learning_rate: must be in (0, 1], not {self.learning_rate}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: must be in [0, 1), not {self.dropout}")
        for key in ("val_split", "test_split"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be in [0, 1), not {getattr(self, key)}")
        if self.val_split + self.test_split >= 1:
            raise ConfigError(f"val_split + test_split: must leave images to train on, not {self.val_split} + {self.test_split}")
        if self.input_size < arch.min_input_size:
            raise ConfigError(f"input_size: {self.arch} needs at least {arch.min_input_size} pixels, not {self.input_size}")
        if not self.filters or any(not isinstance(f, int) or f < 1 for f in self.filters):
            raise ConfigError(f"filters: must be one or more positive integers, not {','.join(map(str, self.filters or ())) or 'none'}")
        if not arch.pretrained and str(self.weights).lower() != "none":
            pretrained = [a.name for a in ARCHITECTURES.values() if a.pretrained]
            raise ConfigError(f"weights: {self.weights!r} applies to backbones only; {self.arch} trains from scratch "
                              f"(use --arch {pretrained[0]})")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels: must be 1 or 3, not {self.channels}")
        from .thresholds import parse_policy

        parse_policy(self.threshold_policy)  # fail before training, not after

    @property
    def input_channels(self) -> int:
        return self.channels if self.channels is not None else architecture(self.arch).channels

    @property
    def normalization(self) -> str:
        return architecture(self.arch).normalization

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("data", "out", "labels_csv"):
            if data[key] is not None:
                data[key] = str(data[key])
        for key in ("classes", "filters", "augment"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data


def _at_least(key: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}, not {value}")


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, not {value!r}")
