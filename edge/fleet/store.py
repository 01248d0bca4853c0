"""The device's bundle store: `<fleet dir>/bundles/<archive sha256>/` and one `active.json`
pointer naming the active bundle and the previous one (kept for rollback).

Power loss at any point leaves the old or the new model active, never neither: an archive is
downloaded to a `.part` and renamed once its sha256 matched; it is unpacked beside its final
folder and renamed into place; and the pointer is replaced atomically (write a temporary file,
fsync it, rename it over active.json, fsync the folder). The daemon loads what the pointer
names at start, falling back to the previous bundle and then to the configured one.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import BundleError
from .archive import unpack_bundle
from .download import fsync_dir

POINTER_NAME = "active.json"
COMMANDS_NAME = "commands.json"
MAX_REMEMBERED = 500  # command ids kept to ignore replays of retained commands


def write_json_atomically(path: Path, data) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Entry:
    """One bundle the device can run: a store folder (key = archive sha256) or the configured one."""

    path: str  # the bundle folder
    name: str
    version: str
    sha256: str  # of the model file results report (`model.sha256` of every result)
    archive_sha256: str | None = None  # None: the configured bundle, not from the store

    def ref(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256,
                "archive_sha256": self.archive_sha256}

    @classmethod
    def from_dict(cls, data: dict) -> Entry:
        return cls(path=str(data["path"]), name=str(data["name"]), version=str(data["version"]),
                   sha256=str(data["sha256"]), archive_sha256=data.get("archive_sha256"))


@dataclass(frozen=True)
class Pointer:
    active: Entry
    previous: Entry | None
    rollout: str | None = None
    command_id: str | None = None


class BundleStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.bundles = self.root / "bundles"
        self.downloads = self.root / "downloads"
        self.pointer_path = self.root / POINTER_NAME
        self.commands_path = self.root / COMMANDS_NAME
        for folder in (self.bundles, self.downloads):
            folder.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ bundles
    def archive_path(self, archive_sha256: str) -> Path:
        return self.downloads / f"{archive_sha256}.tar"

    def bundle_path(self, archive_sha256: str) -> Path:
        return self.bundles / archive_sha256

    def install(self, archive: Path, archive_sha256: str) -> Path:
        """Unpack a downloaded (sha256-checked) archive into the store; idempotent."""
        folder = self.bundle_path(archive_sha256)
        if not folder.is_dir():
            unpack_bundle(archive, folder)
            fsync_dir(self.bundles)
        return folder

    def discard(self, archive_sha256: str) -> None:
        """Forget a refused bundle (never the active or previous one)."""
        pointer = self.read_pointer()
        kept = {e.archive_sha256 for e in ((pointer.active, pointer.previous) if pointer else ()) if e}
        if archive_sha256 in kept:
            return
        shutil.rmtree(self.bundle_path(archive_sha256), ignore_errors=True)
        self.archive_path(archive_sha256).unlink(missing_ok=True)

    def prune(self) -> None:
        """Remove every bundle and archive but the active and previous ones."""
        pointer = self.read_pointer()
        kept = {e.archive_sha256 for e in ((pointer.active, pointer.previous) if pointer else ()) if e}
        for folder in self.bundles.iterdir():
            if folder.name not in kept:
                shutil.rmtree(folder, ignore_errors=True)
        for archive in self.downloads.iterdir():  # an installed archive is not needed again; a .part may be
            if not archive.name.endswith(".part") or archive.name.split(".")[0] in kept:
                archive.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the pointer
    def read_pointer(self) -> Pointer | None:
        """The pointer, or None when the device never switched (or the file is unreadable)."""
        try:
            data = json.loads(self.pointer_path.read_text())
            return Pointer(active=Entry.from_dict(data["active"]),
                           previous=Entry.from_dict(data["previous"]) if data.get("previous") else None,
                           rollout=data.get("rollout"), command_id=data.get("command_id"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BundleError(f"{self.pointer_path}: unreadable ({error})") from None

    def write_pointer(self, pointer: Pointer) -> None:
        write_json_atomically(self.pointer_path, {
            "active": asdict(pointer.active), "previous": asdict(pointer.previous) if pointer.previous else None,
            "rollout": pointer.rollout, "command_id": pointer.command_id})

    def activate(self, entry: Entry, current: Entry, rollout: str | None, command_id: str | None) -> Pointer:
        """Make `entry` active and `current` (what runs now) previous. Activating what is already
        active (a restart repeating a command) keeps the previous one."""
        pointer = self.read_pointer()
        previous = current
        if entry.path == current.path:
            previous = pointer.previous if pointer is not None else None
        new = Pointer(active=entry, previous=previous, rollout=rollout, command_id=command_id)
        self.write_pointer(new)
        return new

    # ------------------------------------------------------------------ handled commands
    def commands(self) -> dict:
        try:
            data = json.loads(self.commands_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def remember(self, command_id: str, record: dict) -> None:
        data = self.commands()
        data.pop(command_id, None)
        data[command_id] = record
        while len(data) > MAX_REMEMBERED:
            data.pop(next(iter(data)))
        write_json_atomically(self.commands_path, data)
