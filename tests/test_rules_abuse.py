"""Abuse reports, pure: the sender identifier, role mailboxes, reading ARF and
forwarded reports, and attributing them only through identifiers we made."""

from __future__ import annotations

import pytest

from gateway.message import Message
from gateway.rules.abuse import attribute, is_role_recipient, read_report
from gateway.stamps.sender_id import (
    HEADER,
    SenderId,
    SenderIds,
    sender_id_header,
    strip_sender_id_headers,
)
from tests.support.arf import arf_report, forwarded_as_attachment, forwarded_inline

KEY = "k" * 40
OTHER_KEY = "o" * 40
IDS = SenderIds([KEY])


def sent(login: str = "alice@acme.example", txid: str = "CID123.1", extra: bytes = b"") -> bytes:
    token = IDS.make(login, txid, 1_800_000_000)
    return (b"Received: from client by mx.gateway.test\r\n" + sender_id_header(token)
            + b"From: alice@acme.example\r\nMessage-ID: <m1@acme.example>\r\nSubject: offer\r\n"
            + extra + b"\r\nBuy now\r\n")


# --- the identifier ------------------------------------------------------------------------
def test_a_token_opens_to_the_account_transaction_and_time():
    token = IDS.make("alice@acme.example", "CID123.1", 1_800_000_000.7)
    assert IDS.open(token) == SenderId("alice@acme.example", "CID123.1", 1_800_000_000)
    assert "alice" not in token and "acme" not in token


def test_two_messages_of_one_account_carry_unrelated_tokens():
    assert IDS.make("a@b.example", "T.1", 0) != IDS.make("a@b.example", "T.1", 0)


@pytest.mark.parametrize("token", [
    "", "v1.", "v2.AAAA", "v1.!!!!", "v1." + "A" * 40,
    SenderIds([OTHER_KEY]).make("alice@acme.example", "X.1", 0),  # someone else's key
])
def test_what_we_did_not_make_does_not_open(token):
    assert IDS.open(token) is None


def test_a_tampered_token_does_not_open():
    token = IDS.make("alice@acme.example", "CID.1", 0)
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    assert IDS.open(flipped) is None


def test_a_previous_secret_still_opens_after_rotation():
    old = SenderIds([OTHER_KEY]).make("bob@acme.example", "T.9", 5)
    assert SenderIds([KEY, OTHER_KEY]).open(old) == SenderId("bob@acme.example", "T.9", 5)


def test_a_clients_own_identifier_header_is_removed_with_its_folded_lines():
    message = (b"From: a@b.example\r\nX-Portcullis-Sender-Id: v1.forged\r\n  continued\r\n"
               b"x-portcullis-sender-id : v1.second\r\nSubject: s\r\n\r\n"
               b"X-Portcullis-Sender-Id: in the body stays\r\n")
    assert strip_sender_id_headers(Message.parse(message)).data == (
        b"From: a@b.example\r\nSubject: s\r\n\r\nX-Portcullis-Sender-Id: in the body stays\r\n")


def test_a_message_without_the_header_is_left_byte_for_byte():
    message = Message.parse(b"From: a@b.example\r\n\r\nbody\r\n")
    assert strip_sender_id_headers(message) is message


# --- role mailboxes -------------------------------------------------------------------------
@pytest.mark.parametrize("address,expected", [
    ("abuse@acme.example", True),
    ("postmaster@acme.example", True),
    ("PostMaster@ACME.example", True),
    ("abuse@acme.example.", True),
    ("abuse@elsewhere.example", False),
    ("hostmaster@acme.example", False),
    ("abuse", False),
])
def test_role_mailboxes_of_domains_we_serve(address, expected):
    assert is_role_recipient(address, lambda d: d == "acme.example") is expected


# --- reading reports ------------------------------------------------------------------------
@pytest.mark.parametrize("build,kind,feedback_type", [
    (lambda m: arf_report(m), "arf", "abuse"),
    (lambda m: arf_report(m, headers_only=True), "arf", "abuse"),
    (lambda m: arf_report(m, feedback_type="fraud"), "arf", "fraud"),
    (lambda m: forwarded_as_attachment(m), "forward", "abuse"),
    (lambda m: forwarded_inline(m), "forward", "abuse"),
])
def test_each_report_form_yields_our_identifier(build, kind, feedback_type):
    report = read_report(build(sent()))
    assert (report.kind, report.feedback_type) == (kind, feedback_type)
    assert attribute(report, IDS.open)[0].login == "alice@acme.example"
    assert attribute(report, IDS.open)[0].txid == "CID123.1"


def test_arf_fields_and_the_reported_message_id_are_kept_as_evidence():
    report = read_report(arf_report(sent()))
    assert report.source_ip == "192.0.2.7"
    assert report.reported_message_id == "<m1@acme.example>"


@pytest.mark.parametrize("feedback_type", ["not-spam", "auth-failure", "other"])
def test_arf_that_is_not_a_complaint_is_not_attributed(feedback_type):
    report = read_report(arf_report(sent(), feedback_type=feedback_type))
    assert report.tokens and attribute(report, IDS.open) == []


def test_a_report_about_mail_we_never_sent_is_not_attributed():
    foreign = (b"From: spammer@elsewhere.example\r\nSubject: x\r\n\r\nspam\r\n")
    assert attribute(read_report(arf_report(foreign)), IDS.open) == []
    forged = foreign.replace(b"Subject", f"{HEADER}: ".encode()
                             + SenderIds([OTHER_KEY]).make("alice@acme.example", "F.1", 0).encode()
                             + b"\r\nSubject")
    report = read_report(arf_report(forged))
    assert len(report.tokens) == 1 and attribute(report, IDS.open) == []


def test_a_mail_that_is_no_report_at_all_reads_as_none():
    report = read_report(b"From: someone@x.example\r\nSubject: hello\r\n\r\nhow do I unsubscribe?\r\n")
    assert report.kind == "none" and not report.is_complaint


def test_a_report_quoting_two_of_our_messages_attributes_each_once():
    alice, bob = sent("alice@acme.example", "A.1"), sent("bob@acme.example", "B.1")
    report = read_report(forwarded_inline(alice + bob + alice))
    found = attribute(report, IDS.open)
    assert sorted((a.login, a.txid) for a in found) == [
        ("alice@acme.example", "A.1"), ("bob@acme.example", "B.1")]
