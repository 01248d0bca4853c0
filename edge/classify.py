"""Display pixels -> a decision: the one function `medge predict` and the daemon both call.

Keeping the preprocessing, the runtime call and the threshold rule in one place is what
makes `medge predict IMAGE` and the daemon's published result identical for the same image.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .bundle import Artifact, Bundle
from .errors import BundleError
from .preprocess import preprocess
from .runtime import Predictor, create_predictor


@dataclass
class Classification:
    label: str
    score: float  # binary: P(positive class); multi-class: probability of `label`
    threshold: float | None  # binary only
    positive: bool
    probabilities: dict[str, float]
    timing_ms: dict[str, float]  # "preprocess", "inference"

    def to_dict(self) -> dict:
        return asdict(self)


def decide(probabilities: np.ndarray, classes: list[str], task: str, threshold: float | None,
           positive_class: str | None) -> tuple[str, float, bool]:
    """One image's probabilities (K,) -> (label, score, positive), by the bundle's rule.

    Binary: score = P(positive class), positive when score >= threshold. Multi-class: the
    most probable class; positive when it is not the first (reference) class.
    """
    if task == "binary":
        positive_index = classes.index(positive_class)
        negative_index = 1 - positive_index
        score = float(probabilities[positive_index])
        positive = score >= threshold
        return classes[positive_index if positive else negative_index], score, positive
    index = int(np.argmax(probabilities))
    return classes[index], float(probabilities[index]), index != 0


class Classifier:
    """A loaded bundle's model, ready to classify display pixels one image at a time."""

    def __init__(self, bundle: Bundle, runtime: str | None = None, threads: int | None = None,
                 format: str | None = None):
        self.bundle = bundle
        self.artifact: Artifact = bundle.artifact(format)
        self.spec = bundle.spec
        self.predictor: Predictor = create_predictor(self.artifact, runtime=runtime, threads=threads)
        # A model whose output does not match the class list would mislabel (or crash) on every image.
        width, n_classes = int(self.predictor.output.shape[-1]), len(bundle.classes)
        if width > 0 and width != n_classes and not (width == 1 and n_classes == 2):
            raise BundleError(f"{bundle.path}: the model outputs {width} values but the bundle lists "
                              f"{n_classes} classes ({', '.join(bundle.classes)})")

    @property
    def runtime_name(self) -> str:
        return self.predictor.runtime_name

    def classify(self, pixels: np.ndarray) -> Classification:
        started = time.perf_counter()
        model_input = preprocess(pixels, self.spec)
        prepared = time.perf_counter()
        probabilities = self.predictor.predict(model_input[np.newaxis])[0]
        finished = time.perf_counter()
        bundle = self.bundle
        label, score, positive = decide(probabilities, bundle.classes, bundle.task, bundle.threshold,
                                        bundle.positive_class)
        return Classification(
            label=label,
            score=score,
            threshold=bundle.threshold if bundle.task == "binary" else None,
            positive=bool(positive),
            probabilities={name: float(p) for name, p in zip(bundle.classes, probabilities)},
            timing_ms={"preprocess": round((prepared - started) * 1000, 3),
                       "inference": round((finished - prepared) * 1000, 3)},
        )
