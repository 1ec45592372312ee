"""In front of a real Postfix that lists the gateway in smtpd_authorized_xclient_hosts
(and ..._xforward_hosts): Postfix's log and Received header show the real client,
its HELO and its login, and our transaction id; a pooled connection carries each
client's own identity.

client (127.0.0.2 / .3) → gateway → Postfix (XCLIENT) → a recording MTA.
"""

from __future__ import annotations

import logging
import re
import smtplib

import pytest

from tests.conftest import PASSWORD, customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.serve_process import eventually

pytestmark = pytest.mark.skipif(not postfix_available(), reason="needs root and Debian's postfix")


@pytest.fixture
def postfix(downstream):
    pf = PostfixInstance(free_port(), f"[127.0.0.1]:{downstream.port}",
                         relay_domains=["acme.example"], recipients=["bob@acme.example"],
                         extra={"smtpd_authorized_xclient_hosts": "127.0.0.1",
                                "smtpd_authorized_xforward_hosts": "127.0.0.1",
                                # Only the gateway, or a client XCLIENT names as logged in, relays.
                                "mynetworks": "127.0.0.1/32",
                                "smtpd_relay_restrictions":
                                    "permit_mynetworks, permit_sasl_authenticated, "
                                    "reject_unauth_destination"}).start()
    try:
        yield pf
    finally:
        pf.stop()


@pytest.fixture
def gw(tmp_path, postfix, cert_files, password_hash):
    url = f"smtp://127.0.0.1:{postfix.port}"
    gateway = GatewayUnderTest(tmp_path, inbound_url=url, outbound_url=url,
                               policies=customer_policies(password_hash), cert=cert_files).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def mx_message(gw, source: str, helo: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=20,
                      source_address=(source, 0), local_hostname=helo) as client:
        client.sendmail("someone@other.example", ["bob@acme.example"],
                        f"From: someone@other.example\r\nSubject: {subject}\r\n\r\nhi\r\n".encode())


def postfix_received(content: bytes) -> bytes:
    """Postfix's Received field (the one above ours), unfolded."""
    fields = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    return next(line for line in fields.split(b"\r\n") if b"by postfix.test" in line)


def test_postfix_sees_the_mx_client_its_helo_and_our_id(gw, postfix, downstream, caplog):
    caplog.set_level(logging.INFO, logger="portcullis.transaction")
    mx_message(gw, "127.0.0.2", "client.example", "first")
    assert eventually(lambda: downstream.messages)
    received = postfix_received(downstream.messages[0].content)
    assert received.startswith(b"Received: from client.example (unknown [127.0.0.2])"), received
    log = postfix.log.read_text()
    assert "client=unknown[127.0.0.2]" in log
    assert "client=localhost[127.0.0.1]" not in log
    # XFORWARD IDENT: our transaction id next to Postfix's queue id.
    txid = re.search(r"txid=(\S+) listener=inbound", caplog.text)
    assert txid and f"orig_queue_id={txid.group(1)}" in log, log


def test_each_client_on_a_reused_connection_is_itself(gw, postfix, downstream):
    mx_message(gw, "127.0.0.2", "first.example", "one")
    mx_message(gw, "127.0.0.3", "second.example", "two")
    assert eventually(lambda: len(downstream.messages) == 2)
    by_subject = {b"one" if b"Subject: one" in m.content else b"two": m.content
                  for m in downstream.messages}
    assert b"from first.example (unknown [127.0.0.2])" in postfix_received(by_subject[b"one"])
    assert b"from second.example (unknown [127.0.0.3])" in postfix_received(by_subject[b"two"])


def test_postfix_sees_the_submission_login_and_relays_for_it(gw, postfix, downstream, client_tls):
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=20,
                      source_address=("127.0.0.3", 0), local_hostname="laptop.example") as client:
        client.starttls(context=client_tls)
        client.login("alice@acme.example", PASSWORD)
        # Outside mynetworks (127.0.0.3): Postfix relays because XCLIENT said who logged in.
        client.sendmail("alice@acme.example", ["bob@acme.example"],
                        b"From: alice@acme.example\r\nSubject: sub\r\n\r\nhi\r\n")
    assert eventually(lambda: downstream.messages)
    received = postfix_received(downstream.messages[0].content)
    assert received.startswith(b"Received: from laptop.example (unknown [127.0.0.3])"), received
    log = postfix.log.read_text()
    assert "client=unknown[127.0.0.3], sasl_method=XCLIENT, sasl_username=alice@acme.example" in log
