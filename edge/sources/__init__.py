"""Input sources of the edge daemon: one module each, all behind `base.Source`, found by
`registry.source_types()` (see base.SourceType for what a source module defines)."""
from __future__ import annotations

from ..errors import ConfigError
from .base import InputItem, InputNotReady, Outcome, Source, SourceType
from .registry import source_types


def build_sources(config, on_event=None) -> list[Source]:
    """The sources an `EdgeConfig` switches on.

    `on_event(level, kind, message, source=name)` receives the sources' own events (camera
    lost, DICOM association refused); the daemon publishes them on the error topic."""
    def events_of(name: str):
        if on_event is None:
            return None
        return lambda level, kind, message: on_event(level, kind, message, source=name)

    sources: list[Source] = []
    for source_type in source_types().values():
        settings = config.source_settings[source_type.name]
        if not source_type.enabled(settings):
            continue
        missing = source_type.missing_requirement()
        if missing:
            raise ConfigError(missing)
        sources.append(source_type.build(settings, config, events_of(source_type.name)))
    return sources


def no_source_message() -> str:
    """The ConfigError text for a configuration that switches no source on."""
    switches = [source.switch_key for source in source_types().values()]
    return f"{switches[0]}: no input source is configured (set {', '.join(switches)})"


__all__ = ["InputItem", "InputNotReady", "Outcome", "Source", "SourceType", "build_sources", "no_source_message",
           "source_types"]
