"""Model builders: the classic CNN, Keras transfer-learning backbones, and averaging ensembles.

Only standard Keras layers are used (no custom classes), so every model saves to .keras, loads
with `keras.models.load_model` and exports with `model.export(format="tf_saved_model")` for
conversion. Augmentation is deliberately not part of any model (see augment.py).
"""
from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from medge.edge.errors import ConfigError, InputError

from .architectures import Architecture, architecture, builder
from .config import TrainConfig
from .recipe import bn_momentum


def output_layer(n_classes: int, name: str = "probabilities"):
    # Binary: one sigmoid unit = P(classes[1]); the device expands it to [1-p, p].
    if n_classes == 2:
        return layers.Dense(1, activation="sigmoid", name=name)
    return layers.Dense(n_classes, activation="softmax", name=name)


def build_cnn(input_shape, n_classes: int, config: TrainConfig, arch: Architecture | None = None,
              name: str = "cnn") -> keras.Model:
    """Conv2D + ReLU (+ BatchNorm) blocks with max pooling, then global pooling or flatten, dense head."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for block, filters in enumerate(config.filters):
        for conv in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=not config.batch_norm,
                              name=f"block{block}_conv{conv}")(x)
            if config.batch_norm:
                x = layers.BatchNormalization(momentum=bn_momentum(config), name=f"block{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        if min(x.shape[1], x.shape[2]) >= 2 * 2:
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    if config.pooling == "global":
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
    if config.dropout:
        x = layers.Dropout(config.dropout, name="dropout")(x)
    if config.dense_units:
        x = layers.Dense(config.dense_units, activation="relu", name="dense")(x)
        if config.dropout:
            x = layers.Dropout(config.dropout / 2, name="dense_dropout")(x)
    outputs = output_layer(n_classes)(x)
    return keras.Model(inputs, outputs, name=name)


def build_backbone(input_shape, n_classes: int, config: TrainConfig, arch: Architecture | None = None,
                   name: str | None = None) -> keras.Model:
    """A keras.applications backbone (ImageNet weights, none, or a local weights file) + new head.

    The table row names the application class; its other options go to that class (e.g. alpha).
    """
    arch = arch or architecture(config.arch)
    options = dict(arch.options)
    application = getattr(keras.applications, options.pop("application"))
    weights = _backbone_weights(config.weights, input_shape)
    try:
        base = application(input_shape=input_shape, include_top=False, weights=weights, pooling="avg", **options)
    except Exception as error:
        first_line = (str(error).splitlines() or [""])[0]
        if weights == "imagenet":
            raise InputError(f"--weights imagenet: download of {config.arch} ImageNet weights failed "
                             f"({type(error).__name__}: {first_line}); use --weights none or a local file") from None
        if isinstance(error, ValueError):
            raise InputError(f"--weights {config.weights}: cannot load into {config.arch} ({first_line})") from None
        raise
    inputs = keras.Input(shape=input_shape, name="image")
    x = base(inputs)
    if config.dropout:
        x = layers.Dropout(config.dropout, name="dropout")(x)
    outputs = output_layer(n_classes)(x)
    return keras.Model(inputs, outputs, name=name or config.arch)


def _backbone_weights(weights: str, input_shape) -> str | None:
    text = str(weights)
    if text.lower() == "none":
        return None
    if text.lower() == "imagenet":
        if input_shape[2] != 3:
            raise ConfigError("weights: imagenet weights need 3 input channels (use --channels 3)")
        return "imagenet"
    path = Path(text).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: weights file not found (use imagenet, none or a path to a .weights.h5 file)")
    if not path.name.endswith(".weights.h5"):
        raise InputError(f"{path}: weights file must end in .weights.h5 (saved with model.save_weights)")
    return str(path)


def build_model(input_shape, n_classes: int, config: TrainConfig, name: str | None = None) -> keras.Model:
    """The configured architecture, made by the builder its table row names."""
    arch = architecture(config.arch)
    return builder(arch)(input_shape, n_classes, config, arch=arch, name=name or arch.name)


def build_ensemble(members: list[keras.Model], name: str = "ensemble") -> keras.Model:
    """One model whose output is the mean of its members' probabilities (standard layers only)."""
    if len(members) == 1:
        return members[0]
    inputs = keras.Input(shape=tuple(members[0].inputs[0].shape[1:]), name="image")
    outputs = layers.Average(name="average")([member(inputs) for member in members])
    return keras.Model(inputs, outputs, name=name)


def compile_model(model: keras.Model, n_classes: int, learning_rate, label_smoothing: float = 0.0) -> None:
    """Adam (learning_rate: a float or a keras LearningRateSchedule), cross-entropy with label smoothing."""
    if n_classes == 2:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                  metrics=[keras.metrics.AUC(name="auc")])


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
    """cosine: linear warm-up from 10 % to the learning rate, then cosine decay to 1 % of it
    (a built-in Keras schedule, so model.keras still loads without custom objects); plateau: the
    plain rate (ReduceLROnPlateau halves it)."""
    if config.schedule != "cosine":
        return config.learning_rate
    warmup = min(config.warmup_epochs or 0, max(0, config.epochs - 1)) * steps_per_epoch
    total = config.epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate * (0.1 if warmup else 1.0), decay_steps=max(1, total - warmup),
        alpha=0.01, warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup)
