"""The interface every input source implements (folder watch, DICOM receiver, camera), and
`SourceType`, the one description of a source that configuration, CLI, `edge check` and the
daemon read (see `registry.py`).

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
from typing import Any

from ..checks import CheckResult
from ..preprocess import DecodedImage


@dataclass
class Outcome:
    ok: bool
    error: str | None = None  # one line, for the error event and the rejected/ sidecar
    result_ids: list[str] = field(default_factory=list)  # message ids of the stored results
    # Nothing was stored: the input was not complete yet (InputNotReady); its source offers it again.
    retry: bool = False
    # Files the source may keep beside the released input, by name suffix (the watch folder's
    # processed/NAME.heatmap.png): device-local outputs, never published.
    attachments: dict[str, bytes] = field(default_factory=dict)


class InputNotReady(Exception):
    """Raised by `InputItem.load` when the input is visibly not complete yet (a file still
    growing). The worker stores nothing and releases it with `Outcome(ok=False, retry=True)`."""


@dataclass
class InputItem:
    source: str  # the SourceType name: "watch" | "dicom" | "camera" | ...
    # Raw reference (file name, SOP Instance UID, frame id). Only its keyed hash is ever published.
    ref: str
    # Decodes the input when the worker gets to it, so a slow decode never blocks a source.
    load: Callable[[], DecodedImage]
    # Releases the input; returning False says it could not (the outcome's ledger entry is kept).
    done: Callable[[Outcome], bool | None] = lambda outcome: None
    # For logs only (a file name); never published: the worker replaces it in error messages.
    label: str = ""
    # Optional: the input's non-identifying header facts (modality, body part, SOP Instance UID)
    # as a DecodedImage without frames, read without decoding pixels. The worker judges the
    # model's scope on it first, so an out-of-scope instance is answered not_applicable even
    # when its pixels could not be decoded.
    peek: Callable[[], DecodedImage | None] | None = None
    # Optional: the received DICOM dataset itself, for writers that answer in DICOM (edge/pacs:
    # SR and SC back into the source study). It carries patient identity: never published or logged.
    dataset: Any = None


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


# ------------------------------------------------------------------------------ registration


@dataclass(frozen=True)
class Flag:
    """A `medge edge run/check` option for one key of a source's settings. Its type comes from
    the settings field, its "[default: ...]" from the field's default (or `default_help` for a
    computed one): help strings never repeat a default."""

    key: str  # the settings field
    names: tuple[str, ...]  # ("--watch",); the first is the option's name
    help: str
    default_help: str | None = None
    multiple: bool = False  # repeatable, each value may also be a comma list (list fields)
    choices: tuple[str, ...] | None = None


def _no_checks(settings) -> None:
    return None


@dataclass(frozen=True)
class SourceType:
    """Everything the rest of the daemon knows about one kind of source. A source module
    defines one as `SOURCE`; `registry.source_types()` finds it, so a new source is one new
    module (and its test), with no edit anywhere else."""

    name: str  # the [section] of edge.toml, InputItem.source, the heartbeat's sources key
    settings: type  # a dataclass: the section's keys, their types and defaults
    switch: str  # the key whose value switches the source on (None = off), e.g. "dir" of [watch]
    build: Callable[[Any, Any, EventSink | None], Source]  # (settings, EdgeConfig, on_event)
    check: Callable[[Any, Any], CheckResult]  # (settings, EdgeConfig): what `medge edge check` probes
    validate: Callable[[Any], None] = _no_checks  # raises ConfigError naming "section.key"
    flags: tuple[Flag, ...] = ()
    requires: tuple[str, ...] = ()  # modules it needs at run time, e.g. ("pynetdicom",)
    extra: str | None = None  # the pip extra that installs them
    order: int = 50  # position among the sources (status, heartbeat, check lines)

    def enabled(self, settings) -> bool:
        return getattr(settings, self.switch) is not None

    @property
    def switch_key(self) -> str:
        return f"{self.name}.{self.switch}"

    def missing_requirement(self) -> str | None:
        """None when every module in `requires` imports, else the one-line reason."""
        import importlib.util

        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                hint = f" (pip install 'medge[{self.extra}]')" if self.extra else ""
                return f"{self.switch_key}: the {self.name} source needs {module}{hint}"
        return None
