"""The gateway in front of a real Postfix: what a deployment looks like.

client → gateway (inbound / submission) → Postfix (a private instance) → a
recording MTA standing in for the mailbox servers.
"""

import smtplib
import time

import pytest

from tests.conftest import PASSWORD, customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.postfix import PostfixInstance, postfix_available

pytestmark = pytest.mark.skipif(not postfix_available(), reason="needs root and Debian's postfix")


@pytest.fixture
def postfix(downstream):
    pf = PostfixInstance(free_port(), f"[127.0.0.1]:{downstream.port}",
                         relay_domains=["acme.example", "sub.acme.example"],
                         recipients=["bob@acme.example", "alice@acme.example"]).start()
    try:
        yield pf
    finally:
        pf.stop()


@pytest.fixture
def gateway_before_postfix(tmp_path, postfix, cert_files, password_hash):
    url = f"smtp://127.0.0.1:{postfix.port}"
    gw = GatewayUnderTest(tmp_path, inbound_url=url, outbound_url=url,
                          policies=customer_policies(password_hash), cert=cert_files).start()
    try:
        yield gw
    finally:
        gw.stop()


def wait_for(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_inbound_mail_goes_through_postfix_with_our_received_header(
        gateway_before_postfix, downstream):
    with smtplib.SMTP("127.0.0.1", gateway_before_postfix.ports["inbound"], timeout=20) as c:
        c.ehlo("sender.example")
        c.mail("someone@other.example")
        assert c.rcpt("bob@acme.example")[0] == 250
        code, msg = c.data(b"From: someone@other.example\r\nSubject: via postfix\r\n\r\nhello\r\n")
        assert code == 250 and b"queued as" in msg  # Postfix's own answer, passed back
    assert wait_for(lambda: downstream.messages)
    content = downstream.messages[0].content
    assert b"by mx.gateway.test (Portcullis) with ESMTP id" in content
    assert b"by postfix.test (Postfix)" in content
    assert b"Subject: via postfix\r\n" in content
    assert content.endswith(b"\r\n\r\nhello\r\n")


def test_postfix_refusing_a_recipient_is_refused_at_rcpt_by_the_gateway(gateway_before_postfix):
    with smtplib.SMTP("127.0.0.1", gateway_before_postfix.ports["inbound"], timeout=20) as c:
        c.ehlo("sender.example")
        c.mail("someone@other.example")
        code, msg = c.rcpt("nobody@acme.example")
        assert code == 550 and msg.startswith(b"5.1.1") and b"User unknown" in msg


def test_submission_through_postfix(gateway_before_postfix, client_tls, downstream):
    with smtplib.SMTP("127.0.0.1", gateway_before_postfix.ports["submission"], timeout=20) as c:
        c.starttls(context=client_tls)
        c.login("alice@acme.example", PASSWORD)
        c.sendmail("alice@acme.example", ["bob@acme.example"],
                   b"From: alice@acme.example\r\nSubject: out\r\n\r\nbody\r\n")
    assert wait_for(lambda: downstream.messages)
    assert b"with ESMTPSA id" in downstream.messages[0].content
