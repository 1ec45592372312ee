"""Behind a balancer: the PROXY header (v1 and v2) gives the client address that
checks, limits and logs use, not the balancer's."""

import base64
import ipaddress
import logging
import smtplib
import socket
import struct

import pytest

from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest

pytest_plugins = ("tests.support.authdns",)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(src: str, dst: str = "127.0.0.1") -> bytes:
    return f"PROXY TCP4 {src} {dst} 40000 25\r\n".encode()


def proxy_v2(src: str, dst: str = "127.0.0.1") -> bytes:
    addresses = (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
                 + struct.pack("!HH", 40000, 25))
    # version 2, command PROXY; AF_INET + STREAM
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


@pytest.fixture
def proxied(tmp_path, authdns_factory, downstream, cert_files, password_hash):
    # SPF authorises only 198.51.100.7: a pass proves the check saw the PROXY address.
    dns = authdns_factory({"sender.test": '@ TXT "v=spf1 ip4:198.51.100.7 -all"'})
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"listeners": {"inbound": {"proxy_protocol": {"from": ["127.0.0.0/8"]}}},
               "dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 2}})
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def converse(port: int, header: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(header + b"EHLO client.example\r\nMAIL FROM:<a@sender.test>\r\n"
                  b"RCPT TO:<bob@acme.example>\r\nDATA\r\nFrom: a@sender.test\r\n\r\nhi\r\n.\r\n"
                  b"QUIT\r\n")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


@pytest.mark.parametrize("make_header", [proxy_v1, proxy_v2], ids=["v1", "v2"])
def test_proxy_header_sets_the_client_address_for_checks_received_and_log(
        proxied, downstream, make_header, caplog):
    caplog.set_level(logging.INFO, logger="portcullis.transaction")
    out = converse(proxied.ports["inbound"], make_header("198.51.100.7"))
    assert b"250 2.0.0 queued" in out, out
    content = downstream.messages[0].content
    assert b"([198.51.100.7])" in content.split(b"\r\n")[0]
    assert b"spf=pass" in content
    assert "client=198.51.100.7" in caplog.text


def test_without_a_proxy_header_the_connection_is_refused(proxied, downstream):
    with socket.create_connection(("127.0.0.1", proxied.ports["inbound"]), timeout=15) as s:
        s.sendall(b"EHLO client.example\r\n")
        assert s.recv(1024) == b""  # closed, no greeting: nobody skips the balancer
    assert downstream.messages == []


def test_proxy_protocol_on_implicit_tls_is_a_config_error(tmp_path, capsys):
    from gateway.cli import main

    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "a.yaml").write_text("customer: a\ndomains: [a.example]\n")
    (tmp_path / "g.yaml").write_text(
        "hostname: mx.test\nlisteners: {submissions: {port: 2465, proxy_protocol: {from: [10.0.0.0/8]}}}\n"
        "downstream: {outbound: 'smtp://127.0.0.1:25'}\npolicy_dir: policy\n")
    assert main(["check-config", "-c", str(tmp_path / "g.yaml")]) == 2
    assert "listeners.submissions.proxy_protocol: not possible" in capsys.readouterr().err


def write_config(tmp_path, listener: str) -> str:
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "a.yaml").write_text("customer: a\ndomains: [a.example]\n")
    (tmp_path / "g.yaml").write_text(
        f"hostname: mx.test\nlisteners: {{inbound: {{port: 2525, {listener}}}}}\n"
        "downstream: {inbound: 'smtp://127.0.0.1:25'}\npolicy_dir: policy\n")
    return str(tmp_path / "g.yaml")


def test_proxy_protocol_true_is_a_config_error_naming_the_networks_to_list(tmp_path, capsys):
    from gateway.cli import main

    # `true` once meant "trust any peer to name the client": it must not pass silently.
    assert main(["check-config", "-c", write_config(tmp_path, "proxy_protocol: true")]) == 2
    err = capsys.readouterr().err
    assert "listeners.inbound.proxy_protocol" in err
    assert "proxy_protocol: {from: [10.0.0.0/8]}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("networks", ["[]", "[10.0.0.1/8]", "[not-a-network]"])
