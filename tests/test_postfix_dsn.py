"""DSN parameters (RFC 3461) and BODY=/SIZE= through the gateway to a real Postfix.

Postfix keeps the mail in its queue (``defer_transports = smtp``), and ``postcat``
shows what it recorded from the MAIL and RCPT commands the gateway relayed: the
envelope id, RET, NOTIFY and the original recipient.  With DSN discarded from
Postfix's EHLO (``smtpd_discard_ehlo_keywords = dsn``) the gateway does not
advertise DSN either, and refuses the parameters (555 5.5.4, RFC 3461 §4).
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import time

import pytest

from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.postfix import PostfixInstance, postfix_available

pytestmark = pytest.mark.skipif(not postfix_available(), reason="needs root and Debian's postfix")

MESSAGE = b"From: someone@other.example\r\nSubject: dsn\r\n\r\nhello\r\n"


def start_postfix(downstream, extra: dict[str, str]) -> PostfixInstance:
    return PostfixInstance(free_port(), f"[127.0.0.1]:{downstream.port}",
                           relay_domains=["acme.example", "mx.gateway.test"],
                           recipients=["bob@acme.example", "alice@acme.example",
                                       "postmaster@mx.gateway.test"],
                           # Keep every message in the queue, for postcat.
                           extra={"defer_transports": "relay smtp", **extra}).start()


@pytest.fixture
def run_gateway(tmp_path, cert_files, password_hash):
    started = []

    def run(postfix: PostfixInstance) -> GatewayUnderTest:
        url = f"smtp://127.0.0.1:{postfix.port}"
        gw = GatewayUnderTest(tmp_path, inbound_url=url, outbound_url=url,
                              policies=customer_policies(password_hash), cert=cert_files).start()
        started.append(gw)
        return gw

    yield run
    for gw in started:
        gw.stop()


def ehlo_keywords(port: int) -> set[str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.ehlo("sender.example")
        return set(c.esmtp_features)


def advertised_after_learning(port: int, keyword: str) -> bool:
    """The first EHLO makes the gateway learn the downstream's keywords in the
    background; a later session advertises what it learnt."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if keyword in ehlo_keywords(port):
            return True
        time.sleep(0.2)
    return False


def queued(postfix: PostfixInstance, count: int = 1) -> list[str]:
    """postcat of every message in Postfix's queue, once ``count`` are there."""
    deadline = time.monotonic() + 20
    ids: list[str] = []
    while time.monotonic() < deadline:
        out = subprocess.run(["postqueue", "-c", str(postfix.conf), "-j"], capture_output=True,
                             text=True, timeout=20).stdout
        ids = [json.loads(line)["queue_id"] for line in out.splitlines() if line.strip()]
        if len(ids) >= count:
            break
        time.sleep(0.2)
    assert len(ids) >= count, f"{len(ids)} messages queued, expected {count}"
    return [subprocess.run(["postcat", "-c", str(postfix.conf), "-q", i], capture_output=True,
                           text=True, timeout=20).stdout for i in ids]


