"""Drift on the device: are the recent inputs still like the validation images?

A `Worker.observers` entry (edge/daemon.py registers it) counts, over the last `drift.window`
model inputs, the calibrated score histogram (binary: P(positive class); multi-class: the top
probability), the share refused as out of distribution and the share referred. Every heartbeat
carries them with the population stability index against the bundle's `reference` section:
the same figures for the validation split, counted at conversion through this same device path
on the bundle (convert/drift_reference.py), so int8 rounding and real OOD refusals are in it. Its bins
are the deciles of the validation scores (`edges`), so each holds ~10% of the reference
however the model's scores crowd; a bundle reference without edges uses equal bins on [0, 1].

    PSI = sum_i (a_i - e_i) ln(a_i / e_i)

over the score bins plus one "out of distribution" category, so both a shifted score
distribution and a rise in refused images move it. `alert` is PSI > drift.psi_alert (default
0.25, the usual "significant shift" level) once the window holds at least drift.min_window
inputs: a handful of images cannot alarm (PSI of a small in-distribution sample is large from
sampling alone, roughly (bins - 1) / n; BENCHMARKS.md has the measured null distribution). Inputs outside the declared scope (another modality) are
not model inputs and are not counted. Only counts leave the device, never pixels.
"""
from __future__ import annotations

import logging
import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("medge.edge.drift")

HISTOGRAM_BINS = 10
OOD_REASON = "out_of_distribution"
PRIOR_INPUTS = 1.0  # the window's shares are shrunk towards the reference by this many inputs
DEFAULT_REFERENCE_N = 500


@dataclass
class DriftSettings:
    """[drift] in the edge config."""

    enabled: bool = True
    window: int = 300  # the most recent model inputs compared with the reference
    min_window: int = 200  # fewer inputs than this never raise the alert
    psi_alert: float = 0.25


def validate_drift(settings: DriftSettings) -> None:
    from .errors import ConfigError

    if settings.window < 1:
        raise ConfigError(f"drift.window: must be >= 1, not {settings.window}")
    if not 1 <= settings.min_window <= settings.window:
        raise ConfigError(f"drift.min_window: must be between 1 and drift.window ({settings.window}), "
                          f"not {settings.min_window}")
    if not settings.psi_alert > 0:
        raise ConfigError(f"drift.psi_alert: must be > 0, not {settings.psi_alert}")


def reference_edges(scores, bins: int = HISTOGRAM_BINS) -> list[float]:
    """Interior bin edges at the quantiles of reference scores (duplicates, from tied scores, merged)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return [i / bins for i in range(1, bins)]
    return [float(edge) for edge in np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1)[1:-1]))]


def bin_index(scores, edges: list[float] | None, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Each score's bin: by `edges` (a score equal to an edge goes above it), else equal bins on [0, 1]."""
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    if edges:
        return np.searchsorted(np.asarray(edges, dtype=np.float64), scores, side="right")
    return np.minimum((scores * bins).astype(int), bins - 1)


