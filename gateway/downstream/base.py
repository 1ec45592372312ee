"""Where accepted mail goes: the interface every downstream implements.

The gateway is a before-queue proxy (as Postfix's smtpd_proxy_filter): a
transaction is opened for each message, each recipient is relayed as the client
sends it, and the message is handed over at end of DATA.  The client hears the
downstream's own answer for every step, so a recipient refused downstream is
refused at RCPT time and nothing gets a 250 that the downstream did not take.
"""

from __future__ import annotations

from typing import Protocol

from gateway.downstream.origin import Origin
from gateway.message import Buffer
from gateway.replies import Reply


class Transaction(Protocol):
    async def rcpt(self, recipient: str, options: list[str]) -> Reply:
        """Relay one recipient; the first call also sends MAIL FROM."""
        ...

    async def data(self, message: bytes | list[Buffer]) -> Reply:
        """Hand over the message (CRLF line endings, not dot-stuffed), whole or as
        parts to send one after the other (our fields, then the message as read)."""
        ...

    async def abort(self) -> None:
        """The client gave up (RSET, QUIT, disconnect, refusal): reset downstream."""
        ...


class Downstream(Protocol):
    name: str

    def begin(self, sender: str, options: list[str], origin: Origin | None = None) -> Transaction:
        """``origin``: the client, for a downstream that takes XCLIENT/XFORWARD."""
        ...

    async def extensions(self) -> frozenset[str]:
        """Its EHLO keywords, lower case: the listeners advertise DSN and SMTPUTF8 only
        when the downstream offers them (it is the one that honours them)."""
        ...

    async def probe(self) -> str | None:
        """None when the downstream can take mail now, else what is wrong."""
        ...

    async def close(self) -> None: ...
