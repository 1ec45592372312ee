"""An SMTP downstream with a small pool of reused connections (aiosmtplib).

Every step has our own deadline (the downstream's ``timeout``), shorter than the
client's, so a slow downstream turns into ``451 4.4.2`` that the client retries,
not a dropped connection.  A connection whose state is unknown after an error or
a timeout is closed, never returned to the pool.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque

import aiosmtplib

from gateway import replies
from gateway.config.model import Downstream as DownstreamSettings
from gateway.downstream.replies import relay_reply
from gateway.replies import Reply

log = logging.getLogger("portcullis.downstream")


class SmtpDownstream:
    def __init__(self, settings: DownstreamSettings, local_hostname: str, direction: str):
        self.settings = settings
        self.name = f"{direction}:{settings.redacted()}"
        self._local_hostname = local_hostname
        self._idle: deque[aiosmtplib.SMTP] = deque()
        self._tls_context = ssl.create_default_context()
        if not settings.tls_verify:
            self._tls_context.check_hostname = False
            self._tls_context.verify_mode = ssl.CERT_NONE

    def begin(self, sender: str, options: list[str]) -> SmtpTransaction:
        return SmtpTransaction(self, sender, options)

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            local_hostname=self._local_hostname,
            timeout=s.timeout,
            use_tls=s.scheme == "smtps",
            start_tls=s.scheme == "smtp+starttls",
            tls_context=self._tls_context if s.scheme != "smtp" else None,
            username=s.username,
            password=s.password,
        )
        await client.connect()
        if client.last_ehlo_response is None:
            await client.ehlo()
        return client

    async def acquire(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connection, and whether it came from the pool (and may be stale)."""
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
        return await self._connect(), False

    def release(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected and len(self._idle) < self.settings.pool_size:
            self._idle.append(client)
        else:
            client.close()

    async def probe(self) -> str | None:
        try:
            async with asyncio.timeout(self.settings.timeout):
                client, _ = await self.acquire()
                await client.noop()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return f"{self.name}: {type(exc).__name__}: {exc}"
        self.release(client)
        return None

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class SmtpTransaction:
    def __init__(self, downstream: SmtpDownstream, sender: str, options: list[str]):
        self._downstream = downstream
        self._sender = sender
        self._options = options
        self._client: aiosmtplib.SMTP | None = None
        self._broken: Reply | None = None
        self._accepted = 0

    async def _command(self, client: aiosmtplib.SMTP, verb: bytes, arg: bytes) -> Reply:
        response = await client.execute_command(verb, arg)
        return relay_reply(response.code, response.message)

    async def _start(self) -> Reply:
        """Connect (or reuse) and send MAIL FROM.  A pooled connection may have been
        closed by the downstream while idle: that one is retried once, fresh."""
        mail_arg = f"FROM:<{self._sender}>".encode() + b"".join(
            b" " + o.encode("ascii") for o in self._options
        )
        for attempt in (1, 2):
            client, pooled = await self._downstream.acquire()
            try:
                reply = await self._command(client, b"MAIL", mail_arg)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                client.close()
                if pooled and attempt == 1:
                    continue
                raise
            if reply.is_success:
                self._client = client
            else:
                await self._reset(client)
            return reply
        raise AssertionError("unreachable")

    async def rcpt(self, recipient: str, options: list[str]) -> Reply:
        if self._broken is not None:
            return self._broken
        try:
            async with asyncio.timeout(self._downstream.settings.timeout):
                if self._client is None:
                    mail_reply = await self._start()
                    if not mail_reply.is_success:
                        # The downstream refused the sender: every recipient hears why.
                        self._broken = mail_reply
                        return mail_reply
                assert self._client is not None
                arg = f"TO:<{recipient}>".encode() + b"".join(
                    b" " + o.encode("ascii") for o in options
                )
                reply = await self._command(self._client, b"RCPT", arg)
        except TimeoutError:
            return self._fail(replies.DOWNSTREAM_TIMEOUT)
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("downstream %s: %s", self._downstream.name, exc)
            return self._fail(replies.DOWNSTREAM_UNAVAILABLE)
        if reply.is_success:
            self._accepted += 1
        return reply

    async def data(self, message: bytes) -> Reply:
        if self._broken is not None:
            return self._broken
        client = self._client
        if client is None or not self._accepted:
            return replies.BAD_SEQUENCE.with_text("No recipient was accepted")
        try:
            async with asyncio.timeout(self._downstream.settings.timeout):
                response = await client.data(message)
        except TimeoutError:
            return self._fail(replies.DOWNSTREAM_TIMEOUT)
        except aiosmtplib.SMTPResponseException as exc:
            # DATA refused (or its 354 never came): the connection is still usable.
            self._client = None
            await self._reset(client)
            return relay_reply(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("downstream %s: %s", self._downstream.name, exc)
            return self._fail(replies.DOWNSTREAM_UNAVAILABLE)
        self._client = None
        self._downstream.release(client)
        return relay_reply(response.code, response.message)

    def _fail(self, reply: Reply) -> Reply:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._broken = reply
        return reply

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        try:
            async with asyncio.timeout(self._downstream.settings.timeout):
                await client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()
            return
        self._downstream.release(client)

    async def abort(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._reset(client)