def histogram(scores, edges: list[float] | None = None, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Counts per bin (len(edges) + 1 bins with edges, else `bins` equal bins on [0, 1])."""
    size = len(edges) + 1 if edges else bins
    return np.bincount(bin_index(scores, edges, bins), minlength=size)


def psi(actual_counts, expected_fractions, reference_n: int = DEFAULT_REFERENCE_N) -> float:
    """Population stability index of observed counts against expected fractions (same categories).

    Smoothing, so that an empty bin is not an infinite shift: the reference's shares are floored
    at half an image of its own sample (0.5 / reference_n), and the window's are shrunk towards
    them by PRIOR_INPUTS inputs (no bias where both are empty, unlike a flat pseudocount)."""
    counts = np.asarray(actual_counts, dtype=np.float64)
    expected = np.maximum(np.asarray(expected_fractions, dtype=np.float64), 0.5 / max(1, reference_n))
    expected /= expected.sum()
    actual = (counts + PRIOR_INPUTS * expected) / (counts.sum() + PRIOR_INPUTS)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_score(probabilities: dict, task: str, positive_class: str | None) -> float:
    """The score the histogram counts: binary P(positive class), multi-class the top probability."""
    if task == "binary":
        return float(probabilities.get(positive_class, 0.0))
    return float(max(probabilities.values()))


def bundle_reference(bundle) -> dict | None:
    """The bundle's drift reference, with its OOD rate: the reference's own, else what the OOD
    guard's acceptance implies (1 - acceptance), else 0. None: a bundle made before drift."""
    manifest = bundle.manifest
    reference = getattr(manifest, "reference", None)
    if not reference or not reference.get("histogram"):
        return None
    reference = dict(reference)
    edges = reference.get("edges") or None
    size = len(edges) + 1 if edges else len(reference["histogram"])
    if len(reference["histogram"]) != size:
        log.warning("bundle %s: drift reference has %d bins for %d edges; drift is not compared",
                    getattr(bundle, "name", "?"), len(reference["histogram"]), len(edges or ()))
        return None
    if reference.get("ood_rate") is None:
        ood = getattr(manifest, "ood", None)
        acceptance = ood.get("acceptance") if isinstance(ood, dict) else getattr(ood, "acceptance", None)
        reference["ood_rate"] = 1.0 - float(acceptance) if isinstance(acceptance, int | float) else 0.0
    return reference


class DriftMonitor:
    """The observer and the heartbeat's `drift` figures; thread-safe (worker thread writes,
    the heartbeat thread reads)."""

    def __init__(self, settings: DriftSettings, bundle=None):
        self.settings = settings
        self._lock = threading.Lock()
        self._window: deque = deque(maxlen=settings.window)  # bin index, or -1 for out of distribution
        self._referred: deque = deque(maxlen=settings.window)
        self._bundle = None
        self._reference = None
        if bundle is not None:
            self._use(bundle)

    def _use(self, bundle) -> None:
        """A new model (fleet switch): its reference, and a window of its own inputs only."""
        self._bundle = bundle
        self._reference = bundle_reference(bundle)
        self._window.clear()
        self._referred.clear()
        if self._reference is None:
            log.info("bundle %s has no drift reference: the heartbeat reports counts but no PSI",
                     getattr(bundle, "name", "?"))

    @property
    def _edges(self) -> list[float] | None:
        return (self._reference or {}).get("edges") or None

    @property
    def _bins(self) -> int:
        return len(self._reference["histogram"]) if self._reference else HISTOGRAM_BINS

    def observe(self, item, analysis, active, messages) -> None:
        """Worker.observers entry: count the input's model outcome(s)."""
        with self._lock:
            if active.bundle is not self._bundle:
                self._use(active.bundle)
            reason = analysis.not_applicable
            if reason is not None:
                if str(reason).startswith(OOD_REASON):
                    self._window.append(-1)
                    self._referred.append(False)
                return  # outside the declared scope: not a model input
            bundle = active.bundle
            for frame in analysis.frames:
                classification = frame.classification
                score = drift_score(classification.probabilities, bundle.task, bundle.positive_class)
                self._window.append(int(bin_index([score], self._edges, self._bins)[0]))
                self._referred.append(getattr(classification, "decision", None) == "refer")

    def snapshot(self) -> dict:
        """The heartbeat's `drift` object (edge/schemas/heartbeat.schema.json)."""
        with self._lock:
            entries = list(self._window)
            referred = sum(self._referred)
            reference, bins, edges = self._reference, self._bins, self._edges
        n = len(entries)
        ood = sum(1 for entry in entries if entry < 0)
        counts = np.bincount([entry for entry in entries if entry >= 0], minlength=bins)
        value = None
        if reference is not None and n:
            ood_rate = float(reference["ood_rate"])
            expected = [fraction * (1.0 - ood_rate) for fraction in reference["histogram"]] + [ood_rate]
            value = psi(list(counts) + [ood], expected, int(reference.get("n") or DEFAULT_REFERENCE_N))
        result = {
            "window_n": n,
            "psi": None if value is None or not math.isfinite(value) else round(value, 4),
            "ood_rate": round(ood / n, 4) if n else None,
            "refer_rate": round(referred / n, 4) if n else None,
            "histogram": [int(c) for c in counts],
            "alert": bool(value is not None and n >= self.settings.min_window and value > self.settings.psi_alert),
            "psi_alert": self.settings.psi_alert,
            "min_window": self.settings.min_window,
        }
        if edges:
            result["edges"] = [round(float(edge), 6) for edge in edges]
        if reference is not None:
            result["reference"] = {"refer_rate": reference.get("refer_rate"), "ood_rate": reference["ood_rate"]}
        return result
