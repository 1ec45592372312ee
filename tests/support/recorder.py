"""A real SMTP server that records what reaches it: the downstream MTA in tests.

It is aiosmtpd on a loopback port, told per test how to answer: refuse some
recipients, refuse DATA, be slow.  It keeps every message it accepted, byte for
byte, and counts the transactions it saw (MAIL commands), so a test can prove
that a smuggled second message never reached it.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller

from tests.support.ports import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]


@dataclass
class Behaviour:
    refuse_rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply
    refuse_mail: str | None = None
    data_reply: str | None = None  # e.g. "554 5.7.1 spam"
    data_delay: float = 0.0
    rcpt_delay: float = 0.0
    rcpt_reply: str = "250 2.1.5 OK"  # to an accepted recipient


class RecordingHandler:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.mail_commands = 0
        self.behaviour = Behaviour()
        self.lock = threading.Lock()

    async def handle_MAIL(self, server, session, envelope, address, options):
        with self.lock:
            self.mail_commands += 1
        if self.behaviour.refuse_mail:
            return self.behaviour.refuse_mail
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        if self.behaviour.rcpt_delay:
            await asyncio.sleep(self.behaviour.rcpt_delay)
        if address in self.behaviour.refuse_rcpt:
            return self.behaviour.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return self.behaviour.rcpt_reply

    async def handle_DATA(self, server, session, envelope):
        if self.behaviour.data_delay:
            await asyncio.sleep(self.behaviour.data_delay)
        if self.behaviour.data_reply:
            return self.behaviour.data_reply
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content, list(envelope.mail_options)))
        return "250 2.0.0 queued as TEST"


class RecordingMTA:
    def __init__(self, port: int | None = None) -> None:
        self.handler = RecordingHandler()
        self.port = port or free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     decode_data=False, ready_timeout=10)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def behaviour(self) -> Behaviour:
        return self.handler.behaviour

    def start(self) -> RecordingMTA:
        self.controller.start()
        self._running = True
        return self

    def stop(self) -> None:
        """Stop (a second call does nothing: a test may have stopped it already)."""
        if getattr(self, "_running", False):
            self._running = False
            self.controller.stop()
