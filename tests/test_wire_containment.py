"""Issue 18, a choice at every limit: over a rate limit, a suspended account's mail
and inbound policy each answered defer (4xx), hold (250, kept for review, nothing
leaves) or reject (5xx), through the real listeners; held mail is charged when
released, not when held."""

from __future__ import annotations

import smtplib
import sys
import time

import pytest

from gateway.admin import actions
from gateway.cli import build_parser
from tests.conftest import customer_policies
from tests.support import submission
from tests.support.gateway import GatewayUnderTest
from tests.support.reply_ids import without_id
from tests.support.submission import Clock, codes, logged_in, send

pytest_plugins = ("tests.support.authdns",)
make_gateway = submission.make_gateway

ALICE = "alice@acme.example"


@pytest.fixture
def store_config(tmp_path):
    return {"backend": "sqlite", "path": str(tmp_path / "state.db")}


def cli(gw, *args):
    parsed = build_parser().parse_args(["accounts", "-c", str(gw.config_path), *args])
    return parsed.func(parsed, sys.stdout)


def held(gw):
    return gw.run(gw.runtime.held.list())


# --- over a rate limit ------------------------------------------------------------------
@pytest.mark.parametrize(("action", "code", "enhanced"), [
    ("defer", 451, b"4.7.1"), ("reject", 550, b"5.7.1"),
])
def test_over_a_rate_limit_defer_and_reject_answer_at_rcpt(make_gateway, client_tls, downstream,
                                                           action, code, enhanced):
    gw = make_gateway(alice={"messages_per_hour": 1, "at_limit": action})
    with logged_in(gw, client_tls) as c:
        assert send(c, ["x@elsewhere.example"])["data"][0] == 250
        over = send(c, ["y@elsewhere.example"])
    assert codes(over) == [code] and over["rcpt"][0][1].startswith(enhanced)
    assert b"at most 1 messages per hour" in over["rcpt"][0][1]
    assert (b"try again" in over["rcpt"][0][1]) is (action == "defer")
    assert [m.rcpt_tos for m in downstream.messages] == [["x@elsewhere.example"]]
    assert held(gw) == []


def test_over_a_rate_limit_hold_accepts_keeps_and_charges_only_on_release(
        make_gateway, client_tls, downstream):
    clock = Clock()
    gw = make_gateway(alice={"messages_per_hour": 1, "at_limit": "hold"}, clock=clock)
    with logged_in(gw, client_tls) as c:
        assert send(c, ["x@elsewhere.example"])["data"][0] == 250
        over = send(c, ["y@elsewhere.example", "z@elsewhere.example"])
    assert codes(over) == [250, 250]
    assert over["data"][0] == 250 and b"held for review" in over["data"][1]
    assert len(downstream.messages) == 1  # nothing left
    [h] = held(gw)
    assert (h.reason, h.login, h.recipients) == ("quota", ALICE, ("y@elsewhere.example",
                                                                 "z@elsewhere.example"))
    assert h.evidence["limit"] == "messages_per_hour"
    assert h.evidence["would_answer"].startswith("451 4.7.1 Sending limit reached")
    metering = gw.runtime.metering
    acct = actions.account_for(gw.runtime.directory, metering.settings, ALICE)

    def used(name):
        status = gw.run(metering.status(acct, clock()))
        return next(u.used for u in status.usage if u.name == name)

    # Held: not charged (the one message of this hour is the one delivered).
    assert used("messages_per_hour") == 1 and used("recipients_per_hour") == 1
    result = gw.run(actions.release_held(gw.runtime.held, h.id, {"outbound": gw.runtime.outbound},
                                         metering=metering, directory=gw.runtime.directory,
                                         now=clock()))
    assert result.delivered == ("y@elsewhere.example", "z@elsewhere.example")
    assert downstream.messages[1].rcpt_tos == ["y@elsewhere.example", "z@elsewhere.example"]
    # Released: charged now, past the limit if need be (the desk decided).
    assert used("messages_per_hour") == 2 and used("recipients_per_hour") == 3


