"""`portcullis explain ID` over the wire: a real gateway refuses (or holds) at each
stage, the id is taken from the reply the client got, and the command, run as an
operator runs it (a subprocess reading the gateway file), prints the rule that
decided, its facts and the reply sent."""

from __future__ import annotations

import json
import logging
import re
import smtplib
import subprocess
import sys
import time

from tests.conftest import customer_policies
from tests.support import rspamd_server as _rspamd
from tests.support.gateway import GatewayUnderTest
from tests.support.reply_ids import ID
from tests.support.submission import auth_plain, connect
from tests.test_wire_content import SPAM, gateway_with

pytest_plugins = ("tests.support.authdns",)
rspamd = _rspamd.rspamd  # module-scoped: one rspamd for this file, started only if asked for

MESSAGE = (b"From: alice@acme.example\r\nTo: friend@elsewhere.example\r\nSubject: hi\r\n"
           b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <hi@acme.example>\r\n\r\nhello\r\n")


# Our Received header: "by mx.gateway.test (Portcullis) with ESMTPSA id K3M2Q7ZP4XAB.1"
RECEIVED_ID = re.compile(rb"\(Portcullis\) with \w+ id ([A-Z2-7]{12}\.\d+)")


def id_of(reply: bytes) -> str:
    m = ID.search(reply)
    assert m, f"no id in {reply!r}"
    return m.group(1).decode()


def explain(config, wanted: str, *flags: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """The command as an operator runs it.  The journal is written in the background,
    after the reply: an id not there yet is asked again, for up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "explain", "-c", str(config),
                               wanted, *flags], capture_output=True, text=True, timeout=60)
        if done.returncode != 1 or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def explained(gw, wanted: str, *flags: str) -> str:
    done = explain(gw.config_path, wanted, *flags)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def start(tmp_path, downstream, cert_files, policies, **extra) -> GatewayUnderTest:
    return GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                            policies=policies, cert=cert_files, extra=extra).start()


# --- RCPT, MAIL, quota, DATA sender ----------------------------------------------------

def test_a_relay_refusal_at_rcpt_is_explained_with_its_recipient_rule_and_reply(gateway):
    with smtplib.SMTP("127.0.0.1", gateway.ports["inbound"], timeout=20) as c:
        c.ehlo("client.example")
        assert c.mail("news@sender.example")[0] == 250
        code, text = c.rcpt("victim@elsewhere.example")
        assert code == 550
        # The transaction goes on and its message is accepted: the refusal is still on record.
        assert c.rcpt("bob@acme.example")[0] == 250
        assert c.data(b"From: news@sender.example\r\n\r\nhi\r\n")[0] == 250
    txid = id_of(text)
    out = explained(gateway, f"(id {txid})")
    assert f"transaction {txid} on inbound" in out
    assert "1. rcpt <victim@elsewhere.example>: refused, rule relay" in out
    assert "domain=elsewhere.example" in out
    assert f"reply: 550 {text.decode()}" in out  # with its "(id …)"
    assert "recipients: 1 accepted, 1 refused" in out


def test_a_sender_refusal_at_mail_is_explained_in_text_and_json(gateway, client_tls):
    with connect(gateway, client_tls) as c:
        assert auth_plain(c, "alice@acme.example")[0] == 235
        code, text = c.mail("carol@globex.example")
    assert code == 553
    txid = id_of(text)
    out = explained(gateway, txid)
    assert f"transaction {txid} on submissions" in out
    assert "login alice@acme.example, from <carol@globex.example>" in out
    assert "refused at MAIL by rule senders.envelope" in out
    assert "facts: sender=carol@globex.example" in out
    assert f"reply sent: 553 {text.decode()}" in out
    [entry] = json.loads(explained(gateway, txid, "--json"))
    assert (entry["id"], entry["kind"]) == (txid, "transaction")
    assert entry["record"]["rule"] == "senders.envelope"
    assert entry["record"]["facts"] == {"sender": "carol@globex.example"}
    assert entry["record"]["steps"][0]["stage"] == "mail"


def test_a_quota_refusal_at_data_keeps_its_rule_in_the_log_line_and_the_journal(
        tmp_path, downstream, cert_files, password_hash, client_tls, caplog):
    caplog.set_level(logging.INFO, logger="portcullis.transaction")
    policies = customer_policies(password_hash)
    policies["acme"]["accounts"][0]["quotas"] = {"max_message_size": 2048}
    gw = start(tmp_path, downstream, cert_files, policies)
    try:
        with connect(gw, client_tls) as c:
            assert auth_plain(c, "alice@acme.example")[0] == 235
            assert c.mail("alice@acme.example")[0] == 250  # no SIZE=: found too big at DATA
            assert c.rcpt("friend@elsewhere.example")[0] == 250
            code, text = c.data(MESSAGE + (b"x" * 70 + b"\r\n") * 60)
        assert code == 552
        txid = id_of(text)
        out = explained(gw, txid)
    finally:
        gw.stop()
    assert "refused at DATA by rule quota.max_message_size" in out
    assert "quota_login=alice@acme.example" in out
    [line] = [r.getMessage() for r in caplog.records if f"txid={txid} " in r.getMessage()]
    assert "rule=quota.max_message_size" in line


def test_a_from_header_refusal_at_data_is_explained_with_the_field(gateway, client_tls):
    with connect(gateway, client_tls) as c:
        assert auth_plain(c, "alice@acme.example")[0] == 235
        assert c.mail("alice@acme.example")[0] == 250
        assert c.rcpt("friend@elsewhere.example")[0] == 250
        code, text = c.data(MESSAGE.replace(b"From: alice@acme.example", b"From: carol@globex.example"))
    assert code == 550
    out = explained(gateway, id_of(text))
    assert "refused at DATA by rule senders.header" in out
    assert "field=From" in out and "carol@globex.example" in out
    # The submission pipeline's steps up to the one that refused, in order.
    assert "data: passed the pipeline's first steps" in out
    assert "decided_by='header senders' steps='account size'" in out, out


def test_an_accepted_message_is_not_journalled(gateway, client_tls, downstream):
    with connect(gateway, client_tls) as c:
        assert auth_plain(c, "alice@acme.example")[0] == 235
        c.sendmail("alice@acme.example", ["friend@elsewhere.example"], MESSAGE)
    txid = RECEIVED_ID.search(downstream.messages[0].content).group(1).decode()
    time.sleep(0.5)  # what a background write would have needed
    done = explain(gateway.config_path, txid, timeout=0)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"{txid}: not in the journal (it keeps refusals, holds and "
                                   "suspensions: the last 100000 of them, for 14 days)")
    assert gateway.run(gateway.runtime.journal.store.journal_find(txid)) == []


def test_an_unknown_or_malformed_id_is_one_line_and_exit_1(gateway):
    for wanted in ("AAAAAAAAAAAA.1", "not an id"):
        done = explain(gateway.config_path, wanted, timeout=0)
        assert done.returncode == 1
        assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1


# --- suspension, and a connection with its transactions ----------------------------------

def test_a_transaction_that_suspends_its_account_is_explained_then_the_next_one_too(
        tmp_path, downstream, cert_files, password_hash, client_tls):
    gw = start(tmp_path, downstream, cert_files, customer_policies(password_hash),
               compromise={"ceiling_recipients_per_hour": 2})
    try:
        with connect(gw, client_tls) as c:
            assert auth_plain(c, "alice@acme.example")[0] == 235
            assert c.mail("alice@acme.example")[0] == 250
            for n in range(3):
                assert c.rcpt(f"friend{n}@elsewhere.example")[0] == 250
            code, accepted = c.data(MESSAGE)
            assert code == 250
            assert c.mail("alice@acme.example")[0] == 250
            code, refused = c.rcpt("friend@elsewhere.example")
            assert code == 550
        first, second = f"{id_of(refused).rpartition('.')[0]}.1", id_of(refused)
        suspending = explained(gw, first)
        then = explained(gw, second)
    finally:
        gw.stop()
    assert "suspended the account, rule compromise.suspended" in suspending
    assert "reason='hard ceiling exceeded'" in suspending and "ceiling=2" in suspending
    assert "rcpt <friend@elsewhere.example>: refused, rule quota.suspended" in then


def test_a_connection_id_explains_a_refused_auth_and_lists_its_transactions(gateway, client_tls):
    with connect(gateway, client_tls) as c:
        code, text = auth_plain(c, "alice@acme.example", "wrong password")
        assert code == 535
        cid = id_of(text)
        assert auth_plain(c, "alice@acme.example")[0] == 235
        assert c.mail("carol@globex.example")[0] == 553
    done = explain(gateway.config_path, cid)
    # The connection's entry is written when it closes: wait for both.
    deadline = time.monotonic() + 10
    while "connection " not in done.stdout and time.monotonic() < deadline:
        time.sleep(0.2)
        done = explain(gateway.config_path, cid)
    out = done.stdout
    assert f"connection {cid} on submissions" in out
    assert "AUTH refused by rule auth.credentials" in out
    assert f"transaction {cid}.1 on submissions" in out
    assert "rule senders.envelope" in out


def test_a_locked_out_connection_is_explained_by_its_connection_id(
        tmp_path, downstream, cert_files, password_hash, client_tls):
    gw = start(tmp_path, downstream, cert_files, customer_policies(password_hash),
               lockout={"ip_failures": 100, "login_failures": 2})
    try:
        for _ in range(2):
            with connect(gw, client_tls) as c:
                assert auth_plain(c, "bob@acme.example", "wrong")[0] == 535
        with connect(gw, client_tls) as c:
            code, text = auth_plain(c, "bob@acme.example")  # the right password, locked all the same
        assert code == 454
        done = explain(gw.config_path, id_of(text))
    finally:
        gw.stop()
    assert done.returncode == 0, done.stderr
    assert f"connection {id_of(text)} on submissions" in done.stdout
    assert "AUTH refused by rule lockout.locked" in done.stdout


# --- DMARC on the MX, against a real NSD -------------------------------------------------

ZONES = {"spoof.test": """
        @            TXT "v=spf1 ip4:192.0.2.1 -all"
        _dmarc       TXT "v=DMARC1; p=reject"
    """}


def test_a_dmarc_reject_is_explained_with_the_checks_and_the_author_domain(
        tmp_path, authdns_factory, downstream, cert_files, password_hash):
    dns = authdns_factory(ZONES)
    gw = start(tmp_path, downstream, cert_files, customer_policies(password_hash),
               dns={"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 2})
    try:
        with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=20) as c:
            c.ehlo("client.example")
            assert c.mail("ceo@spoof.test")[0] == 250
            assert c.rcpt("bob@acme.example")[0] == 250
            code, text = c.data(b"From: ceo@spoof.test\r\nSubject: wire money\r\n\r\nnow\r\n")
        assert (code, text[:6]) == (550, b"5.7.26")
        out = explained(gw, id_of(text))
    finally:
        gw.stop()
    assert "refused at DATA by rule dmarc.reject" in out
    assert "header_from=spoof.test" in out
    assert "dmarc=fail" in out  # the checks' summary


# --- content: refused and held by a real rspamd ------------------------------------------

def submit_spam(gw, client_tls) -> tuple[int, bytes]:
    with connect(gw, client_tls) as c:
        assert auth_plain(c, "alice@acme.example")[0] == 235
        assert c.mail("alice@acme.example")[0] == 250
        assert c.rcpt("friend@elsewhere.example")[0] == 250
        return c.data(SPAM)


def test_a_content_reject_is_explained_with_its_score(
        tmp_path, rspamd, downstream, cert_files, password_hash, client_tls):
    gw = gateway_with(tmp_path, downstream, cert_files, password_hash, rspamd.url)
    try:
        code, text = submit_spam(gw, client_tls)
        assert code == 550
        out = explained(gw, id_of(text))
    finally:
        gw.stop()
    assert "refused at DATA by rule content.reject" in out
    assert "score=" in out and "rspamd_action=" in out


def test_a_held_message_is_explained_with_its_hold_id(
        tmp_path, rspamd, downstream, cert_files, password_hash, client_tls):
    gw = gateway_with(tmp_path, downstream, cert_files, password_hash, rspamd.url,
                      content={"outbound": {"actions": {"reject": "hold"}}})
    try:
        code, text = submit_spam(gw, client_tls)
        assert code == 250  # held: the client is told it was accepted
        out = explained(gw, id_of(text))
    finally:
        gw.stop()
    assert "held for review at DATA by rule content.hold" in out
    assert "held_id=" in out
    assert "reply sent: 250 2.0.0" in out
