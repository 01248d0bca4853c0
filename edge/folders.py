"""Which folders medge may delete: only ones it made itself, or empty ones.

A folder medge writes (a bundle, a rejected conversion, the demo's work folder) holds a marker
file; any other non-empty folder is the user's and is never removed, whatever --force or
--workdir says.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def replaceable(folder: Path, markers: Iterable[str]) -> bool:
    """True for an empty folder or one holding any of `markers` (file names medge writes there)."""
    folder = Path(folder)
    return folder.is_dir() and (any((folder / marker).exists() for marker in markers) or not any(folder.iterdir()))
