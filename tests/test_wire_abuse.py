"""Abuse reports close the loop, on the wire: every submitted message carries our
sender identifier; abuse@ and postmaster@ are always accepted inbound; a report
about a message that went out through the gateway is attributed to its account,
enough of them suspend it; a report about mail we never sent is only passed on."""

from __future__ import annotations

import re
import smtplib

import pytest

from gateway.stamps.sender_id import HEADER
from tests.conftest import customer_policies
from tests.support.arf import arf_report, forwarded_as_attachment
from tests.support.gateway import GatewayUnderTest
from tests.support.submission import Clock, logged_in, message, send

ALICE = "alice@acme.example"


@pytest.fixture
def gw(tmp_path, downstream, cert_files, password_hash):
    g = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files, clock=Clock(),
        extra={"abuse": {"domains": ["isp.example"]},
               "compromise": {"complaint_minimum": 3, "complaint_rate": 0.5}}).start()
    try:
        yield g
    finally:
        g.stop()


def submit(gw, client_tls, downstream, n=1, login=ALICE, extra_header=b""):
    """Send n messages as ``login``; return them as the downstream received them."""
    before = len(downstream.messages)
    with logged_in(gw, client_tls, login) as c:
        for i in range(n):
            body = extra_header + message(login, body=f"offer {i}")
            assert send(c, ["victim@mailbox.example"], sender=login, body=body)["data"][0] == 250
    return [m.content for m in downstream.messages[before:]]


def report_to_mx(gw, raw, rcpt="abuse@acme.example"):
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=15) as c:
        c.ehlo("fbl.mailbox.example")
        c.mail("fbl@mailbox.example")
        code = c.rcpt(rcpt)[0]
        assert code == 250
        return c.data(raw)[0]


def events(gw, kind):
    return [e for e in gw.run(gw.runtime.metering.store.events(ALICE)) if e.kind == kind]


def header_values(raw: bytes) -> list[bytes]:
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
            if line.lower().startswith(HEADER.lower().encode() + b":")]


def test_every_submitted_message_carries_one_identifier_of_its_account(gw, client_tls, downstream):
    # A client cannot plant another account's token: its own header is removed.
    bob_token = header_values(submit(gw, client_tls, downstream, login="bob@acme.example")[0])[0]
    forged = f"{HEADER}: ".encode() + bob_token + b"\r\n"
    out = submit(gw, client_tls, downstream, extra_header=forged)[0]
    tokens = header_values(out)
    assert len(tokens) == 1 and tokens[0] != bob_token
    assert gw.runtime.sender_ids.open(tokens[0].decode()).login == ALICE
    assert ALICE.encode() not in tokens[0]


@pytest.mark.parametrize("rcpt", ["abuse@acme.example", "postmaster@sub.acme.example",
                                  "postmaster@mx.gateway.test", "abuse@isp.example",
                                  "PostMaster@globex.example"])
def test_role_mailboxes_of_every_domain_we_serve_are_accepted(gw, downstream, rcpt):
    assert report_to_mx(gw, b"From: x@y.example\r\nSubject: hi\r\n\r\nhello\r\n", rcpt) == 250
    assert downstream.messages[-1].rcpt_tos == [rcpt]


def test_other_mailboxes_of_the_isp_domain_are_still_relay_denied(gw):
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=15) as c:
        c.ehlo("x")
        c.mail("a@b.example")
        assert c.rcpt("sales@isp.example")[0] == 550


def test_arf_reports_are_attributed_passed_on_unchanged_and_suspend_the_account(
        gw, client_tls, downstream):
    sent = submit(gw, client_tls, downstream, n=3)
    for i, original in enumerate(sent):
        report = arf_report(original) if i % 2 == 0 else forwarded_as_attachment(original)
        assert report_to_mx(gw, report) == 250
        # Passed on: the report itself, byte for byte, under our Received line.
        assert downstream.messages[-1].content.endswith(report)
    complaints = events(gw, "complaint")
    assert len(complaints) == 3
    assert {c.data["about_txid"] for c in complaints} == {
        gw.runtime.sender_ids.open(header_values(m)[0].decode()).txid for m in sent}
    suspended = events(gw, "suspended")
    assert suspended and "complaint" in suspended[0].data["reason"]
    with logged_in(gw, client_tls) as c:
        assert c.mail(ALICE)[0] == 250
        code, text = c.rcpt("someone@elsewhere.example")
    assert (code, text[:5]) == (550, b"5.7.1")


def test_the_same_message_reported_twice_is_one_complaint(gw, client_tls, downstream):
    original = submit(gw, client_tls, downstream)[0]
    assert report_to_mx(gw, arf_report(original)) == 250
    assert report_to_mx(gw, arf_report(original)) == 250
    assert len(events(gw, "complaint")) == 1


def test_a_report_about_mail_we_never_sent_is_only_passed_on(gw, client_tls, downstream, caplog):
    submit(gw, client_tls, downstream)
    foreign = (b"From: alice@acme.example\r\nSubject: not from us\r\n"
               + f"{HEADER}: v1.".encode() + b"A" * 60 + b"\r\n\r\nspam\r\n")
    report = arf_report(foreign)
    with caplog.at_level("INFO", logger="portcullis.abuse"):
        assert report_to_mx(gw, report) == 250
    assert downstream.messages[-1].content.endswith(report)
    assert events(gw, "complaint") == []
    assert any("abuse report not attributed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("spelling", [b"X-Portcullis-Sender-Id\t: ", b"x-portcullis-sender-id \t:"])
def test_a_clients_identifier_with_wsp_before_the_colon_is_removed_too(
        gw, client_tls, downstream, spelling):
    # RFC 5322 §4.5.8: "Name<WSP>:" is the field Name.  The sender-id stripper once
    # missed the HTAB form, which the signer then signed as X-Portcullis-Sender-Id:
    # bob's token would have gone out under alice's signature.
    bob_token = header_values(submit(gw, client_tls, downstream, login="bob@acme.example")[0])[0]
    out = submit(gw, client_tls, downstream, extra_header=spelling + bob_token + b"\r\n")[0]
    head = out.split(b"\r\n\r\n", 1)[0]
    assert bob_token not in head
    named = [line for line in head.split(b"\r\n")
             if re.match(rb"(?i)x-portcullis-sender-id[ \t]*:", line)]
    assert len(named) == 1
    assert gw.runtime.sender_ids.open(named[0].split(b":", 1)[1].strip().decode()).login == ALICE
