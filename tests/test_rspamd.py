"""The rspamd client against a real rspamd (Debian's package, private, offline), and
against servers that misbehave on purpose: refused, silent, 5xx, not JSON.

Each scan's answer goes through the real decision (gateway/rules/content.py), so these
tests prove what the customer would hear.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from aiohttp import web

from gateway import replies
from gateway.checks.rspamd import RspamdClient, ScannerUnavailable
from gateway.config.content import ContentRules, ScannerSettings, effective_rules
from gateway.rules.content import SPAM_HEADERS, decide_content
from tests.support import rspamd_server as _rspamd
from tests.support.ports import free_port
from tests.support.rspamd_server import GTUBE, RspamdServer

rspamd = _rspamd.rspamd  # the module-scoped fixture

ORDINARY = (
    b"From: Alice <alice@acme.example>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Lunch tomorrow\r\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <lunch-1@acme.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hi Bob,\r\n\r\nshall we meet at noon at the usual place?\r\n\r\nAlice\r\n"
)
SPAM = ORDINARY.replace(b"shall we meet", GTUBE + b"\r\nshall we meet")
DEFAULTS = ScannerSettings()


def scan(url: str, message: bytes, timeout: float = 10.0, **facts):
    async def main():
        client = RspamdClient(url, timeout, "gw.isp.example")
        try:
            return await client.scan(message, **{
                "sender": "alice@acme.example", "recipients": ["bob@example.org"],
                "ip": "192.0.2.10", "helo": "laptop.acme.example",
                "user": "alice@acme.example", "queue_id": "tx-test", **facts})
        finally:
            await client.close()

    return asyncio.run(main())


def scan_error(url: str, timeout: float = 10.0) -> tuple[ScannerUnavailable, float]:
    started = time.monotonic()
    with pytest.raises(ScannerUnavailable) as info:
        scan(url, ORDINARY, timeout=timeout)
    return info.value, time.monotonic() - started


# --- a real rspamd -------------------------------------------------------------


def test_gtube_is_rejected_with_a_sentence_not_symbols(rspamd):
    result = scan(rspamd.url, SPAM)
    assert result.action == "reject"
    assert "GTUBE" in result.symbols
    decision = decide_content("outbound", DEFAULTS.outbound, result, reference="tx-test")
    assert decision.action == "reject"
    assert not decision.verdict.accept
    reply = decision.verdict.reply
    assert (reply.code, reply.enhanced) == (550, "5.7.1")
    assert "GTUBE" not in str(reply) and "tx-test" in str(reply)
    assert decision.incident == "rejected"


def test_gtube_is_held_when_the_customer_says_hold(rspamd):
    rules = effective_rules(DEFAULTS.outbound, ContentRules(actions={"reject": "hold"}))
    decision = decide_content("outbound", rules, scan(rspamd.url, SPAM), reference="tx-test")
    assert decision.action == "hold" and decision.hold
    assert decision.verdict.accept and decision.verdict.reply.code == 250
    assert decision.headers == ()
    assert decision.facts["rspamd_action"] == "reject"
    assert "GTUBE" in decision.facts["symbols"]


def test_ordinary_message_passes_with_no_headers_added(rspamd):
    result = scan(rspamd.url, ORDINARY)
    assert result.action == "no action"
    assert result.score < result.required_score
    assert result.message_id == "lunch-1@acme.example"
    decision = decide_content("outbound", DEFAULTS.outbound, result)
    assert decision.action == "pass" and decision.verdict.accept
    assert decision.headers == () and not decision.hold and decision.incident is None


def test_tagging_adds_only_our_spam_headers(rspamd):
    rules = ContentRules(by="score", score={"tag": -1000.0})
    decision = decide_content("outbound", rules, scan(rspamd.url, ORDINARY))
    assert decision.action == "tag"
    assert tuple(name for name, _ in decision.headers) == SPAM_HEADERS
    assert all("\r" not in v and "\n" not in v for _, v in decision.headers)


def test_session_facts_reach_rspamd(rspamd):
    scan(rspamd.url, ORDINARY, queue_id="tx-facts-1", user="carol@globex.example",
         sender="carol@globex.example", recipients=["x@example.org", "y@example.net"])
    deadline = time.monotonic() + 5
    line = ""
    while time.monotonic() < deadline and "user:" not in line:
        line = next((e for e in rspamd.log.splitlines() if "qid: <tx-facts-1>" in e), "")
        time.sleep(0.05)
    # rspamd's own log line for the task: our queue id, the login, the client IP, the envelope.
    assert "user: carol@globex.example" in line
    assert "ip: 192.0.2.10" in line
    assert "from: <carol@globex.example>" in line
    assert "x@example.org" in line and "y@example.net" in line


def test_null_sender_and_a_crlf_in_helo_are_sent_safely(rspamd):
    result = scan(rspamd.url, ORDINARY, sender="<>", helo="evil\r\nRcpt: injected@example.com")
    assert result.action in ("no action", "add header", "greylist")


def test_utf8_envelope_addresses_reach_rspamd(rspamd):
    # SMTPUTF8 (RFC 6531) addresses travel as UTF-8 header values.
    result = scan(rspamd.url, ORDINARY, sender="jörg@müller.example", recipients=["zoë@exämple.org"])
    assert result.action != "reject"


def test_many_scans_run_concurrently(rspamd):
    async def main():
        client = RspamdClient(rspamd.url, 20.0, "gw.isp.example", max_connections=8)
        try:
            return await asyncio.gather(*(
                client.scan(SPAM if i % 2 else ORDINARY, sender="alice@acme.example",
                            recipients=["bob@example.org"], ip="192.0.2.10")
                for i in range(20)))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert [r.action for r in results[1::2]] == ["reject"] * 10
    assert all(r.action != "reject" for r in results[0::2])


def test_stopped_rspamd_gives_the_configured_fallback():
    server = RspamdServer().start()
    group = server.proc.pid
    try:
        assert scan(server.url, ORDINARY).action == "no action"
    finally:
        server.stop()
    with pytest.raises(ProcessLookupError):  # the main process and every worker are gone
        os.killpg(group, 0)
    error, _ = scan_error(server.url)
    assert error.kind == "refused"
    default = decide_content("outbound", DEFAULTS.outbound, None, scanner_error=error.kind)
    assert default.action == "tempfail"
    assert (default.verdict.reply.code, default.verdict.reply.enhanced) == (451, "4.7.1")
    assert default.verdict.reply == replies.SCANNER_UNAVAILABLE
    assert default.facts["cause"] == "unreachable" and default.facts["scanner_error"] == "refused"
    open_ = decide_content("inbound", ContentRules(unreachable="pass"), None, scanner_error=error.kind)
    assert open_.action == "pass" and open_.verdict.accept


# --- servers that misbehave ------------------------------------------------------


def test_silent_rspamd_hits_the_scan_timeout_not_the_clients():
    async def main():
        async def never_answer(reader, writer):
            await asyncio.sleep(3600)

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RspamdClient(f"http://127.0.0.1:{port}", 0.5, "gw")
        started = time.monotonic()
        try:
            with pytest.raises(ScannerUnavailable) as info:
                await client.scan(ORDINARY, sender="a@b.example", recipients=["c@d.example"])
        finally:
            await client.close()
            server.close()
        return info.value, time.monotonic() - started

    error, elapsed = asyncio.run(main())
    assert error.kind == "timeout"
    assert 0.4 <= elapsed < 3.0


def _http_server(handler):
    """A real aiohttp server on loopback, answering every POST with ``handler``."""

    class Server:
        async def __aenter__(self):
            app = web.Application()
            app.router.add_post("/checkv2", handler)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            self.port = free_port()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
            return f"http://127.0.0.1:{self.port}"

        async def __aexit__(self, *exc):
            await self.runner.cleanup()

    return Server()


@pytest.mark.parametrize("status, body, kind", [
    (503, b"overloaded", "http_status"),
    (500, b"", "http_status"),
    (400, b"bad request", "http_status"),
    (200, b"<html>not json</html>", "bad_response"),
    (200, b'{"score": 1.0}', "bad_response"),
    (200, b'{"score": 1, "required_score": 15, "action": "explode"}', "bad_response"),
])
def test_unusable_answers_are_scanner_unavailable(status, body, kind):
    async def answer(request):
        await request.read()
        return web.Response(status=status, body=body)

    async def main():
        async with _http_server(answer) as url:
            client = RspamdClient(url, 5.0, "gw")
            try:
                with pytest.raises(ScannerUnavailable) as info:
                    await client.scan(ORDINARY, sender="a@b.example", recipients=["c@d.example"])
            finally:
                await client.close()
            return info.value

    assert asyncio.run(main()).kind == kind


def test_every_recipient_is_its_own_rcpt_header():
    seen = {}

    async def answer(request):
        seen["rcpt"] = request.headers.getall("Rcpt")
        seen["from"] = request.headers["From"]
        seen["body"] = await request.read()
        return web.json_response({"score": 0.5, "required_score": 15.0, "action": "no action",
                                  "symbols": {}, "message-id": "undef"})

    async def main():
        async with _http_server(answer) as url:
            client = RspamdClient(url, 5.0, "gw")
            try:
                return await client.scan(ORDINARY, sender="a@b.example",
                                         recipients=["c@d.example", "e@f.example", "g@h.example"])
            finally:
                await client.close()

    result = asyncio.run(main())
    assert seen["rcpt"] == ["c@d.example", "e@f.example", "g@h.example"]
    assert seen["from"] == "a@b.example"
    assert seen["body"] == ORDINARY
    assert result.message_id is None and result.action == "no action"


# --- the pieces together, as the handler will call them ----------------------------


def test_gtube_held_notified_and_released_byte_for_byte(rspamd, tmp_path):
    from gateway.config.content import NotifySettings
    from gateway.config.model import Downstream as DownstreamSettings
    from gateway.downstream.smtp import SmtpDownstream
    from gateway.ops.notify import Incident, Notifier
    from gateway.rules.content import skip_scan
    from gateway.store.held import HeldStore
    from gateway.store.sqlite import SQLiteStore
    from tests.support.recorder import RecordingMTA

    mta = RecordingMTA().start()
    rules = effective_rules(DEFAULTS.outbound, ContentRules(actions={"reject": "hold"}))

    async def main():
        client = RspamdClient(rspamd.url, 5.0, "gw.isp.example")
        held_store, store = HeldStore(tmp_path / "held"), SQLiteStore(tmp_path / "state.db")
        ds = SmtpDownstream(DownstreamSettings(url=mta.url, timeout=5), "gw.isp.example", "outbound")
        notifier = Notifier(NotifySettings(abuse_address="abuse@isp.example"), ds, store,
                            "gw.isp.example")
        try:
            assert skip_scan("outbound", rules, len(SPAM), DEFAULTS.max_message_size) is None
            try:
                result = await client.scan(SPAM, sender="alice@acme.example",
                                           recipients=["bob@example.org"], ip="192.0.2.10",
                                           user="alice@acme.example", queue_id="tx-9")
                decision = decide_content("outbound", rules, result, reference="tx-9")
            except ScannerUnavailable as exc:
                decision = decide_content("outbound", rules, None, scanner_error=exc.kind)
            assert decision.hold
            held = await held_store.hold(
                message=SPAM, sender="alice@acme.example", recipients=["bob@example.org"],
                direction="outbound", reason="content", reply=str(decision.verdict.reply),
                evidence=decision.facts, login="alice@acme.example", txid="tx-9", now=time.time())
            notifier.submit(Incident(decision.incident, "alice@acme.example", time.time(),
                                     account_address="alice@acme.example", customer="acme",
                                     reference=held.id, evidence=decision.facts))
            await notifier.aclose()
            notices = [m.rcpt_tos for m in mta.messages]
            assert sorted(notices) == [["abuse@isp.example"], ["alice@acme.example"]]
            assert all(m.content != SPAM for m in mta.messages)  # the spam itself is not out
            released = await held_store.release(held.id, ds)
            return released
        finally:
            await client.close()
            await ds.close()
            await store.close()

    try:
        released = asyncio.run(main())
        assert released.removed
        assert mta.messages[-1].content == SPAM and mta.messages[-1].rcpt_tos == ["bob@example.org"]
        assert b"GTUBE" in mta.messages[0].content or b"GTUBE" in mta.messages[1].content  # abuse desk
    finally:
        mta.stop()