def test_dsn_parameters_reach_postfix_as_sent(downstream, run_gateway):
    postfix = start_postfix(downstream, {})
    try:
        gw = run_gateway(postfix)
        port = gw.ports["inbound"]
        assert advertised_after_learning(port, "dsn")
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
            c.ehlo("sender.example")
            # The envelope id is xtext kept as sent: case and "+2B" untouched (§4.4).
            code, _ = c.mail("someone@other.example",
                             ["RET=HDRS", "ENVID=Msg+2BId-42.abc", "SIZE=60", "BODY=8BITMIME"])
            assert code == 250
            code, _ = c.rcpt("bob@acme.example",
                             ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;Bob+40acme.example"])
            assert code == 250
            code, msg = c.data(MESSAGE)
            assert code == 250 and b"queued as" in msg
        [text] = queued(postfix)
    finally:
        postfix.stop()
    # Postfix decodes the xtext (+2B is "+"); a value upper-cased on the way (as
    # aiosmtpd does) would read MSG+ID-42.ABC here.
    assert "named_attribute: envelope_id=Msg+Id-42.abc\n" in text, text
    assert "named_attribute: ret_flags=2\n" in text, text  # Postfix's DSN_RET_HDRS
    # Postfix's flags: SUCCESS 2 + DELAY 8 (src/global/dsn_mask.h).
    assert "named_attribute: notify_flags=10\n" in text, text
    # Postfix's default would be the recipient itself, lower case: this is our ORCPT.
    assert "named_attribute: dsn_orig_rcpt=rfc822;Bob@acme.example\n" in text, text
    assert "named_attribute: encoding=8bit\n" in text, text  # BODY=8BITMIME arrived


def test_unqualified_postmaster_takes_dsn_parameters_too(downstream, run_gateway):
    # RFC 5321 §4.1.1.3: <Postmaster> needs no domain; its NOTIFY must not be lost.
    postfix = start_postfix(downstream, {})
    try:
        gw = run_gateway(postfix)
        port = gw.ports["inbound"]
        assert advertised_after_learning(port, "dsn")
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
            c.ehlo("sender.example")
            assert c.mail("someone@other.example")[0] == 250
            code, msg = c.docmd("RCPT TO:<Postmaster> NOTIFY=FAILURE")
            assert code == 250, msg
            assert c.data(MESSAGE)[0] == 250
        [text] = queued(postfix)
    finally:
        postfix.stop()
    assert "recipient: postmaster@mx.gateway.test" in text, text
    assert "named_attribute: notify_flags=4\n" in text, text  # Postfix: FAILURE is 4


def test_without_dsn_downstream_the_gateway_offers_none_and_refuses_the_parameters(
        downstream, run_gateway):
    postfix = start_postfix(downstream, {"smtpd_discard_ehlo_keywords": "dsn, 8bitmime"})
    try:
        gw = run_gateway(postfix)
        port = gw.ports["inbound"]
        ehlo_keywords(port)  # the first EHLO sends the gateway to learn Postfix's keywords
        time.sleep(1.0)
        assert "dsn" not in ehlo_keywords(port)
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
            c.ehlo("sender.example")
            code, msg = c.docmd("MAIL FROM:<someone@other.example> RET=FULL")
            assert (code, msg[:5]) == (555, b"5.5.4"), msg
            # BODY= is ours to accept (we offer 8BITMIME), not Postfix's to hear.
            assert c.mail("someone@other.example", ["BODY=8BITMIME"])[0] == 250
            code, msg = c.docmd("RCPT TO:<bob@acme.example> NOTIFY=NEVER")
            assert (code, msg[:5]) == (555, b"5.5.4"), msg
            # Without the parameters the same mail goes through.
            assert c.rcpt("bob@acme.example")[0] == 250
            assert c.data(MESSAGE)[0] == 250
        [text] = queued(postfix)
    finally:
        postfix.stop()
    assert "envelope_id=" not in text and "ret_flags=" not in text, text
    # No NOTIFY reached Postfix; its dsn_orig_rcpt is its own default (the address).
    assert "notify_flags=" not in text, text
    assert "encoding=8bit" not in text, text


@pytest.mark.parametrize("command, why", [
    ("MAIL FROM:<someone@other.example> RET=PARTIAL", b"RET"),
    ("MAIL FROM:<someone@other.example> ENVID=" + "x" * 101, b"ENVID"),
    ("MAIL FROM:<someone@other.example> RET=FULL RET=HDRS", b"RET"),
])
def test_malformed_dsn_parameters_are_refused_as_syntax_errors(downstream, run_gateway,
                                                               command, why):
    postfix = start_postfix(downstream, {})
    try:
        gw = run_gateway(postfix)
        port = gw.ports["inbound"]
        assert advertised_after_learning(port, "dsn")
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
            c.ehlo("sender.example")
            code, msg = c.docmd(command)
    finally:
        postfix.stop()
    assert (code, msg[:5]) == (501, b"5.5.4") and why in msg, msg
