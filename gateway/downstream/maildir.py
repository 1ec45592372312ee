"""An embedded downstream for trying the gateway without an MTA: a Maildir.

Each accepted message is written to ``tmp/``, fsynced, then renamed into
``new/`` (the Maildir delivery protocol), and only then does the client hear 250.
The envelope is kept in ``Return-Path:`` and ``X-Envelope-To:`` fields on top.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from itertools import count
from pathlib import Path

from gateway import replies
from gateway.downstream.origin import Origin
from gateway.message import Buffer, message_parts, write_parts
from gateway.replies import Reply

_sequence = count()


class MaildirDownstream:
    def __init__(self, path: str | Path, direction: str):
        self.path = Path(path)
        self.name = f"{direction}:maildir:{self.path}"
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def begin(self, sender: str, options: list[str],
              origin: Origin | None = None) -> MaildirTransaction:
        return MaildirTransaction(self, sender)

    async def extensions(self) -> frozenset[str]:
        # A file takes 8-bit and UTF-8 as they come; it sends no DSN (no "dsn").
        return frozenset({"8bitmime", "smtputf8", "size"})

    async def probe(self) -> str | None:
        if not os.access(self.path / "tmp", os.W_OK):
            return f"{self.name}: not writable"
        return None

    async def close(self) -> None:
        return None

    def deliver(self, sender: str, recipients: list[str], message: bytes | list[Buffer]) -> str:
        """Blocking: write, fsync, rename.  Returns the file name."""
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(_sequence)}.{socket.gethostname()}"
        envelope = f"Return-Path: <{sender}>\r\n".encode() + b"".join(
            f"X-Envelope-To: <{r}>\r\n".encode() for r in recipients
        )
        tmp = self.path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_parts(fd, [envelope, *message_parts(message)])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path / "new" / name)
        dirfd = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(dirfd)  # the rename itself survives a crash
        finally:
            os.close(dirfd)
        return name


class MaildirTransaction:
    def __init__(self, maildir: MaildirDownstream, sender: str):
        self._maildir = maildir
        self._sender = sender
        self._recipients: list[str] = []

    async def rcpt(self, recipient: str, options: list[str]) -> Reply:
        self._recipients.append(recipient)
        return replies.RECIPIENT_OK

    async def data(self, message: bytes | list[Buffer]) -> Reply:
        try:
            name = await asyncio.to_thread(
                self._maildir.deliver, self._sender, self._recipients, message
            )
        except OSError:
            return replies.LOCAL_ERROR.with_text("Cannot write to the maildir, try again later")
        return replies.OK.with_text(f"Delivered to maildir as {name}")

    async def abort(self) -> None:
        self._recipients.clear()
