"""AUTH on the real submission listener against the ISP's Dovecot (account source
`dovecot`): right, wrong, unknown, and Dovecot gone (454, then recovery)."""

import smtplib

import pytest

from tests.conftest import customer_policies
from tests.support.dovecot_server import dovecot_fixture  # noqa: F401 - the `dovecot` fixture
from tests.support.gateway import GatewayUnderTest
from tests.support.reply_ids import without_id


@pytest.fixture
def gw(tmp_path, dovecot, downstream, cert_files, password_hash):
    dovecot.set_user("dave@acme.example", "dovecot secret")
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"accounts": {"source": "dovecot", "auth_timeout": 3,
                            "dovecot": {"address": f"inet:127.0.0.1:{dovecot.port}"},
                            "cache": {"enabled": False}},
               # Dovecot cannot list domains: the MX's list of hosted ones is here.
               "default_policy": {"domains": ["hosted.example"]}}).start()
    try:
        yield gw
    finally:
        gw.stop()


def login(gw, client_tls, user, password):
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=20, context=client_tls) as c:
        try:
            return c.login(user, password)
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code, without_id(exc.smtp_error)


def test_dovecot_account_logs_in_and_sends_as_itself(gw, client_tls, downstream):
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=20, context=client_tls) as c:
        assert c.login("dave@acme.example", "dovecot secret")[0] == 235
        c.sendmail("dave@acme.example", ["x@elsewhere.example"],
                   b"From: dave@acme.example\r\n\r\nfrom dovecot\r\n")
        # The customer (acme, from the domain's policy file) is what limits him.
        assert c.mail("alice@acme.example")[0] == 553
    assert downstream.messages[0].mail_from == "dave@acme.example"


def test_wrong_password_and_unknown_login_are_the_same_535(gw, client_tls):
    wrong = login(gw, client_tls, "dave@acme.example", "nope")
    unknown = login(gw, client_tls, "nobody@acme.example", "nope")
    assert wrong == unknown == (535, b"5.7.8 Authentication credentials invalid")


def test_dovecot_down_gives_454_then_recovers(gw, dovecot, client_tls):
    dovecot.stop()
    assert login(gw, client_tls, "dave@acme.example", "dovecot secret") == (
        454, b"4.7.0 Temporary authentication failure")
    dovecot.start()
    assert login(gw, client_tls, "dave@acme.example", "dovecot secret")[0] == 235


def mx_rcpt(gw, recipient):
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=20) as mx:
        mx.ehlo("mail.sender.example")
        mx.mail("someone@sender.example")
        code, text = mx.rcpt(recipient)
        return code, (text if code == 250 else without_id(text))


def test_with_dovecot_the_mx_takes_listed_domains_and_never_asks_dovecot(gw, dovecot):
    dovecot.set_user("erin@hosted.example", "erin secret")
    assert mx_rcpt(gw, "erin@hosted.example") == (250, b"2.1.5 Recipient OK")
    assert mx_rcpt(gw, "erin@stranger.example") == (550, b"5.7.1 Relaying denied")
    dovecot.stop()
    try:
        assert mx_rcpt(gw, "erin@hosted.example") == (250, b"2.1.5 Recipient OK")
    finally:
        dovecot.start()
