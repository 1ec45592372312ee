"""Quotas through the real submission listener, on both stores (SQLite and a real
redis-server): each limit hit exactly at its value, windows sliding, what the
downstream refused costs nothing, suspension, shadow mode, store down → 451 4.3.0."""

from __future__ import annotations

import sys
import time

from gateway.cli import build_parser
from tests.conftest import customer_policies
from tests.support import redis_server as _redis
from tests.support import submission
from tests.support.gateway import GatewayUnderTest
from tests.support.redis_server import RedisServer
from tests.support.reply_ids import without_id
from tests.support.submission import Clock, auth_plain, codes, connect, logged_in, message, send

redis_server = _redis.redis_server
store_config = submission.store_config
make_gateway = submission.make_gateway

ALICE = "alice@acme.example"


def cli(gw, *args):
    # run_accounts's `out` defaults to the sys.stdout of its import time, which pytest's
    # capture has closed by now: hand it the current one.
    parsed = build_parser().parse_args(["accounts", "-c", str(gw.config_path), *args])
    return parsed.func(parsed, sys.stdout)


# --- rate limits at RCPT ------------------------------------------------------------
def test_messages_per_hour_refuses_the_n_plus_first_and_slides(make_gateway, client_tls, downstream):
    clock = Clock()
    gw = make_gateway(alice={"messages_per_hour": 3}, clock=clock)
    with logged_in(gw, client_tls) as c:
        for _ in range(3):
            assert send(c, ["x@elsewhere.example"])["data"][0] == 250
            clock.advance(600)  # at t0, t0+600, t0+1200
        refused = send(c, ["x@elsewhere.example"])
        code, text = refused["rcpt"][0]
        assert code == 451 and text.startswith(b"4.7.1 Sending limit reached: at most 3 messages per hour")
        # The oldest leaves the window at t0+3600: 1800 s from now (t0+1800).
        assert b"try again in 30 minutes" in text
        clock.advance(1799)
        assert codes(send(c, ["x@elsewhere.example"])) == [451]
        clock.advance(1)  # exactly t0 + 3600: the first message no longer counts
        assert send(c, ["x@elsewhere.example"])["data"][0] == 250
        assert codes(send(c, ["x@elsewhere.example"])) == [451]
    assert len(downstream.messages) == 4


def test_recipients_per_message_answers_452_for_the_one_over(make_gateway, client_tls, downstream):
    gw = make_gateway(alice={"recipients_per_message": 3})
    with logged_in(gw, client_tls) as c:
        result = send(c, [f"r{i}@elsewhere.example" for i in range(4)])
    assert codes(result)[:3] == [250, 250, 250]
    code, text = result["rcpt"][3]
    assert code == 452 and text.startswith(b"4.5.3 Too many recipients: at most 3 per message")
    assert result["data"][0] == 250
    assert downstream.messages[0].rcpt_tos == [f"r{i}@elsewhere.example" for i in range(3)]


def test_recipients_per_hour_counts_across_messages(make_gateway, client_tls, downstream):
    clock = Clock()
    gw = make_gateway(alice={"recipients_per_hour": 5}, clock=clock)
    with logged_in(gw, client_tls) as c:
        assert codes(send(c, ["a@x.example", "b@x.example", "c@x.example"])) == [250] * 3
        second = send(c, ["d@x.example", "e@x.example", "f@x.example"])
        assert codes(second) == [250, 250, 451]
        assert b"at most 5 recipients per hour for this account" in second["rcpt"][2][1]
        clock.advance(3600)
        assert codes(send(c, ["g@x.example"])) == [250]
    assert [len(m.rcpt_tos) for m in downstream.messages] == [3, 2, 1]


def test_distinct_domains_per_hour_counts_a_domain_once(make_gateway, client_tls):
    gw = make_gateway(alice={"recipient_domains_per_hour": 2})
    with logged_in(gw, client_tls) as c:
        result = send(c, ["a@one.example", "b@two.example", "c@one.example", "d@three.example"])
    assert codes(result) == [250, 250, 250, 451]
    assert b"distinct recipient domains per hour" in result["rcpt"][3][1]


