"""Shadow mode: a candidate model answers beside the active one on the next N real inputs.

A `ShadowRun` is one of the worker's observers (edge/worker.py): on the worker thread, after
an input's results are built with the active model, it runs the candidate on the same model
input (preprocessed again only when the candidate's preprocessing differs), publishes a
`shadow` message (QoS 0, never a clinical result: nothing of it enters the outbox or a
result) and counts agreement of the decisions. At N inputs it hands the verdict to the
controller, which promotes or rolls back.
"""
from __future__ import annotations

import json
import logging
import threading

import numpy as np

from ..classify import decide
from ..preprocess import preprocess
from .commands import shadow_payload

log = logging.getLogger("medge.edge.fleet")


class ShadowRun:
    def __init__(self, *, candidate, target: int, rollout: str | None, site: str, device: str, publish,
                 on_done):
        """`candidate`: an ActiveModel; `publish(payload: dict)` sends one shadow message;
        `on_done(run)` is called once, on the worker thread, when `target` inputs were seen."""
        self.candidate = candidate
        self.target = int(target)
        self.rollout = rollout
        self.site, self.device = site, device
        self.publish = publish
        self.on_done = on_done
        self.seen = 0
        self.agreed = 0
        self.done = False
        self._lock = threading.Lock()

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.seen if self.seen else None

    def progress(self) -> dict:
        agreement = self.agreement
        return {"seen": self.seen, "target": self.target,
                "agreement": None if agreement is None else round(agreement, 6)}

    def _candidate_answer(self, analysis, frame, active) -> tuple[str, float]:
        classifier = self.candidate.classifier
        model_input = frame.classification.model_input
        if model_input is None or classifier.spec != active.classifier.spec:
            model_input = preprocess(analysis.decoded.frames[frame.index], classifier.spec)
        probabilities = classifier.predictor.predict(np.asarray(model_input)[np.newaxis])[0]
        bundle = classifier.bundle
        label, score, _ = decide(probabilities, bundle.classes, bundle.task, bundle.threshold, bundle.positive_class)
        return label, score

    def __call__(self, item, analysis, active, messages) -> None:
        if self.done or analysis.not_applicable is not None or not analysis.frames:
            return
        frame = analysis.frames[0]
        label, score = self._candidate_answer(analysis, frame, active)
        agree = label == frame.classification.label
        try:
            input_ref = json.loads(messages[0][3])["input_ref"]
        except (IndexError, KeyError, ValueError, TypeError):
            input_ref = "unknown"
        with self._lock:
            if self.done:
                return
            self.seen += 1
            self.agreed += int(agree)
            finished = self.seen >= self.target
            self.done = finished
        try:
            self.publish(shadow_payload(site=self.site, device=self.device, input_ref=input_ref, rollout=self.rollout,
                                        active={"label": frame.classification.label,
                                                "score": frame.classification.score},
                                        candidate={"label": label, "score": score}, agree=agree))
        except Exception:  # a lost QoS 0 comparison costs nothing but itself
            log.exception("could not publish a shadow comparison")
        if finished:
            self.on_done(self)
