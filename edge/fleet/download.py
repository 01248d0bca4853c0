"""Fetch a bundle archive over HTTP(S): resumable (Range) into `NAME.part`, bounded by the size
the signed command names, and checked by its sha256 before it takes its final name.

A power cut or a dropped connection leaves a `.part` file; the next attempt asks only for the
bytes after it (`Range: bytes=N-`) and hashes the whole file at the end, so a wrong resume
(a server that changed the file) is caught by the sha256 and the download starts over once.
"""
from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..bundle import sha256_file
from ..errors import MedgeError

log = logging.getLogger("medge.edge.fleet")

CHUNK = 256 * 1024
TIMEOUT_S = 30.0


class DownloadError(MedgeError):
    """The archive could not be fetched, or is not the one the command names."""


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _safe_url(url: str) -> str:
    """The URL without query or credentials: what a log or an event may show."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def download(url: str, dest: str | Path, *, sha256: str, size: int, attempts: int = 5, timeout_s: float = TIMEOUT_S,
             progress=None, stop=None) -> Path:
    """Download `url` to `dest` (resuming `dest.part`); returns dest once its size and sha256 match.

    `progress(done_bytes, size)` is called as bytes arrive; `stop()` returning True abandons the
    download (the .part file stays for a later resume). Raises DownloadError.
    """
    dest = Path(dest)
    sha256 = sha256.lower()
    if not url.lower().startswith(("http://", "https://")):
        raise DownloadError(f"bundle url must be http:// or https://, not {_safe_url(url)!r}")
    if dest.is_file() and dest.stat().st_size == size and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    restarted = False
    last_error = None
    for attempt in range(attempts):
        if stop is not None and stop():
            raise DownloadError("download abandoned: the daemon is stopping")
        try:
            _fetch(url, part, size, timeout_s, progress, stop)
        except DownloadError:
            raise
        except (OSError, urllib.error.URLError, TimeoutError) as error:
            last_error = getattr(error, "reason", None) or error
            log.warning("bundle download from %s interrupted (%s); resuming (%d/%d)", _safe_url(url), last_error,
                        attempt + 1, attempts)
            time.sleep(min(0.5 * 2 ** attempt, 5.0))
            continue
        if sha256_file(part) != sha256:
            part.unlink(missing_ok=True)
            if restarted:
                raise DownloadError(f"bundle archive from {_safe_url(url)} does not match the sha256 in the command "
                                    "(tampered with, or the wrong file); refused")
            restarted = True  # a stale .part from another archive: once more from the start
            continue
        os.replace(part, dest)
        fsync_dir(dest.parent)
        return dest
    raise DownloadError(f"cannot download the bundle from {_safe_url(url)} ({last_error})")


def _fetch(url: str, part: Path, size: int, timeout_s: float, progress, stop) -> None:
    have = part.stat().st_size if part.is_file() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the server has no bytes after ours: start over
            part.unlink(missing_ok=True)
            raise OSError("range not satisfiable; starting over") from None
        raise DownloadError(f"bundle download from {_safe_url(url)} failed: HTTP {error.code} {error.reason}") from None
    with response:
        status = getattr(response, "status", 200)
        mode = "ab" if have and status == 206 else "wb"
        if mode == "wb":
            have = 0  # the server ignored the Range: the whole file again
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and have + int(length) > size:
            raise DownloadError(f"bundle at {_safe_url(url)} is {have + int(length)} bytes, larger than the {size} the "
                                "command says; refused")
        with open(part, mode) as handle:
            while True:
                if stop is not None and stop():
                    raise DownloadError("download abandoned: the daemon is stopping")
                block = response.read1(CHUNK)  # what has arrived: the .part grows as the bytes come
                if not block:
                    break
                if have + len(block) > size:
                    raise DownloadError(f"bundle at {_safe_url(url)} is larger than the {size} bytes the command "
                                        "says; refused")
                handle.write(block)
                handle.flush()  # to the OS: a killed process keeps what it received (power loss: the hash decides)
                have += len(block)
                if progress is not None:
                    progress(have, size)
            handle.flush()
            os.fsync(handle.fileno())
    if have < size:
        raise OSError(f"connection closed after {have} of {size} bytes")