def test_customer_aggregate_caps_all_accounts_together(make_gateway, client_tls):
    gw = make_gateway(acme={"customer": {"messages_per_hour": 2}})
    with logged_in(gw, client_tls, ALICE) as a, logged_in(gw, client_tls, "bob@acme.example") as b:
        assert codes(send(a, ["x@elsewhere.example"])) == [250]
        assert codes(send(b, ["x@elsewhere.example"], sender="bob@acme.example")) == [250]
        refused = send(a, ["x@elsewhere.example"])
    assert codes(refused) == [451]
    assert b"for all of acme's accounts together" in refused["rcpt"][0][1]


# --- size -----------------------------------------------------------------------------
def test_size_is_refused_at_mail_and_after_data_without_charging(make_gateway, client_tls, downstream):
    gw = make_gateway(alice={"max_message_size": 2048, "messages_per_hour": 1})
    with logged_in(gw, client_tls) as c:
        code, text = c.mail(ALICE, ["SIZE=5000"])
        assert code == 552 and text.startswith(b"4.3.4") is False
        assert text.startswith(b"5.3.4 Message size 5000 exceeds this account's limit of 2048")
        c.rset()
        big = send(c, ["x@elsewhere.example"], body=message(pad=40))  # no SIZE=, ~3 KB
        assert big["data"][0] == 552 and big["data"][1].startswith(b"5.3.4")
        # The refused message was not charged: the one message this hour still fits.
        assert send(c, ["x@elsewhere.example"])["data"][0] == 250
    assert len(downstream.messages) == 1


# --- what is charged ------------------------------------------------------------------------
def test_recipients_refused_downstream_cost_nothing(make_gateway, client_tls, downstream):
    gw = make_gateway(alice={"recipients_per_hour": 2})
    downstream.behaviour.refuse_rcpt = {"gone@elsewhere.example": "550 5.1.1 no such user"}
    with logged_in(gw, client_tls) as c:
        result = send(c, ["gone@elsewhere.example", "a@elsewhere.example", "b@elsewhere.example"])
    assert codes(result) == [550, 250, 250]
    assert result["data"][0] == 250


def test_a_message_refused_downstream_costs_nothing(make_gateway, client_tls, downstream):
    gw = make_gateway(alice={"messages_per_hour": 1})
    with logged_in(gw, client_tls) as c:
        downstream.behaviour.data_reply = "554 5.7.1 spam"
        assert send(c, ["x@elsewhere.example"])["data"][0] == 554
        downstream.behaviour.data_reply = None
        assert send(c, ["x@elsewhere.example"])["data"][0] == 250
        assert codes(send(c, ["x@elsewhere.example"])) == [451]


def test_rset_and_disconnect_release_the_holds(make_gateway, client_tls):
    gw = make_gateway(alice={"messages_per_hour": 1})
    with logged_in(gw, client_tls) as c:
        c.mail(ALICE)
        assert c.rcpt("x@elsewhere.example")[0] == 250
        c.rset()
    c = logged_in(gw, client_tls)
    c.mail(ALICE)
    assert c.rcpt("x@elsewhere.example")[0] == 250
    c.sock.close()  # gone without QUIT, mid-transaction
    deadline = time.monotonic() + 10
    while True:
        with logged_in(gw, client_tls) as c:
            result = send(c, ["x@elsewhere.example"])
        if codes(result) == [250] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert result["data"][0] == 250


# --- sessions, suspension -------------------------------------------------------------------
def test_concurrent_sessions_over_the_limit_get_454_until_one_closes(make_gateway, client_tls):
    gw = make_gateway(alice={"concurrent_connections": 2})
    first, second = logged_in(gw, client_tls), logged_in(gw, client_tls)
    third = connect(gw, client_tls)
    code, text = auth_plain(third, ALICE)
    assert (code, without_id(text)) == (
        454, b"4.7.0 Too many simultaneous sessions for this account; try again later")
    assert auth_plain(connect(gw, client_tls), "bob@acme.example")[0] == 235  # others unaffected
    first.quit()
    deadline = time.monotonic() + 10
    while auth_plain(c := connect(gw, client_tls), ALICE)[0] != 235:
        assert time.monotonic() < deadline, "slot not released at disconnect"
        c.close()
        time.sleep(0.1)
    c.quit()
    second.quit()
    third.close()


