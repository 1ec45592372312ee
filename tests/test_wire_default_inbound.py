"""default_policy on the MX with no external account source: domains listed under
``default_policy.domains`` (as Postfix's relay_domains; the only way with Dovecot,
whose auth protocol cannot list domains) are accepted and get the default policy's
inbound content rules, while policy-file domains keep the gateway's."""

from __future__ import annotations

import smtplib

from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.reply_ids import without_id

MESSAGE = b"From: a@sender.example\r\nTo: x@y\r\nSubject: hi\r\n\r\nhello\r\n"


def send(gw, recipient):
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=30) as mx:
        mx.ehlo("mail.sender.example")
        mx.mail("a@sender.example")
        code, text = mx.rcpt(recipient)
        if code != 250:
            return code, without_id(text)
        code, text = mx.data(MESSAGE)
        return code, text[:5]


def test_a_listed_domain_gets_the_default_policys_inbound_content_rules(
        tmp_path, downstream, cert_files, password_hash):
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"inbound_checks": False,
               # rspamd is down: the gateway's inbound rule says tempfail ...
               "scanner": {"url": f"http://127.0.0.1:{free_port()}", "timeout": 1,
                           "inbound": {"enabled": True, "unreachable": "tempfail"}},
               # ... the default policy lets its domains' mail through.
               "default_policy": {"domains": ["Hosted.Example."],
                                  "content": {"inbound": {"unreachable": "pass"}}}}).start()
    try:
        assert send(gw, "someone@hosted.example")[0] == 250
        assert send(gw, "bob@acme.example") == (451, b"4.7.1")
        assert send(gw, "someone@stranger.example") == (550, b"5.7.1 Relaying denied")
    finally:
        gw.stop()
    assert [m.rcpt_tos for m in downstream.messages] == [["someone@hosted.example"]]


def test_a_domains_file_is_read_at_start_and_again_at_reload(
        tmp_path, downstream, cert_files, password_hash):
    hosted = tmp_path / "hosted-domains"
    hosted.write_text("# one a line, as Postfix's relay_domains\nfirst.example\n")
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"inbound_checks": False,
               "default_policy": {"domains_file": "hosted-domains"}}).start()
    try:
        assert send(gw, "a@first.example")[0] == 250
        assert send(gw, "a@second.example") == (550, b"5.7.1 Relaying denied")
        hosted.write_text("first.example\nsecond.example  # signed up today\n")
        assert gw.reload()
        assert send(gw, "a@second.example")[0] == 250
    finally:
        gw.stop()
    assert [m.rcpt_tos for m in downstream.messages] == [["a@first.example"], ["a@second.example"]]
