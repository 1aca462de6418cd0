"""Sans-IO line framing for every JSON-lines socket: bytes in, complete lines out, capped length."""

from __future__ import annotations

MAX_LINE = 64 * 1024
"""The longest request line a server reads (bytes, newline excluded)."""


class LineTooLong(Exception):
    """The peer sent more than ``max_line`` bytes without a newline."""


class LineBuffer:
    """Sans-IO framing: :meth:`feed` bytes, take complete lines with :meth:`next_line`."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    def next_line(self) -> bytes | None:
        """The next complete line without its ``\\n``, or None; :class:`LineTooLong` past the cap."""
        i = self._buf.find(b"\n", self._scanned)
        if i < 0:
            self._scanned = len(self._buf)
            if len(self._buf) > self.max_line:
                raise LineTooLong
            return None
        if i > self.max_line:
            raise LineTooLong
        line = bytes(self._buf[:i])
        del self._buf[: i + 1]
        self._scanned = 0
        return line

    def rest(self) -> bytes:
        """What was fed after the last complete line (an unterminated last line at EOF)."""
        return bytes(self._buf)

    def take_rest(self) -> bytes:
        """:meth:`rest`, and forget it (the peer closed: it is the last line)."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return rest
