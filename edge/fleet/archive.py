"""A bundle folder as one file for transport: an uncompressed tar archive.

Uncompressed, so the archive's sha256 (in the deploy command) and its size are simple to check
before anything is unpacked, and no decompression bomb can hide in it. `pack_bundle` writes
the folder's files only, in name order with fixed owners and times, so the same folder always
packs to the same bytes (the same sha256 on every operator machine). `unpack_bundle` takes
regular files with plain relative names only (no links, devices, absolute paths or `..`),
within a count and size bound, into a fresh folder; the bundle's own hashes and signature are
checked afterwards by `load_bundle`.
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from ..errors import BundleError

MAX_MEMBERS = 256
MAX_UNPACKED_BYTES = 2 * 1024**3


def _files(folder: Path) -> list[Path]:
    return sorted((path for path in folder.rglob("*") if path.is_file() and not path.is_symlink()),
                  key=lambda path: path.relative_to(folder).as_posix())


def pack_bundle(folder: str | Path, dest: str | Path | None = None) -> bytes | Path:
    """Pack a bundle folder; returns the archive's bytes, or writes it to `dest` and returns dest."""
    folder = Path(folder)
    if not (folder / "medge.json").is_file():
        raise BundleError(f"{folder}: not a model bundle (medge.json is missing)")
    target = io.BytesIO() if dest is None else open(dest, "wb")
    try:
        with tarfile.open(fileobj=target, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for path in _files(folder):
                info = tarfile.TarInfo(path.relative_to(folder).as_posix())
                info.size = path.stat().st_size
                info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
                with open(path, "rb") as handle:
                    archive.addfile(info, handle)
    finally:
        if dest is not None:
            target.close()
    return target.getvalue() if dest is None else Path(dest)


def _safe_name(name: str) -> str:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or any(part in ("", ".", "..") for part in path.parts) or "\\" in name:
        raise BundleError(f"bundle archive: refusing member {name[:80]!r} (not a plain relative file name)")
    return path.as_posix()


def unpack_bundle(archive: str | Path, dest: str | Path, max_members: int = MAX_MEMBERS,
                  max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Unpack `archive` into the new folder `dest` (unpacked beside it first, then renamed, so a
    `dest` that exists is complete). Raises BundleError for anything but plain files."""
    dest = Path(dest)
    if dest.exists():
        raise BundleError(f"{dest}: already exists; refusing to unpack over it")
    staging = dest.with_name(dest.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        try:
            with tarfile.open(archive, mode="r:") as tar:
                total, count = 0, 0
                for member in tar:
                    count += 1
                    if count > max_members:
                        raise BundleError(f"bundle archive: more than {max_members} members")
                    name = _safe_name(member.name)
                    if member.isdir():
                        continue
                    if not member.isreg():
                        raise BundleError(f"bundle archive: refusing {name!r} (not a regular file)")
                    total += member.size
                    if total > max_bytes:
                        raise BundleError(f"bundle archive: unpacks to more than {max_bytes} bytes")
                    target = staging / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    with open(target, "wb") as handle:
                        shutil.copyfileobj(source, handle, 1 << 20)
                        handle.flush()
                        os.fsync(handle.fileno())
        except (tarfile.TarError, EOFError) as error:
            raise BundleError(f"bundle archive: not a valid tar archive ({error})") from None
        if not (staging / "medge.json").is_file():
            raise BundleError("bundle archive: holds no medge.json (not a model bundle)")
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
