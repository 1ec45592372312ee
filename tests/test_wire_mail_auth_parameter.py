"""MAIL FROM's AUTH= parameter (RFC 4954 §5) over a real socket: accepted where
AUTH is offered (and never passed on: we cannot vouch for it), refused with
555 5.5.4 on the MX, where AUTH is not offered, and when malformed."""

import smtplib

import pytest

from tests.conftest import PASSWORD

MESSAGE = b"From: alice@acme.example\r\nSubject: hi\r\n\r\nhi\r\n"


def submit(gw, client_tls):
    c = smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=10, context=client_tls)
    c.login("alice@acme.example", PASSWORD)
    return c


@pytest.mark.parametrize("parameter", ["AUTH=<>", "AUTH=alice+40acme.example", "auth=<>"])
def test_submission_accepts_auth_and_does_not_pass_it_on(gateway, client_tls, downstream, parameter):
    with submit(gateway, client_tls) as c:
        assert c.mail("alice@acme.example", ["SIZE=100", parameter])[0] == 250
        assert c.rcpt("x@elsewhere.example")[0] == 250
        assert c.data(MESSAGE)[0] == 250
    [message] = downstream.messages
    assert message.mail_from == "alice@acme.example"
    assert not [o for o in message.mail_options if o.upper().startswith("AUTH")]
    assert "SIZE=100" in message.mail_options


@pytest.mark.parametrize("parameter, code", [
    ("AUTH=a+zz", 555), ("AUTH=a=b", 555),  # not xtext: an unrecognised parameter
    ("AUTH=", 501),  # no value at all: a syntax error
])
def test_submission_refuses_a_malformed_auth_parameter(gateway, client_tls, downstream, parameter,
                                                       code):
    with submit(gateway, client_tls) as c:
        assert c.mail("alice@acme.example", [parameter])[:1] == (code,)
        assert c.mail("alice@acme.example", [parameter])[1][:5] == b"5.5.4"
    assert downstream.handler.mail_commands == 0


def test_the_mx_does_not_offer_auth_and_refuses_the_parameter(gateway, downstream):
    with smtplib.SMTP("127.0.0.1", gateway.ports["inbound"], timeout=10) as c:
        c.ehlo("client.example")
        code, text = c.mail("someone@other.example", ["AUTH=<>"])
        assert (code, text[:5]) == (555, b"5.5.4")
    assert downstream.handler.mail_commands == 0
