"""The interface every input source implements (folder watch, DICOM receiver, camera).

A source finds inputs and hands them to the daemon as `InputItem`s through `submit`. The
daemon decodes, classifies, stores the result durably in the outbox, and only then calls
`item.done(outcome)`: the folder source moves the file to processed/ or rejected/ there,
the DICOM receiver answers the scanner there. So an input is released by its source only
once its result can no longer be lost.
"""
from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..preprocess import DecodedImage


@dataclass
class Outcome:
    ok: bool
    error: str | None = None  # one line, for the error event and the rejected/ sidecar
    result_ids: list[str] = field(default_factory=list)  # message ids of the stored results


@dataclass
class InputItem:
    source: str  # "watch" | "dicom" | "camera"
    # Raw reference (file name, SOP Instance UID, frame id). Only its keyed hash is ever published.
    ref: str
    # Decodes the input when the worker gets to it, so a slow decode never blocks a source.
    load: Callable[[], DecodedImage]
    # Releases the input; returning False says it could not (the outcome's ledger entry is kept).
    done: Callable[[Outcome], bool | None] = lambda outcome: None
    label: str = ""  # for logs only (a file name); never published


Submit = Callable[[InputItem], None]
EventSink = Callable[[str, str, str], None]  # (level "error"|"warning", kind, one-line message)

log = logging.getLogger(__name__)


class Source(abc.ABC):
    """One input source. `start` must return quickly (run loops in threads); `stop` must not hang."""

    name: str = "source"
    on_event: EventSink | None = None

    @abc.abstractmethod
    def start(self, submit: Submit) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def health(self) -> dict:
        """Counters and state for the heartbeat (e.g. {"connected": True, "frames_skipped": 3})."""
        return {}

    def emit(self, level: str, kind: str, message: str) -> None:
        """A source event (stream lost, caller refused) to the daemon, which logs and publishes
        it, or to the log when the source runs alone."""
        if self.on_event is None:
            log.log(logging.ERROR if level == "error" else logging.WARNING, message)
            return
        try:
            self.on_event(level, kind, message)
        except Exception:  # a failing event sink must never stop a source
            log.exception("%s: event sink failed", self.name)
