"""Paired statistics for the accuracy gate: is a change between two models on the SAME images real?

The float model and a converted file classify the same few hundred images, so every
comparison is paired. On 390 positive images one flipped decision moves sensitivity by 0.0026:
a fixed tolerance alone judges which images happened to sit next to the threshold. These
tests say whether the flips show a systematic change or could be chance:

- exact McNemar test on the discordant pairs (decisions only one model got right / called
  positive): under "no systematic change" each flip goes either way with probability 1/2;
- exact one-sided binomial test of the disagreement count against a tolerated rate;
- paired, class-stratified bootstrap of the difference (both models scored on the same
  resampled images) for a 95% interval of the AUC, sensitivity, specificity and agreement
  change.

Pure numpy and the standard library (no SciPy on devices or in the training extra).
"""
from __future__ import annotations

import math

import numpy as np


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (stable for n in the thousands)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value for `lost` vs `gained` discordant pairs (1.0 when none)."""
    discordant = lost + gained
    if discordant == 0:
        return 1.0
    return min(1.0, 2.0 * binomial_upper_tail(max(lost, gained), discordant, 0.5))


def stratified_resamples(y: np.ndarray, count: int, seed: int = 0):
    """`count` bootstrap index arrays, each drawing every class's images with replacement in
    its own number, so each resample has every class (AUC and per-class rates stay defined)."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(y == label) for label in np.unique(y)]
    for _ in range(count):
        yield np.concatenate([rng.choice(group, size=len(group), replace=True) for group in members])


def interval(samples: list[float], level: float = 0.95) -> list[float] | None:
    """Percentile interval of bootstrap samples (None when there are none)."""
    values = np.asarray([s for s in samples if s is not None and np.isfinite(s)], dtype=np.float64)
    if len(values) == 0:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))]


def bootstrap_p_value(samples: list[float]) -> float | None:
    """Two-sided bootstrap p-value of "the difference is zero": twice the smaller share of
    resamples on either side of zero."""
    values = np.asarray([s for s in samples if s is not None and np.isfinite(s)], dtype=np.float64)
    if len(values) == 0:
        return None
    if np.all(values == 0):
        return 1.0
    return float(min(1.0, 2.0 * min((values <= 0).mean(), (values >= 0).mean())))
