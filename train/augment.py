"""Training-time augmentation as Keras preprocessing layers, applied in the tf.data input pipeline.

Keeping augmentation out of the model means the saved, exported and quantized graph contains
only inference layers: nothing random reaches the device.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers


def augmentation_layers(names, value_range: tuple[float, float], seed: int) -> keras.Sequential | None:
    """The named augmentations (rotate, zoom, flip, translate, brightness, contrast) or None."""
    chosen = []
    for offset, name in enumerate(names):
        layer_seed = seed * 101 + offset
        if name == "rotate":
            chosen.append(layers.RandomRotation(0.04, fill_mode="constant", seed=layer_seed))  # +-15 degrees
        elif name == "zoom":
            chosen.append(layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=layer_seed))
        elif name == "translate":
            chosen.append(layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=layer_seed))
        elif name == "flip":
            chosen.append(layers.RandomFlip("horizontal", seed=layer_seed))
        elif name == "brightness":
            chosen.append(layers.RandomBrightness(0.1, value_range=value_range, seed=layer_seed))
        elif name == "contrast":
            chosen.append(layers.RandomContrast(0.15, value_range=value_range, seed=layer_seed))
    return keras.Sequential(chosen, name="augmentation") if chosen else None


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0,
                 augmentation: keras.Sequential | None = None) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    if augmentation is not None:
        data = data.map(lambda images, labels: (augmentation(images, training=True), labels),
                        num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)
