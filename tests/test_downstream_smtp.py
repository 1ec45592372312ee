"""The SMTP downstream client over real sockets: pipelining, BDAT, dot-stuffing,
refusals, connections out of step, and TLS (STARTTLS and implicit) with a
certificate verified against the test CA."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aiosmtpd.controller import Controller

from gateway.config.model import Downstream
from gateway.downstream.smtp import SmtpDownstream
from tests.support.ports import free_port
from tests.support.recorder import RecordingHandler

pytestmark = pytest.mark.asyncio


class ScriptedMTA:
    """A small SMTP server that speaks exactly as told and records every byte."""

    def __init__(self, extensions: list[str], *, hold_mail_reply: bool = False,
                 refuse_mail: bytes | None = None, chatter_after_data: bool = False,
                 delays: dict[bytes, float] | None = None, deaf_after_354: bool = False):
        self.extensions = extensions
        # Seconds to wait before answering a verb (b"RCPT", b"DATA": DATA's final reply).
        self.delays = delays or {}
        # After 354, read nothing more: the client's writes fill the socket buffers.
        self.deaf_after_354 = deaf_after_354
        self.hold_mail_reply = hold_mail_reply
        self.refuse_mail = refuse_mail
        self.chatter_after_data = chatter_after_data
        self.received = b""
        self.messages: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _line(self, reader: asyncio.StreamReader) -> bytes:
        line = await reader.readuntil(b"\r\n")
        self.received += line
        return line

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 scripted ESMTP\r\n")
        try:
            while True:
                line = await self._line(reader)
                verb = line[:4].upper()
                if verb in self.delays and verb != b"DATA":
                    await asyncio.sleep(self.delays[verb])
                if verb == b"EHLO":
                    lines = [b"scripted", *(e.encode() for e in self.extensions)]
                    writer.write(b"".join(b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-", x)
                                          for i, x in enumerate(lines)))
                elif verb == b"MAIL":
                    reply = self.refuse_mail or b"250 2.1.0 ok\r\n"
                    if self.hold_mail_reply:
                        # Answer MAIL only once RCPT has arrived: a client that waits
                        # for this reply before sending RCPT waits for ever.
                        rcpt = await self._line(reader)
                        assert rcpt.startswith(b"RCPT TO:")
                        reply += b"503 5.5.1 need MAIL\r\n" if self.refuse_mail else b"250 2.1.5 ok\r\n"
                    writer.write(reply)
                elif verb == b"RCPT":
                    writer.write(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    if self.deaf_after_354:
                        await writer.drain()
                        await asyncio.sleep(30)
                        break
                    data = await reader.readuntil(b"\r\n.\r\n")
                    await asyncio.sleep(self.delays.get(b"DATA", 0))
                    self.received += data
                    body = data[:-3]
                    body = body[1:] if body[:1] == b"." else body
                    self.messages.append(body.replace(b"\r\n.", b"\r\n"))
                    writer.write(b"250 2.0.0 taken\r\n"
                                 + (b"250 2.0.0 and something nobody asked for\r\n"
                                    if self.chatter_after_data else b""))
                elif verb == b"BDAT":
                    size, last = line.split()[1:3]
                    assert last.upper() == b"LAST"
                    self.messages.append(await reader.readexactly(int(size)))
                    writer.write(b"250 2.0.0 taken in one chunk\r\n")
                elif verb in (b"RSET", b"NOOP"):
                    writer.write(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                else:
                    writer.write(b"500 5.5.2 what\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def downstream(url: str, timeout: float = 5, **settings) -> SmtpDownstream:
    return SmtpDownstream(Downstream(url=url, timeout=timeout, **settings), "gw.test", "inbound")


async def send(ds: SmtpDownstream, message: bytes, rcpts=("bob@acme.example",)) -> list[str]:
    tx = ds.begin("a@other.example", [])
    replies = [str(await tx.rcpt(r, [])) for r in rcpts]
    replies.append(str(await tx.data(message)))
    return replies


async def test_mail_and_first_rcpt_go_out_in_one_write_when_pipelining_is_offered():
    mta = ScriptedMTA(["PIPELINING"], hold_mail_reply=True)
    port = await mta.start()
    ds = downstream(f"smtp://127.0.0.1:{port}")
    try:
        replies = await send(ds, b"Subject: x\r\n\r\nhi\r\n", rcpts=("bob@acme.example", "eve@acme.example"))
    finally:
        await ds.close()
        await mta.stop()
    assert replies == ["250 2.1.5 ok", "250 2.1.5 ok", "250 2.0.0 taken"]
    assert b"MAIL FROM:<a@other.example>\r\nRCPT TO:<bob@acme.example>\r\n" in mta.received
    assert mta.messages == [b"Subject: x\r\n\r\nhi\r\n"]


async def test_without_pipelining_each_command_waits_for_its_reply():
    mta = ScriptedMTA(["8BITMIME"])
    port = await mta.start()
    ds = downstream(f"smtp://127.0.0.1:{port}")
    try:
        assert (await send(ds, b"\r\nhi\r\n"))[-1] == "250 2.0.0 taken"
    finally:
        await ds.close()
        await mta.stop()


DOTTY = b"Subject: dots\r\n\r\n.leading\r\n.\r\n..\r\nmid.dle\r\nend.\r\n"


async def test_data_is_dot_stuffed_and_arrives_unchanged():
    mta = ScriptedMTA(["PIPELINING"])
    port = await mta.start()
    ds = downstream(f"smtp://127.0.0.1:{port}")
    try:
        await send(ds, DOTTY)
    finally:
        await ds.close()
        await mta.stop()
    assert b"\r\n..leading\r\n..\r\n...\r\n" in mta.received
    assert mta.messages == [DOTTY]


async def test_bdat_carries_the_message_in_one_chunk_unstuffed_when_chunking_is_offered():
    mta = ScriptedMTA(["PIPELINING", "CHUNKING"])
    port = await mta.start()
    ds = downstream(f"smtp://127.0.0.1:{port}")
    try:
        replies = await send(ds, DOTTY)
    finally:
        await ds.close()
        await mta.stop()
    assert replies[-1] == "250 2.0.0 taken in one chunk"
    assert b"BDAT %d LAST\r\n" % len(DOTTY) in mta.received
    assert b"DATA\r\n" not in mta.received
    assert mta.messages == [DOTTY]


async def test_a_bare_lf_never_reaches_the_downstream_as_an_end_of_data():
    mta = ScriptedMTA(["PIPELINING"])
    port = await mta.start()
    ds = downstream(f"smtp://127.0.0.1:{port}")
    try:
        await send(ds, b"Subject: x\r\n\r\nfirst\n.\nMAIL FROM:<spoof@acme.example>\r\n")
    finally:
        await ds.close()
        await mta.stop()
    # Normalised to CRLF and stuffed: the dot line is data, not the end.
    assert mta.messages == [b"Subject: x\r\n\r\nfirst\r\n.\r\nMAIL FROM:<spoof@acme.example>\r\n"]


async def test_refused_sender_in_a_pipeline_is_every_recipients_answer_and_the_connection_is_reused():
    mta = ScriptedMTA(["PIPELINING"], hold_mail_reply=True, refuse_mail=b"550 5.7.1 not you\r\n")
    port = await mta.start()
    ds = downstream(f"smtp://127.0.0.1:{port}")
    try:
        tx = ds.begin("a@other.example", [])
        assert str(await tx.rcpt("bob@acme.example", [])) == "550 5.7.1 not you"
        assert str(await tx.rcpt("eve@acme.example", [])) == "550 5.7.1 not you"
        await tx.abort()
        mta.refuse_mail = None
        assert (await send(ds, b"\r\nhi\r\n"))[-1] == "250 2.0.0 taken"
    finally:
        await ds.close()
        await mta.stop()
    assert mta.connections == 1
    assert b"RSET\r\n" in mta.received


async def test_a_connection_out_of_step_is_closed_not_reused():
    mta = ScriptedMTA(["PIPELINING"], chatter_after_data=True)
    port = await mta.start()
    ds = downstream(f"smtp://127.0.0.1:{port}")
    try:
        assert (await send(ds, b"\r\none\r\n"))[-1] == "250 2.0.0 taken"
        await asyncio.sleep(0.1)  # the unasked-for line arrives
        assert (await send(ds, b"\r\ntwo\r\n"))[-1] == "250 2.0.0 taken"
    finally:
        await ds.close()
        await mta.stop()
    assert mta.connections == 2
    assert mta.messages == [b"\r\none\r\n", b"\r\ntwo\r\n"]


@pytest.fixture
def tls_mta(ca, cert_files, monkeypatch, tmp_path):
    """aiosmtpd with the test CA's certificate; the CA trusted through SSL_CERT_FILE,
    as ssl.create_default_context() reads it, so the downstream verifies for real."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, cert_files))
    started = []

    def start(implicit: bool) -> tuple[RecordingHandler, int]:
        handler = RecordingHandler()
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False,
                                ready_timeout=10, server_hostname="localhost",
                                **({"ssl_context": context} if implicit else
                                   {"tls_context": context, "require_starttls": True}))
        controller.start()
        started.append(controller)
        return handler, port

    yield start
    for controller in started:
        controller.stop()


