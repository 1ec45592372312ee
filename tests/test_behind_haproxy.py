"""Behind a real HAProxy speaking PROXY v2, to the MX and to 587.

The clients connect from 127.0.0.2 and 127.0.0.3 (all of 127/8 is on lo);
HAProxy connects to the gateway from 127.0.0.1, the only balancer the gateway
trusts.  What the gateway believes about the client must be what HAProxy says:
SPF, Received, Authentication-Results, the log line and the AUTH lockout's
per-address key."""

from __future__ import annotations

import base64
import logging
import smtplib
import socket

import pytest

from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.haproxy import HAProxy

pytest_plugins = ("tests.support.authdns",)

PASSWORD = "correct horse battery staple"
BALANCER = {"from": ["127.0.0.1/32"]}
MESSAGE = (b"From: someone@sender.test\r\nTo: bob@acme.example\r\nSubject: via the balancer\r\n"
           b"Message-ID: <lb1@sender.test>\r\n\r\nhello\r\n")


@pytest.fixture
def balanced(tmp_path, authdns_factory, downstream, cert_files, password_hash):
    # SPF authorises only 127.0.0.2: pass for that client proves the check saw the
    # address HAProxy reported, not HAProxy's own 127.0.0.1.
    dns = authdns_factory({"sender.test": '@ TXT "v=spf1 ip4:127.0.0.2 -all"'})
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"listeners": {"inbound": {"proxy_protocol": BALANCER},
                             "submission": {"proxy_protocol": BALANCER}},
               "lockout": {"ip_failures": 3, "login_failures": 100, "failure_delay": 0},
               "dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 2}})
    gw.start()
    haproxy = HAProxy(tmp_path, {"mx": gw.ports["inbound"], "submission": gw.ports["submission"]})
    try:
        haproxy.start()
        yield gw, haproxy
    finally:
        haproxy.stop()
        gw.stop()


def from_client(source: str, port: int) -> smtplib.SMTP:
    """An SMTP client whose socket is bound to ``source``, as a customer behind the balancer."""
    return smtplib.SMTP("127.0.0.1", port, timeout=15, source_address=(source, 0),
                        local_hostname="client.example")


def test_mx_client_address_from_haproxy_reaches_spf_received_results_and_log(
        balanced, downstream, caplog):
    gw, haproxy = balanced
    caplog.set_level(logging.INFO, logger="portcullis")
    with from_client("127.0.0.2", haproxy.ports["mx"]) as client:
        client.sendmail("someone@sender.test", ["bob@acme.example"], MESSAGE)
    content = downstream.messages[0].content
    received = content.split(b"\r\n")[0]
    assert received == b"Received: from client.example ([127.0.0.2])", received
    assert b"spf=pass smtp.mailfrom=someone@sender.test" in content
    assert "client=127.0.0.2" in caplog.text
    assert "PROXY from 127.0.0.1 for client 127.0.0.2" in caplog.text


def test_mx_client_outside_the_spf_record_fails_spf_through_the_same_balancer(
        balanced, downstream):
    gw, haproxy = balanced
    # The same balancer, another client: SPF must now see 127.0.0.3 and fail.
    with from_client("127.0.0.3", haproxy.ports["mx"]) as client:
        client.ehlo("client.example")
        client.mail("someone@sender.test")
        client.rcpt("bob@acme.example")
        code, text = client.data(MESSAGE)
    # The default inbound policy tags an SPF fail (docs/inbound.md) rather than refuse it.
    assert code == 250, (code, text)
    content = downstream.messages[0].content
    assert b"spf=fail smtp.mailfrom=someone@sender.test" in content
    assert b"([127.0.0.3])" in content


def test_submission_through_haproxy_authenticates_and_stamps_the_real_client(
        balanced, downstream, client_tls, caplog):
    gw, haproxy = balanced
    caplog.set_level(logging.INFO, logger="portcullis")
    with from_client("127.0.0.2", haproxy.ports["submission"]) as client:
        client.starttls(context=client_tls)
        client.login("alice@acme.example", PASSWORD)
        client.sendmail("alice@acme.example", ["someone@elsewhere.example"],
                        MESSAGE.replace(b"someone@sender.test", b"alice@acme.example"))
    content = downstream.messages[0].content
    assert b"[127.0.0.2]" in content.split(b"\r\n\r\n")[0]
    assert b"[127.0.0.1]" not in content.split(b"\r\n\r\n")[0]
    assert "client=127.0.0.2" in caplog.text and "login=alice@acme.example" in caplog.text


def failed_login(port: int, source: str, client_tls, password: str = "wrong") -> int:
    with from_client(source, port) as client:
        client.starttls(context=client_tls)
        client.ehlo("client.example")
        # One AUTH PLAIN: smtplib's login() would try LOGIN too, a second failure.
        client.user, client.password = "alice@acme.example", password
        return client.docmd("AUTH", "PLAIN " + base64.b64encode(
            client.auth_plain().encode()).decode())[0]


def test_lockout_counts_the_address_haproxy_reports(balanced, client_tls):
    gw, haproxy = balanced
    port = haproxy.ports["submission"]
    for _ in range(3):
        assert failed_login(port, "127.0.0.2", client_tls) == 535
    # That client is locked out (the right password no longer helps) ...
    assert failed_login(port, "127.0.0.2", client_tls, PASSWORD) == 454
    # ... another client behind the same balancer is not.
    assert failed_login(port, "127.0.0.3", client_tls, PASSWORD) == 235


@pytest.mark.parametrize("listener", ["inbound", "submission"])
def test_a_client_skipping_the_balancer_is_refused(balanced, listener, downstream):
    gw, _ = balanced
    # 127.0.0.2 straight to the gateway: not a balancer, so no service, header or not.
    with socket.create_connection(("127.0.0.1", gw.ports[listener]), timeout=10,
                                  source_address=("127.0.0.2", 0)) as s:
        assert s.recv(4096).startswith(b"554 5.7.1 ")
    assert downstream.messages == []
