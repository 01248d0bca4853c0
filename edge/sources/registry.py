"""Finds the input sources: every module of this package that defines `SOURCE = SourceType(...)`.

Configuration (the [section] and its keys), `medge edge run/check` (flags), `edge check`
(probes) and the daemon (which sources run) all read this one table, so adding a source is
adding a module here; nothing else is edited. Modules import their heavy dependencies
(pynetdicom) only when a source starts, so discovery costs no more than the imports the
device has anyway.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil

from .base import SourceType

NOT_SOURCES = {"base", "registry"}


@functools.cache
def source_types() -> dict[str, SourceType]:
    """name -> SourceType, in `order` (then name)."""
    from .. import sources as package

    found: list[SourceType] = []
    for module in pkgutil.iter_modules(package.__path__):
        if module.name in NOT_SOURCES or module.name.startswith("_"):
            continue
        source = getattr(importlib.import_module(f"{package.__name__}.{module.name}"), "SOURCE", None)
        if isinstance(source, SourceType):
            found.append(source)
    found.sort(key=lambda source: (source.order, source.name))
    names = [source.name for source in found]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:  # pragma: no cover - a programming error in a new module
        raise RuntimeError(f"two source modules claim the name(s) {sorted(duplicates)}")
    return {source.name: source for source in found}