def test_suspended_account_logs_in_but_cannot_send_until_unsuspended(make_gateway, client_tls, capsys):
    gw = make_gateway()
    assert cli(gw, "suspend", ALICE, "--reason", "phishing reported") == 0
    with logged_in(gw, client_tls) as c:
        assert c.mail(ALICE)[0] == 250  # asked at the first RCPT, with its check-and-charge
        code, text = c.rcpt("x@elsewhere.example")
        assert code == 550
        assert without_id(text) == (
            b"5.7.1 This account is suspended from sending mail; please contact your provider's support")
        c.rset()
        with logged_in(gw, client_tls, "bob@acme.example") as b:  # the rest of acme sends
            assert codes(send(b, ["x@elsewhere.example"], sender="bob@acme.example")) == [250]
        assert cli(gw, "status", ALICE) == 0
        assert "SUSPENDED" in capsys.readouterr().out
        assert cli(gw, "unsuspend", ALICE) == 0
        assert send(c, ["x@elsewhere.example"])["data"][0] == 250


def test_recipients_refused_downstream_suspend_the_account(make_gateway, client_tls, downstream):
    gw = make_gateway(extra={"compromise": {"refusal_minimum": 4, "refusal_share": 0.5}})
    downstream.behaviour.refuse_rcpt = {f"u{i}@victim.example": "550 5.1.1 no such user" for i in range(4)}
    with logged_in(gw, client_tls) as c:
        # A run at dead addresses: all refused, the client never gets to DATA.
        assert codes(send(c, [f"u{i}@victim.example" for i in range(4)])) == [550] * 4
        # The RSET's release and assessment run as the transaction is torn down.
        deadline = time.monotonic() + 10
        while True:
            assert c.mail(ALICE)[0] == 250
            reply = c.rcpt("x@elsewhere.example")
            c.rset()
            if reply[0] != 250 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert (reply[0], reply[1][:5]) == (550, b"5.7.1")
    events = gw.run(gw.runtime.metering.store.events(ALICE))
    suspended = [e for e in events if e.kind == "suspended"]
    assert suspended[0].data["reason"] == "recipients refused downstream"
    assert suspended[0].data["refused_last_hour"] == 4


# --- shadow mode ------------------------------------------------------------------------------
def test_shadow_mode_logs_the_refusal_and_lets_the_mail_through(make_gateway, client_tls, caplog):
    gw = make_gateway(alice={"messages_per_hour": 1}, shadow=True)
    with caplog.at_level("INFO", logger="portcullis.smtp"), logged_in(gw, client_tls) as c:
        assert send(c, ["x@elsewhere.example"])["data"][0] == 250
        assert send(c, ["x@elsewhere.example"])["data"][0] == 250
    assert any("shadow: would refuse messages_per_hour: 451 4.7.1" in r.getMessage()
               for r in caplog.records)


# --- store down ---------------------------------------------------------------------------------
def test_store_unreachable_means_451_never_an_unmetered_pass(tmp_path, downstream, cert_files,
                                                             password_hash, client_tls):
    server = RedisServer().start()
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=customer_policies(password_hash), cert=cert_files,
                          extra={"store": {"backend": "redis", "url": server.url, "timeout": 1}})
    gw.start()
    try:
        c = logged_in(gw, client_tls)
        server.stop()
        assert c.mail(ALICE)[0] == 250  # no store call: the first RCPT makes it
        code, text = c.rcpt("x@elsewhere.example")
        assert (code, without_id(text)) == (
            451, b"4.3.0 Sending limits cannot be checked right now; try again later")
        c.close()
        # AUTH itself cannot check the lockout state: a temporary failure, not a pass.
        assert auth_plain(connect(gw, client_tls), ALICE)[0] == 454
        assert downstream.messages == []
    finally:
        gw.stop()
        server.stop()
