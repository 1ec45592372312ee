"""Notices to the account holder and the abuse desk: once per interval, through a real
downstream (a recording MTA), with the interval kept in the real shared store (SQLite
and Redis), and the webhook received by a real HTTP server."""

from __future__ import annotations

import asyncio
import email
import json
from email.policy import default as default_policy

import pytest
from aiohttp import web

from gateway.config.content import NotifySettings
from gateway.config.model import Downstream as DownstreamSettings
from gateway.downstream.smtp import SmtpDownstream
from gateway.ops.notify import Incident, Notice, Notifier, compose_notices, webhook_payload
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore
from tests.support import redis_server as _redis
from tests.support import stores
from tests.support.ports import free_port
from tests.support.recorder import RecordingMTA

redis_server = _redis.redis_server
any_store = stores.any_store

T0 = 1_800_000_000.0
SETTINGS = NotifySettings(abuse_address="abuse@isp.example", interval=3600,
                          sender="postmaster@isp.example")


def incident(kind="held", login="alice@acme.example", at=T0, **extra) -> Incident:
    return Incident(kind=kind, login=login, at=at,
                    account_address=login if "@" in login else None, customer="acme",
                    reason="our content filter classified it as spam",
                    reference="20270115080000-0123456789",
                    evidence={"score": 16.0, "symbols": ["GTUBE"]}, **extra)


@pytest.fixture
def mta():
    server = RecordingMTA().start()
    try:
        yield server
    finally:
        server.stop()


class Webhook:
    """A real HTTP server on loopback that keeps every JSON body it is sent."""

    def __init__(self) -> None:
        self.received: list[dict] = []

    async def __aenter__(self) -> str:
        async def receive(request: web.Request) -> web.Response:
            self.received.append(await request.json())
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", receive)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}/hook"

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


def downstream(mta: RecordingMTA) -> SmtpDownstream:
    return SmtpDownstream(DownstreamSettings(url=mta.url, timeout=5), "gw.isp.example", "outbound")


def by_recipient(mta: RecordingMTA) -> dict[str, list[email.message.EmailMessage]]:
    out: dict[str, list] = {}
    for m in mta.messages:
        for rcpt in m.rcpt_tos:
            out.setdefault(rcpt, []).append(email.message_from_bytes(m.content, policy=default_policy))
    return out


# --- once per interval ------------------------------------------------------------------


def test_a_burst_of_100_incidents_makes_one_notice_each_and_one_webhook(any_store, mta):
    hook = Webhook()

    async def body(store):
        async with hook as url:
            settings = SETTINGS.model_copy(update={"webhook_url": url})
            notifier = Notifier(settings, downstream(mta), store, "gw.isp.example")
            for i in range(100):
                notifier.submit(incident(at=T0 + i), now=T0 + i)
            await notifier.aclose()
            await notifier.downstream.close()

    any_store.run(body)
    got = by_recipient(mta)
    assert sorted(got) == ["abuse@isp.example", "alice@acme.example"]
    assert [len(v) for v in got.values()] == [1, 1]
    assert len(hook.received) == 1
    assert hook.received[0]["event"] == "held" and hook.received[0]["login"] == "alice@acme.example"


def test_the_interval_holds_across_processes_sharing_the_store(tmp_path, mta):
    # Two notifiers with their own store connections: two worker processes, one SQLite file.
    async def main():
        stores_ = [SQLiteStore(tmp_path / "state.db"), SQLiteStore(tmp_path / "state.db")]
        notifiers = [Notifier(SETTINGS, downstream(mta), s, "gw.isp.example") for s in stores_]
        outcomes = await asyncio.gather(*(notifiers[i % 2].notify(incident(at=T0), T0 + i)
                                          for i in range(40)))
        for n in notifiers:
            await n.aclose()
            await n.downstream.close()
            await n.store.close()
        return outcomes

    outcomes = asyncio.run(main())
    assert sum(o.sent for o in outcomes) == 1
    assert len(mta.messages) == 2


def test_after_the_interval_and_for_another_kind_a_new_notice_goes_out(tmp_path, mta):
    async def main():
        store = SQLiteStore(tmp_path / "state.db")
        n = Notifier(SETTINGS, downstream(mta), store, "gw.isp.example")
        results = [
            await n.notify(incident("held"), T0),
            await n.notify(incident("held"), T0 + 3599),   # within the hour: suppressed
            await n.notify(incident("suspended"), T0 + 10),  # another kind: its own notice
            await n.notify(incident("held"), T0 + 3601),   # the hour is over
            await n.notify(incident("held", login="bob@acme.example"), T0 + 20),  # another account
        ]
        await n.downstream.close()
        await store.close()
        return [r.sent for r in results]

    assert asyncio.run(main()) == [True, False, True, True, True]
    got = by_recipient(mta)
    assert len(got["alice@acme.example"]) == 3 and len(got["bob@acme.example"]) == 1
    assert len(got["abuse@isp.example"]) == 4


