"""The DATA stream, scanned as it arrives: where it ends and what the message is.

Pure and incremental (no I/O): the protocol feeds it the chunks the socket gives,
split anywhere, and it answers where the data ended.  In the same pass it

* finds the end: CRLF . CRLF, the first CRLF being the last line's own (RFC 5321
  §4.1.1.4), also when the five octets arrive in different chunks, and ``.CRLF`` as
  the very first line (the 354 reply stands for the line end before it);
* undoes dot-stuffing (§4.5.2) into one buffer, the only copy of the message;
* finds what makes the message refused whole at the end of the data: a bare CR or
  LF (§2.3.8; SMTP smuggling hides a second message behind one), a NUL octet (RFC
  5322 §2.3 allows none), a line over the limit (§4.5.3.1.6), and the size limit.

Lines are checked whole: a chunk is taken up to its last LF, the unfinished line
waits for the next chunk.  The checks are C-speed counts and searches over those
runs of complete lines, so the result does not depend on where the chunks split.
"""

from __future__ import annotations

from gateway import replies
from gateway.replies import Reply

_END = b"\r\n.\r\n"
_EMPTY = b""


def _may_have_long_line(block: bytes, longest: int) -> bool:
    """False when no line of ``block`` can be longer than ``longest`` octets.

    A line that long covers a whole slice of ``longest // 2`` octets, wherever the
    slices start: so if every slice holds a line end, there is none.  A few C-speed
    searches (one per ``longest // 2`` octets), where splitting the block into its
    lines made an object per line (a third of the scanner's time on a 5 KB message,
    issue 16); a slice without a line end sends the caller to the exact count."""
    step = max(1, longest // 2)
    find = block.find
    for start in range(0, len(block), step):
        if find(b"\n", start, start + step) < 0:
            return True
    return False


class DataScanner:
    """Feed it chunks with :meth:`feed` until it returns the end's offset; then
    :attr:`problem` is the refusal (or None) and :attr:`message` the message as
    the client meant it (dot-stuffing undone, without the final ``.CRLF``)."""

    __slots__ = ("size", "_limit", "_max_line", "_buffer", "_whole", "_partial", "_tail",
                 "_bare", "_nul", "_long", "_big", "done")

    def __init__(self, max_line_length: int, size_limit: int = 0):
        self.size = 0  # octets of DATA as sent so far (stuffing included)
        self.done = False
        self._limit = size_limit
        self._max_line = max_line_length  # with its CRLF
        self._buffer: bytearray | None = bytearray()  # None once the message is refused
        self._whole: bytes | None = None  # the message when it came in one chunk
        self._partial = _EMPTY  # the current line, until its LF arrives
        self._tail = b"\r\n"  # the last (up to) 4 octets seen: the 354 ended a line
        self._bare = self._nul = self._long = self._big = False

    # --- results -----------------------------------------------------------------------
    @property
    def problem(self) -> Reply | None:
        """The reason to refuse the message, by precedence: size, smuggling, NUL, line."""
        if self._big:
            return replies.MESSAGE_TOO_BIG
        if self._bare:
            return replies.BARE_NEWLINE
        if self._nul:
            return replies.NUL_OCTET
        if self._long:
            return replies.LINE_TOO_LONG
        return None

    @property
    def message(self) -> bytes | bytearray:
        """The message (empty once a problem is found).  One chunk's message is a
        ``bytes``; a longer one the ``bytearray`` it was gathered in, not copied."""
        if self._whole is not None:
            return self._whole
        return self._buffer if self._buffer is not None else _EMPTY

    # --- input -------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> int:
        """Take the next chunk of the stream; -1 while the data goes on, else the offset
        in ``chunk`` just past the end of data (what follows is the next command)."""
        end = self._find_end(chunk)
        stop = len(chunk) if end < 0 else end
        self.size += stop
        if end >= 0:
            self.done = True
            self.size -= 3  # the ".CRLF" is no part of the message
        # While reading, up to 3 octets seen may yet be the end's ".CR"; at the end exact.
        if self._limit and self.size - (0 if self.done else 3) > self._limit:
            self._big = True
            self._buffer = self._whole = None
            self._partial = _EMPTY
        elif not self._big:
            self._take(chunk, stop)
        if end < 0:
            self._tail = (self._tail + chunk[-4:])[-4:]
        return end

    def _find_end(self, chunk: bytes) -> int:
        tail = self._tail
        # An end that starts in the octets already seen (split across chunks) comes
        # first; one wholly in ``chunk`` cannot fit in its first 4 octets.
        at = (tail + chunk[:4]).find(_END)
        if at >= 0:
            return at + 5 - len(tail)
        at = chunk.find(_END)
        return at if at < 0 else at + 5

    def _take(self, chunk: bytes, stop: int) -> None:
        partial = self._partial
        if self.done:
            # The message ends with the CRLF before the end's ".CRLF".  When the dot came
            # in an earlier chunk it waits in ``partial``, which held nothing before it.
            last = stop - 3
            if last < 0:
                partial, last = _EMPTY, 0
        else:
            last = chunk.rfind(b"\n", 0, stop) + 1  # complete lines up to here
            if not last:  # no line ends in this chunk: the current line goes on
                self._partial = partial + chunk
                self._check_unfinished()
                return
        start = 0
        if partial:
            start = chunk.find(b"\n", 0, last) + 1
            self._lines(partial + chunk[:start])
        if start < last:
            self._lines(chunk if start == 0 and last == len(chunk) else chunk[start:last])
        self._partial = _EMPTY if self.done else chunk[last:stop]
        if self._partial:
            self._check_unfinished()

    def _check_unfinished(self) -> None:
        line = self._partial
        # Already too long whatever ends it (its LF adds one; a stuffing dot does not count).
        if len(line) - (line[:1] == b".") + 1 > self._max_line:
            self._long = True
            self._buffer = self._whole = None
            # Only its last octet is kept (a CR whose LF is still to come); what is
            # dropped is checked now, as it would have been with its line.
            dropped = line[:-1]
            if b"\r" in dropped:  # no LF in the line: every CR before its end is bare
                self._bare = True
            if b"\0" in dropped:
                self._nul = True
            self._partial = line[-1:]

    def _lines(self, block: bytes) -> None:
        """Complete lines (``block`` starts a line and ends with LF)."""
        pairs = block.count(b"\r\n")
        if block.count(b"\n") != pairs or block.count(b"\r") != pairs:
            self._bare = True
        if b"\0" in block:
            self._nul = True
        # RFC 5321 §4.5.2: a line that starts with a dot got one more.
        if block[:1] == b".":
            block = block[1:]
        if b"\r\n." in block:
            block = block.replace(b"\r\n.", b"\r\n")
        # §4.5.3.1.6: a text line is at most max_line_length octets with its CRLF.
        if len(block) > self._max_line - 2 and _may_have_long_line(block, self._max_line - 2) and \
                max(map(len, block.split(b"\r\n"))) > self._max_line - 2:
            self._long = True
        if self._bare or self._nul or self._long:
            self._buffer = self._whole = None
            return
        buffer = self._buffer
        if buffer is None:
            return
        if self.done and not buffer and self._whole is None:
            self._whole = block  # the usual small message: one chunk, no copy to gather it
        else:
            if self._whole is not None:  # the line finished from earlier chunks came first
                buffer += self._whole
                self._whole = None
            buffer += block
