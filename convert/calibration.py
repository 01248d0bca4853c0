"""The representative dataset: a stratified sample of training images, already preprocessed.

Int8 scales are set from these samples, so they must look like what the device will see:
they come from the run's own training split (or --calibration-data) through the shared
preprocessing, with every class represented in proportion to its frequency.
"""
from __future__ import annotations

import numpy as np

from medge.edge.errors import InputError


def stratified_indices(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` indices drawn without replacement, each class in proportion (at least one each)."""
    labels = np.asarray(labels)
    if count < 1:
        raise InputError(f"--calibration-samples must be at least 1, not {count}")
    if count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, frequencies = np.unique(labels, return_counts=True)
    shares = np.maximum(1, np.floor(frequencies / len(labels) * count).astype(int))
    # Hand the rounding remainder to the largest classes so the total is exactly `count`.
    for index in np.argsort(-frequencies):
        if shares.sum() >= count:
            break
        shares[index] += 1
    chosen = []
    for label, share, available in zip(classes, shares, frequencies):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=min(share, available), replace=False))
    return np.sort(np.concatenate(chosen))


def calibration_samples(x: np.ndarray, y: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """float32 (n, H, W, C) model inputs for calibration."""
    if len(x) == 0:
        raise InputError("no training images to calibrate on")
    return np.ascontiguousarray(x[stratified_indices(y, count, seed)], dtype=np.float32)