def test_proxy_protocol_from_needs_real_networks(tmp_path, capsys, networks):
    from gateway.cli import main

    path = write_config(tmp_path, f"proxy_protocol: {{from: {networks}}}")
    assert main(["check-config", "-c", path]) == 2
    assert "listeners.inbound.proxy_protocol.from" in capsys.readouterr().err


def test_proxy_protocol_false_is_off(tmp_path, capsys):
    from gateway.cli import main

    assert main(["check-config", "-c", write_config(tmp_path, "proxy_protocol: false")]) == 0


@pytest.mark.parametrize(("peer", "trusted"), [
    ("10.1.2.3", True), ("10.255.255.255", True), ("11.0.0.1", False),
    ("2001:db8::7", True), ("2001:db9::7", False),
    ("::ffff:10.9.9.9", True),  # a v4 balancer seen on a dual-stack socket
    ("fe80::1%eth0", False), ("unknown", False),
])
def test_only_peers_in_the_balancer_networks_are_trusted(peer, trusted):
    from gateway.config.model import ProxyProtocol

    rule = ProxyProtocol.model_validate({"from": ["10.0.0.0/8", "2001:db8::/32"]})
    assert rule.trusts(peer) is trusted


@pytest.fixture
def proxied_from_elsewhere(tmp_path, downstream, cert_files, password_hash):
    # Only 127.0.0.2 is a balancer: the tests connect from 127.0.0.1.
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"listeners": {"inbound": {"proxy_protocol": {"from": ["127.0.0.2"]}}}})
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.mark.parametrize("header", [b"", proxy_v1("198.51.100.7"), proxy_v2("198.51.100.7")],
                         ids=["none", "v1", "v2"])
def test_a_peer_outside_the_balancer_networks_is_refused_and_logged(
        proxied_from_elsewhere, downstream, header, caplog):
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", proxied_from_elsewhere.ports["inbound"]),
                                  timeout=10) as s:
        s.sendall(header)
        out = s.recv(4096)
        assert out.startswith(b"554 5.7.1 "), out
        assert b"load balancer" in out
        try:  # and closed (reset, when the header it never read was still queued)
            assert s.recv(4096) == b""
        except ConnectionResetError:
            pass
    assert downstream.messages == []
    assert "peer 127.0.0.1 is not in proxy_protocol.from, refused" in caplog.text
    # The connection's line names the peer, never the address the header claimed.
    assert "client=198.51.100.7" not in caplog.text
    assert "ended=refused_proxy" in caplog.text


class ProxiedSMTP(smtplib.SMTP):
    """smtplib through a balancer: the PROXY v1 header goes first on the socket."""

    def __init__(self, client_ip: str, *args, **kwargs):
        self.client_ip = client_ip
        super().__init__(*args, **kwargs)

    def _get_socket(self, host, port, timeout):
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(proxy_v1(self.client_ip))
        return sock


@pytest.fixture
def proxied_submission(tmp_path, downstream, cert_files, password_hash):
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"listeners": {"submission": {"proxy_protocol": {"from": ["127.0.0.1"]}}},
               "lockout": {"ip_failures": 3, "login_failures": 100, "failure_delay": 0}})
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def failed_login(gw, client_tls, client_ip, password="wrong"):
    with ProxiedSMTP(client_ip, "127.0.0.1", gw.ports["submission"], timeout=15) as c:
        c.starttls(context=client_tls)
        c.ehlo("client.example")
        # One AUTH PLAIN: smtplib's login() would try LOGIN too, a second failure.
        c.user, c.password = "alice@acme.example", password
        return c.docmd("AUTH", "PLAIN " + base64.b64encode(c.auth_plain().encode()).decode())


def test_per_ip_lockout_counts_the_address_from_the_proxy_header(proxied_submission, client_tls):
    gw = proxied_submission
    for _ in range(3):
        assert failed_login(gw, client_tls, "198.51.100.7")[0] == 535
    # The real client behind the balancer is locked out ...
    assert failed_login(gw, client_tls, "198.51.100.7")[0] == 454
    # ... not everyone behind the same balancer (the socket peer is 127.0.0.1 for all).
    assert failed_login(gw, client_tls, "203.0.113.9", password="correct horse battery staple")[0] == 235
