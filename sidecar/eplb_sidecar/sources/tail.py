"""Follow a file an engine appends lines to, as ``tail -F`` does.

Only complete lines are returned: a half-written last line waits for its newline.  A file
that shrinks (truncated, or re-created by a restarted engine) is read again from its start;
one replaced by another file (rotated) has its old remainder read first, then the new file
from its start.  :data:`NEW_FILE` precedes the lines of every file read from its start, so
a reader can forget what it knew of the one before (vLLM's meta line).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Final

NEW_FILE: Final = None  # in the lines returned: a file begins here


class LineTail:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""

    def read(self) -> list[bytes | None]:
        """Complete lines appended since the last call (no newline, blank ones left out),
        with :data:`NEW_FILE` where a file was read from its start."""
        lines: list[bytes | None] = []
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._file is not None:  # rotated away, its successor not there yet
                lines += self._drain()
                self._close()
            return lines
        if self._file is not None and stat.st_ino != self._inode:
            lines += self._drain()  # the rotated file's last lines, then the new one
            self._close()
        if self._file is not None and stat.st_size < self._offset:
            self._close()  # truncated: read it again from the start
        if self._file is None:
            self._file = self.path.open("rb")
            self._inode = stat.st_ino
            lines.append(NEW_FILE)
        lines += self._drain()
        return lines

    def _drain(self) -> list[bytes | None]:
        assert self._file is not None
        self._file.seek(self._offset)
        data = self._file.read()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [line for line in complete if line.strip()]

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._inode = None
        self._offset = 0
        self._partial = b""
