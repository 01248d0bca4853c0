"""ResNet-18 for small inputs: the MedMNIST v2 baseline network, "ResNet-18 (28)".

Differences from the ImageNet ResNet-18 follow the MedMNIST/CIFAR practice: a 3x3 stride-1 stem and
no initial max-pool (a 7x7/2 stem + pool would shrink 28 px to 7 px before the first block).
Four stages of two basic blocks; stages 2-4 halve the resolution. Standard Keras layers only,
so the model saves to .keras and converts to int8 like the CNN. The row's `widths` option sets
the filters per stage (64,128,256,512 = the paper's network).
"""
from __future__ import annotations

import keras
from keras import layers

from .architectures import Architecture, architecture
from .config import TrainConfig


def build_resnet(input_shape, n_classes: int, config: TrainConfig, arch: Architecture | None = None,
                 name: str | None = None) -> keras.Model:
    from .models import output_layer
    from .recipe import bn_momentum

    arch = arch or architecture(config.arch)
    widths = tuple(arch.options.get("widths", (64, 128, 256, 512)))
    blocks = tuple(arch.options.get("blocks", (2, 2, 2, 2)))
    momentum = bn_momentum(config)
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=momentum, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, (filters, count) in enumerate(zip(widths, blocks)):
        for block in range(count):
            # Halve the resolution at the first block of stages 2-4, but never below 2 px.
            stride = 2 if stage > 0 and block == 0 and min(x.shape[1], x.shape[2]) >= 4 else 1
            x = _basic_block(x, filters, stride, momentum, f"stage{stage}_block{block}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if config.dropout:
        x = layers.Dropout(config.dropout, name="dropout")(x)
    outputs = output_layer(n_classes)(x)
    return keras.Model(inputs, outputs, name=name or arch.name)


def _basic_block(x, filters: int, stride: int, momentum: float, prefix: str):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv0")(x)
    y = layers.BatchNormalization(momentum=momentum, name=f"{prefix}_bn0")(y)
    y = layers.ReLU(name=f"{prefix}_relu0")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv1")(y)
    y = layers.BatchNormalization(momentum=momentum, name=f"{prefix}_bn1")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{prefix}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=momentum, name=f"{prefix}_proj_bn")(shortcut)
    y = layers.Add(name=f"{prefix}_add")([y, shortcut])
    return layers.ReLU(name=f"{prefix}_out")(y)