@pytest.mark.parametrize("scheme", ["smtp+starttls", "smtps"])
async def test_tls_downstreams_verify_the_certificate_and_carry_the_message(tls_mta, scheme):
    handler, port = tls_mta(implicit=scheme == "smtps")
    ds = downstream(f"{scheme}://localhost:{port}")
    try:
        replies = await send(ds, DOTTY)
        replies += await send(ds, b"\r\nsecond on the same connection\r\n")
        assert await ds.probe() is None
    finally:
        await ds.close()
    assert replies[1] == replies[3] == "250 2.0.0 queued as TEST"
    assert [m.content for m in handler.messages] == [DOTTY, b"\r\nsecond on the same connection\r\n"]


async def test_a_certificate_the_downstream_cannot_prove_is_refused(tls_mta, monkeypatch):
    _, port = tls_mta(implicit=True)
    monkeypatch.delenv("SSL_CERT_FILE")
    ds = downstream(f"smtps://localhost:{port}")
    try:
        reply = await ds.begin("a@other.example", []).rcpt("bob@acme.example", [])
    finally:
        await ds.close()
    assert (reply.code, reply.enhanced) == (451, "4.4.1")


async def test_a_control_character_never_reaches_the_downstream_inside_a_command():
    mta = ScriptedMTA(["PIPELINING"])
    port = await mta.start()
    ds = downstream(f"smtp://127.0.0.1:{port}")
    try:
        for sender, rcpt, options in (("a@other.example\r\nRSET", "bob@acme.example", []),
                                      ("a@other.example", "bob@acme.example\x00", []),
                                      ("a@other.example", "bob@acme.example", ["BODY=8BITMIME\rX"])):
            tx = ds.begin(sender, [])
            with pytest.raises(ValueError, match="control character"):
                await tx.rcpt(rcpt, options)
    finally:
        await ds.close()
        await mta.stop()
    assert b"RSET" not in mta.received and b"\x00" not in mta.received


