"""The one table of model architectures: `medge train --arch` choices, config validation, the
preprocessing each expects, and which builder in models.py makes it.

Adding an architecture is one `Architecture(...)` row here plus its builder function (in
models.py, or any module the row names); keras is imported only by the builders, so this table
stays cheap to read for `--help` and config validation.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Architecture:
    name: str
    summary: str  # one phrase for --help
    # "module:function" building the keras.Model: (input_shape, n_classes, config, arch=, name=) -> Model
    builder: str
    normalization: str  # what the pretrained weights expect (medge.edge.preprocess normalizations)
    channels: int = 1  # default input channels
    min_input_size: int = 8
    pretrained: bool = False  # accepts --weights imagenet / a .weights.h5 file
    options: dict = field(default_factory=dict)  # passed to the builder (e.g. the keras.applications class)


ARCHITECTURES: dict[str, Architecture] = {arch.name: arch for arch in (
    Architecture("cnn", "the classic Conv2D/ReLU/MaxPool stack", builder="medge.train.models:build_cnn", normalization="unit"),
    # The MedMNIST v2 baseline "ResNet-18 (28)": 3x3 stride-1 stem, no initial max-pool (train/resnet.py).
    Architecture("resnet18", "ResNet-18 for small inputs (3x3 stem, no max-pool; MedMNIST baseline)",
                 builder="medge.train.resnet:build_resnet", normalization="unit",
                 options={"widths": (64, 128, 256, 512), "blocks": (2, 2, 2, 2)}),
    # Keras backbones were pretrained on [-1, 1] (MobileNetV2) or take 0..255 and rescale
    # inside (EfficientNet).
    Architecture("mobilenetv2", "Keras MobileNetV2 (alpha 0.35) backbone", builder="medge.train.models:build_backbone",
                 normalization="symmetric", channels=3, min_input_size=32, pretrained=True,
                 options={"application": "MobileNetV2", "alpha": 0.35}),
    Architecture("efficientnetb0", "Keras EfficientNetB0 backbone", builder="medge.train.models:build_backbone",
                 normalization="raw", channels=3, min_input_size=32, pretrained=True,
                 options={"application": "EfficientNetB0"}),
)}


def architecture(name: str) -> Architecture:
    from medge.edge.errors import ConfigError

    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"arch: unknown architecture {name!r} (choose from {', '.join(ARCHITECTURES)})") from None


def builder(arch: Architecture):
    """The row's builder function, imported when a model is built."""
    import importlib

    module, _, function = arch.builder.partition(":")
    return getattr(importlib.import_module(module), function)


# `--arch auto` picks one of the from-scratch rows by the rule in train/recipe.py (docs/train.md).
AUTO = "auto"


def help_text() -> str:
    return (f"{AUTO}: cnn or resnet18 by dataset size and input size (docs/train.md); "
            + "; ".join(f"{arch.name}: {arch.summary}" for arch in ARCHITECTURES.values()) + ".")
