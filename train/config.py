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
CLASS_WEIGHTS = ("auto", "sqrt", "balanced", "none")
SCHEDULES = ("cosine", "plateau")


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
    arch: str = "auto"  # auto = by the rule in recipe.choose_arch (docs/train.md)
    weights: str = "none"  # backbones: imagenet | none | PATH to a .weights.h5 / .keras file
    input_size: int = 28
    channels: int | None = None  # None = the data's (colour -> 3, grey -> 1); 3 for ImageNet weights
    interpolation: str = "area"
    filters: tuple[int, ...] = (32, 64, 128)
    batch_norm: bool = True
    dropout: float = 0.3
    dense_units: int = 64
    pooling: str = "global"  # global | flatten
    # training
    epochs: int | None = None  # None = from the dataset size (recipe.auto_epochs)
    batch_size: int = 64
    learning_rate: float = 2e-3
    patience: int | None = None  # None = a fifth of the epochs, on the smoothed validation AUC
    schedule: str = "cosine"  # cosine (linear warm-up, cosine decay) | plateau (halve on a plateau)
    warmup_epochs: int | None = None  # None = ~200 steps, at most 10 % of the epochs
    label_smoothing: float = 0.05
    bn_momentum: float | None = None  # None = averaging over about one epoch (0.9..0.99)
    augment: tuple[str, ...] = DEFAULT_AUGMENT
    class_weight: str = "auto"  # auto (none up to 10:1 imbalance, else sqrt) | sqrt | balanced | none
    max_minutes: float | None = 12.0  # stop training (keeping the best epoch) past this; None = no limit
    search: int = 0  # --search N: N Optuna trials on validation before the run (train/search.py)
    search_epochs: int = 10  # epochs per search trial
    seed: int = 0
    ensemble: int = 1
    ensemble_archs: tuple[str, ...] | None = None  # members' architectures in turn (mixing needs one preprocessing)
    # evaluation
    # auto: binary or multi-class from the class count; ordinal: graded classes in grade order
    # (e.g. retinopathy 0-4): adds quadratic-weighted kappa and mean absolute grade error.
    task: str = "auto"
    threshold_policy: str = "youden-bootstrap"  # the bootstrap median of validation Youden thresholds
    bootstrap: int = 1000
    # The refer band (train/refer.py): the accuracy the images it decides must reach on validation.
    # 0.99, not 0.95: a PneumoniaMNIST model is ~0.98 accurate on validation, so a 0.95 band
    # would refer nothing (BENCHMARKS.md, "Refer band and drift").
    refer_accuracy: float = 0.99
    name: str | None = None
    version: str = "1"
    verbose: bool = True

    def __post_init__(self):
        # Every option is checked here, before any data is read or a run folder is made: the CLI,
        # the demo and the tests all build a TrainConfig, so this is the one place for the bounds.
        arch = architecture("cnn" if self.arch == "auto" else self.arch)
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"augment: unknown augmentation {unknown[0]!r} (choose from {', '.join(AUGMENTATIONS)} or none)")
        _choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("task", self.task, ("auto", "ordinal"))
        _choice("pooling", self.pooling, ("global", "flatten"))
        _choice("interpolation", self.interpolation, INTERPOLATIONS)
        for key in ("ensemble", "batch_size"):
            _at_least(key, getattr(self, key), 1)
        for key in ("dense_units", "bootstrap", "search"):
            _at_least(key, getattr(self, key), 0)
        _at_least("search_epochs", self.search_epochs, 1)
        for key in ("epochs", "patience", "warmup_epochs"):
            if getattr(self, key) is not None:
                _at_least(key, getattr(self, key), 1 if key == "epochs" else 0)
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing: must be in [0, 0.5), not {self.label_smoothing}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum < 1:
            raise ConfigError(f"bn_momentum: must be in (0, 1), not {self.bn_momentum}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes: must be > 0, not {self.max_minutes}")
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
        if self.ensemble_archs:
            rows = [architecture(name) for name in self.ensemble_archs]
            if len({(row.normalization, row.channels) for row in rows + [arch]}) > 1:
                raise ConfigError(f"ensemble_archs: {', '.join(self.ensemble_archs)} expect different preprocessing "
                                  f"(normalization, channels); mix from-scratch rows (cnn, resnet18) or one backbone")
            if self.ensemble < len(self.ensemble_archs):
                self.ensemble = len(self.ensemble_archs)
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels: must be 1 or 3, not {self.channels}")
        if not 0.5 <= self.refer_accuracy <= 1:
            raise ConfigError(f"refer_accuracy: must be in [0.5, 1], not {self.refer_accuracy}")
        from .thresholds import parse_policy

        parse_policy(self.threshold_policy)  # fail before training, not after

    @property
    def architecture(self):
        # "auto" chooses among the from-scratch rows, which share the CNN's input (unit range).
        return architecture("cnn" if self.arch == "auto" else self.arch)

    @property
    def input_channels(self) -> int:
        return self.channels if self.channels is not None else self.architecture.channels

    @property
    def normalization(self) -> str:
        return self.architecture.normalization

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("data", "out", "labels_csv"):
            if data[key] is not None:
                data[key] = str(data[key])
        for key in ("classes", "filters", "augment", "ensemble_archs"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data


def _at_least(key: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}, not {value}")


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, not {value!r}")