# --- a suspended account --------------------------------------------------------------------
@pytest.mark.parametrize(("action", "code", "enhanced"), [
    ("defer", 451, b"4.7.1"), ("reject", 550, b"5.7.1"),
])
def test_a_suspended_accounts_mail_is_deferred_or_rejected_at_rcpt(make_gateway, client_tls,
                                                                    downstream, action, code,
                                                                    enhanced):
    gw = make_gateway(alice={"when_suspended": action})
    assert cli(gw, "suspend", ALICE, "--reason", "phishing reported") == 0
    with logged_in(gw, client_tls) as c:
        # MAIL asks no store (the suspension comes with the first RCPT's round trip),
        # and every recipient of the transaction hears the same.
        result = send(c, ["x@elsewhere.example", "y@elsewhere.example"])
    assert result["mail"][0] == 250 and codes(result) == [code, code] and result["data"] is None
    for _, text in result["rcpt"]:
        assert without_id(text) == enhanced + (
            b" This account is suspended from sending mail; please contact your provider's support")
    assert downstream.messages == [] and held(gw) == []


def test_a_suspended_accounts_mail_is_held_when_its_customer_says_hold(make_gateway, client_tls,
                                                                       downstream):
    # The customer's default, inherited by alice.
    gw = make_gateway(acme={"when_suspended": "hold"})
    assert cli(gw, "suspend", ALICE, "--reason", "phishing reported") == 0
    with logged_in(gw, client_tls) as c:
        result = send(c, ["x@elsewhere.example", "y@elsewhere.example"])
    assert result["mail"][0] == 250 and codes(result) == [250, 250]
    assert result["data"][0] == 250 and b"held for review" in result["data"][1]
    assert downstream.messages == []
    [h] = held(gw)
    assert (h.reason, h.login) == ("suspended", ALICE)
    assert h.evidence["would_answer"].startswith("550 5.7.1 This account is suspended")


def test_the_gateway_default_is_overridden_per_account(make_gateway, client_tls, downstream):
    gw = make_gateway(alice={"when_suspended": "defer"}, extra={"quotas": {"when_suspended": "hold"}})
    for login in (ALICE, "bob@acme.example"):
        assert cli(gw, "suspend", login) == 0
    with logged_in(gw, client_tls) as a, logged_in(gw, client_tls, "bob@acme.example") as b:
        assert codes(send(a, ["x@elsewhere.example"])) == [451]
        assert send(b, ["x@elsewhere.example"], sender="bob@acme.example")["data"][0] == 250
    assert [h.login for h in held(gw)] == ["bob@acme.example"]


# --- inbound policy -----------------------------------------------------------------------------
ZONES = {"spoof.test": """
        @            TXT "v=spf1 ip4:192.0.2.1 -all"
        _dmarc       TXT "v=DMARC1; p=reject"
    """}


@pytest.fixture
def mx_with(tmp_path, authdns_factory, downstream, cert_files, password_hash):
    dns = authdns_factory(ZONES)
    started = []

    def start(action: str) -> GatewayUnderTest:
        policies = customer_policies(password_hash)
        policies["acme"]["inbound"] = {"default": {"dmarc_reject": action}}
        gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                              policies=policies, cert=cert_files,
                              extra={"dns": {"nameservers": ["127.0.0.1"], "port": dns.port,
                                             "timeout": 2},
                                     "notify": {"abuse_address": "abuse@isp.example",
                                                "sender": "postmaster@isp.example"}})
        started.append(gw.start())
        return gw

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()


def mx_send(gw, rcpt, message):
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=20) as c:
        c.ehlo("client.example")
        c.mail("ceo@spoof.test")
        assert c.rcpt(rcpt)[0] == 250
        return c.data(message)


SPOOF = (b"From: ceo@spoof.test\r\nX-Portcullis-Quarantine: forged by the sender\r\n"
         b"Subject: wire money\r\n\r\nnow\r\n")


