"""abuse@ and postmaster@ always open (issue 18), on the wire against a real NSD and a
real rspamd: mail only for a role mailbox is never refused or held by DMARC or by
content, and is stamped and cleaned like any other (our Authentication-Results on
top, A-R forged in our name and a client's X-Portcullis-Quarantine removed); the
same mail to a customer's mailbox is refused or held, which shows the policy is on."""

from __future__ import annotations

import smtplib

import pytest

from tests.conftest import customer_policies
from tests.support import rspamd_server as _rspamd
from tests.support.gateway import GatewayUnderTest
from tests.support.rspamd_server import GTUBE

pytest_plugins = ("tests.support.authdns",)
rspamd = _rspamd.rspamd

ZONES = {"spoof.test": """
        @            TXT "v=spf1 ip4:192.0.2.1 -all"
        _dmarc       TXT "v=DMARC1; p=reject"
    """,
         "sender.test": """
        @            TXT "v=spf1 ip4:127.0.0.1 -all"
        _dmarc       TXT "v=DMARC1; p=reject"
    """}

FORGED = (b"Authentication-Results: mx.gateway.test; dmarc=pass header.from=spoof.test\r\n"
          b"X-Portcullis-Quarantine: nothing to see\r\n")


def spoofed(body: bytes = b"wire the money now") -> bytes:
    return (FORGED + b"From: ceo@spoof.test\r\nTo: abuse@acme.example\r\nSubject: urgent\r\n\r\n"
            + body + b"\r\n")


def spam() -> bytes:
    return (FORGED + b"From: news@sender.test\r\nTo: abuse@acme.example\r\nSubject: offer\r\n\r\n"
            + GTUBE + b"\r\n")


@pytest.fixture
def mx(tmp_path, authdns_factory, downstream, cert_files, password_hash):
    dns = authdns_factory(ZONES)
    started = []

    def start(extra: dict | None = None, acme: dict | None = None) -> GatewayUnderTest:
        policies = customer_policies(password_hash)
        policies["acme"].update(acme or {})
        gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                              policies=policies, cert=cert_files,
                              extra={"dns": {"nameservers": ["127.0.0.1"], "port": dns.port,
                                             "timeout": 2}, **(extra or {})})
        started.append(gw.start())
        return gw

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()


def deliver(gw, sender, rcpt, message):
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=20) as c:
        c.ehlo("client.example")
        c.mail(sender)
        assert c.rcpt(rcpt)[0] == 250
        return c.data(message)


def head_of(content: bytes) -> bytes:
    return content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")


def assert_stamped_and_cleaned(content: bytes, *results: bytes) -> None:
    head = head_of(content)
    ours = [line for line in head.split(b"\r\n") if line.startswith(b"Authentication-Results:")]
    assert len(ours) == 1, ours  # ours, and the forged one in our name gone
    for result in results:
        assert result in ours[0]
    assert b"nothing to see" not in head  # the client's flag; ours may be there


@pytest.mark.parametrize("rcpt", ["abuse@acme.example", "postmaster@acme.example"])
def test_role_mail_failing_dmarc_reject_is_delivered_stamped_and_cleaned(mx, downstream, rcpt):
    gw = mx()
    assert deliver(gw, "ceo@spoof.test", rcpt, spoofed())[0] == 250
    [m] = downstream.messages
    assert m.rcpt_tos == [rcpt]
    assert_stamped_and_cleaned(m.content, b"dmarc=fail", b"spf=fail")
    assert b"X-Portcullis-Quarantine" not in head_of(m.content)
    # The control: to a customer's mailbox the same message is refused.
    assert deliver(gw, "ceo@spoof.test", "bob@acme.example", spoofed())[0] == 550


def test_role_mail_under_a_dmarc_hold_policy_is_delivered_not_held(mx, downstream):
    gw = mx(acme={"inbound": {"default": {"dmarc_reject": "hold"}}})
    assert deliver(gw, "ceo@spoof.test", "abuse@acme.example", spoofed())[0] == 250
    assert len(downstream.messages) == 1
    assert gw.run(gw.runtime.held.list()) == []
    assert_stamped_and_cleaned(downstream.messages[0].content, b"dmarc=fail")
    # Our own flag says why, for the abuse desk's filters; the client's is gone.
    assert b"X-Portcullis-Quarantine: DMARC policy of spoof.test (reject)" in head_of(
        downstream.messages[0].content)


@pytest.mark.parametrize("spam_action", ["reject", "hold"])
def test_spam_to_abuse_is_scanned_for_the_record_and_delivered(mx, downstream, rspamd, caplog,
                                                               spam_action):
    gw = mx(extra={"scanner": {"url": rspamd.url, "timeout": 5,
                               "inbound": {"enabled": True, "actions": {"reject": spam_action}}}})
    with caplog.at_level("INFO"):
        code, _ = deliver(gw, "news@sender.test", "abuse@acme.example", spam())
    assert code == 250
    [m] = downstream.messages
    assert GTUBE in m.content  # the report reaches the abuse desk whole
    assert_stamped_and_cleaned(m.content, b"spf=pass")
    assert b"X-Portcullis-Quarantine" not in head_of(m.content)
    assert gw.run(gw.runtime.held.list()) == []
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"to role mailboxes only: content {spam_action} not applied" in x for x in lines)
    assert any("content=" in x and "not applied: role mailboxes" in x for x in lines)
    # The control: to a customer's mailbox the same spam is refused or held.
    code, _ = deliver(gw, "news@sender.test", "bob@acme.example", spam())
    if spam_action == "reject":
        assert code == 550 and len(downstream.messages) == 1
    else:
        assert code == 250 and len(gw.run(gw.runtime.held.list())) == 1
