"""No open relay, proven over real sockets on every listener."""

import smtplib

import pytest

from tests.conftest import PASSWORD

RELAY_TRICKS = [
    "user@other.example",
    "user@other.example.",
    "user%other.example@acme.example",
    "other.example!user@acme.example",
    '"user@other.example"@acme.example',
    "user@[192.0.2.1]",
    "@acme.example:user@other.example",
    "@acme.example,@acme.example:user@other.example",
]


def inbound(gw):
    return smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=10)


@pytest.mark.parametrize("rcpt", RELAY_TRICKS)
def test_inbound_refuses_every_relay_trick_and_downstream_sees_nothing(gateway, downstream, rcpt):
    with inbound(gateway) as c:
        c.ehlo("relaytester.example")
        c.mail("spammer@other.example")
        code, msg = c.rcpt(rcpt)
        assert code in (550, 553), (rcpt, code, msg)
        assert msg.startswith((b"5.7.1", b"5.1.3"))
    assert downstream.handler.mail_commands == 0


def test_inbound_accepts_our_domain_in_any_case_with_a_trailing_dot(gateway, downstream):
    with inbound(gateway) as c:
        c.ehlo("client.example")
        c.mail("someone@other.example")
        assert c.rcpt("Bob@ACME.example.")[0] == 250
        code, _ = c.data(b"From: someone@other.example\r\nSubject: hi\r\n\r\nhello\r\n")
        assert code == 250
    assert downstream.messages[0].rcpt_tos == ["Bob@acme.example"]


def test_inbound_offers_no_auth_even_after_starttls(gateway, client_tls):
    with inbound(gateway) as c:
        c.ehlo("client.example")
        assert not c.has_extn("auth")
        c.starttls(context=client_tls)
        c.ehlo("client.example")
        assert not c.has_extn("auth")
        code, msg = c.docmd("AUTH", "PLAIN AGFsaWNlQGFjbWUuZXhhbXBsZQBjb3JyZWN0")
        assert (code, msg[:5]) == (502, b"5.5.1")


@pytest.mark.parametrize("port_name", ["submission", "submissions"])
def test_submission_refuses_mail_before_auth(gateway, client_tls, port_name):
    port = gateway.ports[port_name]
    if port_name == "submission":
        c = smtplib.SMTP("127.0.0.1", port, timeout=10)
        c.ehlo("x")
        c.starttls(context=client_tls)
    else:
        c = smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=client_tls)
    with c:
        c.ehlo("client.example")
        code, msg = c.mail("alice@acme.example")
        assert (code, msg[:5]) == (530, b"5.7.0")


def test_authenticated_submission_refuses_hidden_routes(gateway, client_tls, downstream):
    with smtplib.SMTP_SSL("127.0.0.1", gateway.ports["submissions"], timeout=10,
                          context=client_tls) as c:
        c.login("alice@acme.example", PASSWORD)
        c.mail("alice@acme.example")
        for trick in ("user%other.example@third.example", "host!user@third.example"):
            code, msg = c.rcpt(trick)
            assert (code, msg[:5]) == (553, b"5.1.3"), trick
    assert downstream.handler.mail_commands == 0


def test_unqualified_postmaster_is_accepted_as_rfc_5321_requires(gateway, downstream):
    with inbound(gateway) as c:
        c.ehlo("client.example")
        c.mail("someone@other.example")
        assert c.rcpt("Postmaster")[0] == 250
        assert c.data(b"From: someone@other.example\r\n\r\nfor the postmaster\r\n")[0] == 250
    assert downstream.messages[0].rcpt_tos == ["postmaster@mx.gateway.test"]


def test_unqualified_addresses_other_than_postmaster_are_refused(gateway):
    with inbound(gateway) as c:
        c.ehlo("client.example")
        c.mail("someone@other.example")
        assert c.rcpt("root")[0] == 553
    with inbound(gateway) as c:
        c.ehlo("client.example")
        assert c.docmd("MAIL FROM:<postmaster>")[0] == 553  # only RCPT takes it unqualified