@pytest.mark.parametrize(("action", "code", "enhanced"), [
    ("tempfail", 451, b"4.7"), ("reject", 550, b"5.7.26"),
])
def test_inbound_policy_defer_and_reject(mx_with, downstream, action, code, enhanced):
    gw = mx_with(action)
    reply = mx_send(gw, "bob@acme.example", SPOOF)
    assert reply[0] == code and reply[1].startswith(enhanced)
    assert downstream.messages == [] and held(gw) == []


def test_inbound_policy_hold_keeps_the_stamped_message_for_review(mx_with, downstream):
    gw = mx_with("hold")
    code, text = mx_send(gw, "bob@acme.example", SPOOF)
    assert code == 250 and b"held for review" in text
    assert all(m.rcpt_tos != ["bob@acme.example"] for m in downstream.messages)  # nothing left
    [h] = held(gw)
    assert (h.reason, h.direction, h.recipients) == ("inbound", "inbound", ("bob@acme.example",))
    assert h.evidence["header_from"] == "spoof.test"
    kept = gw.run(gw.runtime.held.message(h.id))
    head = kept.split(b"\r\n\r\n", 1)[0]
    # Stamped and cleaned like any other: our A-R and our flag, the sender's flag gone.
    assert b"Authentication-Results: mx.gateway.test;" in head and b"dmarc=fail" in head
    assert b"forged by the sender" not in head
    assert b"X-Portcullis-Quarantine: DMARC policy of spoof.test (reject)" in head
    # No account holder inbound: the abuse desk is told, with the held id.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not downstream.messages:
        time.sleep(0.05)
    [notice] = downstream.messages
    assert notice.rcpt_tos == ["abuse@isp.example"] and notice.mail_from == "postmaster@isp.example"
    assert f"portcullis held release {h.id}".encode() in notice.content
    assert b"Customer:  acme" in notice.content


def test_mail_for_abuse_is_never_held_by_inbound_policy(mx_with, downstream):
    gw = mx_with("hold")
    code, _ = mx_send(gw, "abuse@acme.example", SPOOF)
    assert code == 250
    assert held(gw) == [] and len(downstream.messages) == 1


# --- each decision on held mail, on record with who made it --------------------------------
def test_release_delete_and_expiry_are_journaled_with_who(make_gateway, client_tls, downstream):
    clock = Clock()
    gw = make_gateway(alice={"messages_per_hour": 1, "at_limit": "hold"}, clock=clock)
    with logged_in(gw, client_tls) as c:
        assert send(c, ["x@elsewhere.example"])["data"][0] == 250
        for rcpt in ("a@elsewhere.example", "b@elsewhere.example", "c@elsewhere.example"):
            assert b"held for review" in send(c, [rcpt])["data"][1]
    rt = gw.runtime
    first, second, third = sorted(held(gw), key=lambda h: h.recipients)
    gw.run(actions.release_held(rt.held, first.id, {"outbound": rt.outbound}, metering=rt.metering,
                                directory=rt.directory, now=clock(), by="desk:dana"))
    gw.run(actions.delete_held(rt.held, second.id, by="desk:erik", metering=rt.metering, now=clock()))
    clock.advance(rt.config.hold.max_age + 1)
    decisions = gw.run(actions.expire_held(rt.held, rt.config.hold, {"outbound": rt.outbound},
                                           clock(), rt.metering, rt.directory))
    assert [d.id for d in decisions] == [third.id]
    # Released at max age: charged then, like any release (the week before has left the window).
    acct = actions.account_for(rt.directory, rt.metering.settings, ALICE)
    status = gw.run(rt.metering.status(acct, clock()))
    assert next(u.used for u in status.usage if u.name == "messages_per_hour") == 1
    found = {}
    for h in (first, second, third):
        [entry] = [e for e in gw.run(rt.metering.store.journal_find(h.txid)) if e.kind == "held"]
        found[h.id] = (entry.record["decision"], entry.record["by"])
    assert found == {first.id: ("released", "desk:dana"), second.id: ("deleted", "desk:erik"),
                     third.id: ("expired (released)", "policy hold.max_age")}
    events = [e.kind for e in gw.run(rt.metering.store.events(ALICE))]
    assert {"held released", "held deleted"} <= set(events)
