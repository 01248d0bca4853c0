"""Linux inotify through ctypes (no dependency): which files in the watched folders are still
open for writing. A writer's close (IN_CLOSE_WRITE) or rename into place (IN_MOVED_TO) is the
kernel saying a file is complete, which a size/mtime poll can only guess. Elsewhere (or when
inotify cannot be set up, e.g. the limit of watches is reached) `Inotify.create()` is None and
the folder source relies on polling alone.

Events for writes over a network file system made on another machine do not arrive here;
that is why the folder source still waits for stability and retries inputs that keep growing.
"""
from __future__ import annotations

import ctypes
import os
import struct
import sys

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

MASK = (IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
        | IN_MOVE_SELF)
HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of NUL-padded name)


class Inotify:
    def __init__(self, libc, fd: int):
        self._libc = libc
        self.fd = fd

    @classmethod
    def create(cls) -> Inotify | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        return cls(libc, fd) if fd >= 0 else None

    def watch(self, folder: str) -> int | None:
        """A watch descriptor for `folder` (the same one again for a folder already watched)."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(folder), MASK)
        return wd if wd >= 0 else None

    def read(self) -> list[tuple[int, int, str]]:
        """Every queued (wd, mask, name) event, without blocking."""
        events = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return events
            except OSError:
                return events
            if not data:
                return events
            offset = 0
            while offset + HEADER.size <= len(data):
                wd, mask, _cookie, length = HEADER.unpack_from(data, offset)
                raw = data[offset + HEADER.size: offset + HEADER.size + length]
                events.append((wd, mask, os.fsdecode(raw.rstrip(b"\0"))))
                offset += HEADER.size + length

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
