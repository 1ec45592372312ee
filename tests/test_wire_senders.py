"""Send-as rules on the wire: envelope at MAIL, From:/Sender: at end of DATA."""

import smtplib

import pytest

from gateway.accounts.source import Identity
from gateway.message import Message
from gateway.rules.senders import decide_envelope_sender, decide_header_senders
from tests.conftest import PASSWORD

ALICE = Identity("alice@acme.example", "acme",
                 frozenset({"alice@acme.example", "*@sub.acme.example"}))
ALIASES = {"info@acme.example": ("alice@acme.example",)}


@pytest.mark.parametrize("sender, allowed", [
    ("alice@acme.example", True),
    ("ALICE@Acme.Example", True),
    ("anyone@sub.acme.example", True),
    ("info@acme.example", True),          # alias naming alice
    ("", True),                            # null sender: MDNs (RFC 8098)
    ("bob@acme.example", False),           # same customer, another account
    ("alice@globex.example", False),
    ("alice@acme.example.evil.example", False),
    ("x@deeper.sub.acme.example", False),  # *@domain is that domain only
])
def test_envelope_sender_rules(sender, allowed):
    verdict = decide_envelope_sender(ALICE, ALIASES, sender)
    assert verdict.accept is allowed
    if not allowed:
        assert (verdict.reply.code, verdict.reply.enhanced) == (553, "5.7.1")
        assert sender in verdict.reply.text


@pytest.mark.parametrize("headers, expected", [
    (b"From: alice@acme.example\r\n", (True, None)),
    (b"From: Alice <alice@acme.example>\r\nSender: info@acme.example\r\n", (True, None)),
    (b"From: \"alice@acme.example\" <bob@acme.example>\r\n", (False, "5.7.1")),
    (b"From: alice@acme.example, mallory@evil.example\r\n", (False, "5.7.1")),
    (b"From: alice@acme.example\r\nSender: mallory@evil.example\r\n", (False, "5.7.1")),
    (b"Subject: no from\r\n", (False, "5.6.0")),
    (b"From: alice@acme.example\r\nFrom: alice@acme.example\r\n", (False, "5.6.0")),
    (b"From: not an address\r\n", (False, "5.6.0")),
    (b"from: ALICE@acme.example\r\n", (True, None)),
])
def test_header_sender_rules(headers, expected):
    verdict = decide_header_senders(ALICE, ALIASES, Message.parse(headers + b"\r\nbody\r\n").fields)
    assert verdict.accept is expected[0]
    if expected[1]:
        assert verdict.reply.enhanced == expected[1]


def submit(gw, client_tls, login="alice@acme.example"):
    c = smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=10, context=client_tls)
    c.login(login, PASSWORD)
    return c


def test_someone_elses_envelope_sender_is_refused_at_mail_naming_it(gateway, client_tls, downstream):
    with submit(gateway, client_tls) as c:
        code, msg = c.mail("carol@globex.example")
        assert code == 553 and msg.startswith(b"5.7.1") and b"carol@globex.example" in msg
    assert downstream.handler.mail_commands == 0


def test_someone_elses_from_header_is_refused_at_end_of_data(gateway, client_tls, downstream):
    with submit(gateway, client_tls) as c:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            c.sendmail("alice@acme.example", ["x@elsewhere.example"],
                       b"From: CEO <ceo@globex.example>\r\nSubject: pay now\r\n\r\nhi\r\n")
        assert exc.value.smtp_code == 550
        assert exc.value.smtp_error.startswith(b"5.7.1")
        assert b"ceo@globex.example" in exc.value.smtp_error
    assert downstream.messages == []


def test_message_without_from_is_refused_with_560(gateway, client_tls, downstream):
    with submit(gateway, client_tls) as c:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            c.sendmail("alice@acme.example", ["x@elsewhere.example"], b"Subject: hi\r\n\r\nhi\r\n")
        assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (550, b"5.6.0")
    assert downstream.messages == []


def test_alias_and_pattern_senders_go_through(gateway, client_tls, downstream):
    with submit(gateway, client_tls) as c:
        c.sendmail("info@acme.example", ["x@elsewhere.example"],
                   b"From: Info <info@acme.example>\r\n\r\nhi\r\n")
        c.sendmail("news@sub.acme.example", ["x@elsewhere.example"],
                   b"From: news@sub.acme.example\r\n\r\nhi\r\n")
    assert [m.mail_from for m in downstream.messages] == ["info@acme.example", "news@sub.acme.example"]


def test_bob_may_not_use_alice_alias(gateway, client_tls):
    with submit(gateway, client_tls, login="bob@acme.example") as c:
        assert c.mail("info@acme.example")[0] == 553
