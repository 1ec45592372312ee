"""One listener on several addresses, IPv4 and IPv6 (127.0.0.1 and ::1 here)."""

from __future__ import annotations

import logging
import smtplib
import socket
import subprocess
import sys

import pytest
import yaml

from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.serve_process import eventually

PASSWORD = "correct horse battery staple"
MESSAGE = b"From: alice@acme.example\r\nTo: x@elsewhere.example\r\nSubject: v6\r\n\r\nhi\r\n"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _ipv6_loopback(), reason="no ::1 on this host")


@pytest.fixture(scope="module")
def dual_cert(ca, tmp_path_factory):
    # The session certificate names 127.0.0.1 only; STARTTLS to [::1] verifies ::1.
    cert = ca.issue_cert("mx.gateway.test", "localhost", "127.0.0.1", "::1")
    d = tmp_path_factory.mktemp("tls6")
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def dual(tmp_path, downstream, dual_cert, password_hash):
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=dual_cert,
        extra={"listeners": {"inbound": {"address": ["127.0.0.1", "::1"]},
                             "submission": {"address": ["::1", "127.0.0.1"]}}})
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.mark.parametrize(("host", "literal"), [("127.0.0.1", b"[127.0.0.1]"),
                                               ("::1", b"[IPv6:::1]")])
def test_the_mx_takes_mail_on_each_of_its_addresses(dual, downstream, host, literal, caplog):
    caplog.set_level(logging.INFO, logger="portcullis")
    with smtplib.SMTP(host, dual.ports["inbound"], timeout=10,
                      local_hostname="client.example") as client:
        client.sendmail("someone@sender.example", ["bob@acme.example"], b"Subject: x\r\n\r\nhi\r\n")
    received = downstream.messages[0].content.split(b"\r\n")[0]
    # RFC 5321 §4.1.3: an IPv6 client is written as an IPv6 address literal.
    assert received == b"Received: from client.example (" + literal + b")"
    assert f"client={host} " in caplog.text


@pytest.mark.parametrize("host", ["::1", "127.0.0.1"])
def test_submission_authenticates_on_each_address(dual, downstream, client_tls, host):
    with smtplib.SMTP(host, dual.ports["submission"], timeout=10,
                      local_hostname="client.example") as client:
        client.starttls(context=client_tls)
        client.login("alice@acme.example", PASSWORD)
        refused = client.sendmail("alice@acme.example", ["x@elsewhere.example"], MESSAGE)
    assert refused == {}
    assert len(downstream.messages) == 1
    assert downstream.messages[0].mail_from == "alice@acme.example"


def test_an_address_not_listed_is_not_served(dual):
    # The MX listens on 127.0.0.1 and ::1, not on all of 127/8.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", dual.ports["inbound"]), timeout=3).close()


def test_serve_with_workers_listens_on_every_address(tmp_path, downstream, password_hash):
    policy = tmp_path / "policy"
    policy.mkdir()
    for name, p in customer_policies(password_hash).items():
        (policy / f"{name}.yaml").write_text(yaml.safe_dump(p))
    port = free_port()
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({
        "hostname": "mx.test", "listeners": {"inbound": {"port": port,
                                                         "address": ["127.0.0.1", "::1"]}},
        "downstream": {"inbound": downstream.url}, "policy_dir": "policy",
        "dns": {"nameservers": ["127.0.0.1"], "port": free_port(), "timeout": 1},
        "limits": {"shutdown_grace": 2}}))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c",
                             str(tmp_path / "gateway.yaml"), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        for host in ("127.0.0.1", "::1"):
            assert eventually(lambda h=host: smtplib.SMTP(h, port, timeout=5).noop()[0] == 250), host
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"inbound 127.0.0.1:{port} [::1]:{port}" in out, (out, err)


@pytest.mark.parametrize(("address", "problem"), [
    ("[]", "an IP address or a list of them"),
    ("[mail.example]", "'mail.example' is not an IP address"),
    ("['::1', '0:0:0:0:0:0:0:1']", "::1 is listed twice"),
])
def test_listener_addresses_must_be_distinct_ip_literals(tmp_path, capsys, address, problem):
    from gateway.cli import main

    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "a.yaml").write_text("customer: a\ndomains: [a.example]\n")
    (tmp_path / "g.yaml").write_text(
        f"hostname: mx.test\nlisteners: {{inbound: {{port: 2525, address: {address}}}}}\n"
        "downstream: {inbound: 'smtp://127.0.0.1:25'}\npolicy_dir: policy\n")
    assert main(["check-config", "-c", str(tmp_path / "g.yaml")]) == 2
    err = capsys.readouterr().err
    assert "listeners.inbound.address" in err and problem in err, err