def test_with_the_store_down_each_process_still_limits_itself(mta, caplog):
    async def main():
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="t:", timeout=0.5)
        n = Notifier(SETTINGS, downstream(mta), store, "gw.isp.example")
        outcomes = [await n.notify(incident(at=T0), T0 + i) for i in range(10)]
        await n.downstream.close()
        await store.close()
        return outcomes

    outcomes = asyncio.run(main())
    assert [o.sent for o in outcomes] == [True] + [False] * 9
    assert len(mta.messages) == 2
    assert any("store unavailable" in r.message for r in caplog.records)


# --- what the notices say -------------------------------------------------------------------


def test_account_notice_is_plain_language_with_what_to_do():
    [account, abuse] = compose_notices(incident("held"), SETTINGS, "gw.isp.example", T0)
    assert (account.audience, account.recipients, account.sender) == (
        "account", ("alice@acme.example",), "postmaster@isp.example")
    msg = email.message_from_bytes(account.message, policy=default_policy)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["To"] == "alice@acme.example" and msg["From"] == "postmaster@isp.example"
    text = " ".join(msg.get_content().split())
    assert "held for review" in msg["Subject"]
    assert "Please change your password now" in text and "contact our support" in text
    assert "20270115080000-0123456789" in text
    assert "GTUBE" not in text  # the customer gets sentences, not rule names
    assert b"\r\n" in account.message and b"\n" not in account.message.replace(b"\r\n", b"")


def test_abuse_notice_carries_evidence_and_the_commands_to_act():
    notices = compose_notices(incident("held"), SETTINGS, "gw.isp.example", T0)
    msg = email.message_from_bytes(notices[1].message, policy=default_policy)
    text = msg.get_content()
    assert msg["Subject"] == "[portcullis] held: alice@acme.example"
    assert "GTUBE" in text and "Customer:  acme" in text
    assert "portcullis held release 20270115080000-0123456789" in text
    suspended = compose_notices(incident("suspended"), SETTINGS, "gw.isp.example", T0)[1]
    assert b"portcullis accounts unsuspend alice@acme.example" in suspended.message


def test_login_that_is_not_an_address_notifies_only_the_abuse_desk():
    notices = compose_notices(incident(login="alice"), SETTINGS, "gw.isp.example", T0)
    assert [n.audience for n in notices] == ["abuse"]


def test_no_abuse_address_and_no_account_notice_means_nothing_to_send():
    quiet = NotifySettings(notify_account=False)
    assert compose_notices(incident(), quiet, "gw.isp.example", T0) == []
    assert quiet.sender is None
    [n] = compose_notices(incident(), NotifySettings(), "gw.isp.example", T0)
    assert n.sender == "postmaster@gw.isp.example"


def test_webhook_payload_is_json_ready():
    payload = webhook_payload(incident("rejected"), "gw.isp.example")
    assert json.loads(json.dumps(payload))["evidence"]["symbols"] == ["GTUBE"]
    assert payload["at"].startswith("2027-01-15T")


# --- signing and delivery ----------------------------------------------------------------


def test_notices_are_signed_before_they_are_sent(tmp_path, mta):
    async def sign(notice: Notice) -> Notice:
        return Notice(notice.audience, notice.sender, notice.recipients,
                      b"DKIM-Signature: v=1; d=isp.example; s=test; b=x\r\n" + notice.message)

    async def main():
        store = SQLiteStore(tmp_path / "state.db")
        n = Notifier(SETTINGS, downstream(mta), store, "gw.isp.example", sign=sign)
        outcome = await n.notify(incident("rejected"), T0)
        await n.downstream.close()
        await store.close()
        return outcome

    outcome = asyncio.run(main())
    assert outcome.notices == ("account", "abuse")
    assert all(m.content.startswith(b"DKIM-Signature: ") for m in mta.messages)
    assert all(m.mail_from == "postmaster@isp.example" for m in mta.messages)


def test_a_refusing_downstream_or_webhook_is_logged_not_raised(tmp_path, mta, caplog):
    mta.behaviour.refuse_rcpt = {"abuse@isp.example": "550 5.1.1 no such user"}
    dead_hook = f"http://127.0.0.1:{free_port()}/hook"

    async def main():
        store = SQLiteStore(tmp_path / "state.db")
        settings = SETTINGS.model_copy(update={"webhook_url": dead_hook})
        n = Notifier(settings, downstream(mta), store, "gw.isp.example")
        outcome = await n.notify(incident("suspended"), T0)
        await n.aclose()
        await n.downstream.close()
        await store.close()
        return outcome

    outcome = asyncio.run(main())
    assert outcome.sent and outcome.notices == ("account",) and outcome.webhook is None
    assert any("abuse@isp.example" in r.message and "refused" in r.message for r in caplog.records)
    assert any("webhook" in r.message for r in caplog.records)


def test_events_not_listed_are_not_notified(tmp_path, mta):
    async def main():
        store = SQLiteStore(tmp_path / "state.db")
        settings = SETTINGS.model_copy(update={"events": ("suspended",)})
        n = Notifier(settings, downstream(mta), store, "gw.isp.example")
        n.submit(incident("held"), T0)
        outcome = await n.notify(incident("rejected"), T0)
        await n.aclose()
        await n.downstream.close()
        await store.close()
        return outcome

    assert not asyncio.run(main()).sent
    assert mta.messages == []