# --- the step's deadline (DownstreamConnection.watch_until) ----------------------------

async def test_a_downstream_silent_past_the_deadline_is_a_451_and_its_connection_is_closed():
    mta = ScriptedMTA(["PIPELINING"], delays={b"RCPT": 1.5})
    port = await mta.start()
    ds = downstream(f"smtp://127.0.0.1:{port}", timeout=0.5)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        tx = ds.begin("a@other.example", [])
        assert str(await tx.rcpt("bob@acme.example", [])) == \
            "451 4.4.2 Downstream mail server timed out, try again later"
        assert 0.45 <= loop.time() - started < 1.4
        mta.delays = {}
        assert (await send(ds, b"\r\nagain\r\n"))[-1] == "250 2.0.0 taken"
    finally:
        await ds.close()
        await mta.stop()
    # The connection whose state the timeout left unknown was not reused.
    assert mta.connections == 2


async def test_the_deadline_is_each_steps_not_the_connections():
    # Each reply takes 0.4 s, the deadline is 1 s: four steps (1.6 s) on one
    # connection, then another message after the connection sat idle past its
    # first deadline.  A deadline that did not move with each step fails them.
    mta = ScriptedMTA(["PIPELINING"], delays={b"RCPT": 0.4, b"DATA": 0.4})
    port = await mta.start()
    ds = downstream(f"smtp://127.0.0.1:{port}", timeout=1)
    try:
        replies = await send(ds, b"\r\none\r\n",
                             rcpts=("bob@acme.example", "eve@acme.example", "ann@acme.example"))
        assert replies == ["250 2.1.5 ok"] * 3 + ["250 2.0.0 taken"]
        await asyncio.sleep(1.2)
        assert (await send(ds, b"\r\ntwo\r\n"))[-1] == "250 2.0.0 taken"
    finally:
        await ds.close()
        await mta.stop()
    assert mta.connections == 1
    assert mta.messages == [b"\r\none\r\n", b"\r\ntwo\r\n"]


async def test_a_downstream_that_stops_reading_mid_message_is_a_timeout_not_an_outage():
    # 32 MiB, streamed in slices paced by flow control: the writer waits for room
    # that never comes, and the deadline ends the wait.
    mta = ScriptedMTA(["PIPELINING"], deaf_after_354=True)
    port = await mta.start()
    ds = downstream(f"smtp://127.0.0.1:{port}", timeout=1)
    try:
        loop = asyncio.get_running_loop()
        tx = ds.begin("a@other.example", [])
        assert (await tx.rcpt("bob@acme.example", [])).code == 250
        started = loop.time()
        reply = await tx.data(b"Subject: big\r\n\r\n" + (b"y" * 1022 + b"\r\n") * 32768)
        assert str(reply) == "451 4.4.2 Downstream mail server timed out, try again later"
        assert 0.95 <= loop.time() - started < 3
    finally:
        await ds.close()
        await mta.stop()
