"""MX screening on the wire (issue 20): a real NSD serves a blocklist and an
allowlist zone with several return codes, and reverse DNS; clients speak SMTP
through a PROXY header, so each test chooses the address the gateway sees."""

import contextlib
import io
import json
import logging
import smtplib
import socket
import time

import pytest

from tests.conftest import customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.test_proxy_protocol import ProxiedSMTP, proxy_v1

pytest_plugins = ("tests.support.authdns",)

ZONES = {
    # RFC 5782: the client's octets reversed under the zone.  zen-like codes:
    # 127.0.0.2 SBL, 127.0.0.4 XBL, 127.0.0.10 PBL.
    "bl.test": """
        2.2.0.192   A 127.0.0.2
        4.2.0.192   A 127.0.0.4
        10.2.0.192  A 127.0.0.10
        11.2.0.192  A 127.0.0.2
        9.2.0.192   A 127.0.0.3
        255.2.0.192 A 127.255.255.254
    """,
    "wl.test": """
        11.2.0.192  A 127.0.10.2
        12.2.0.192  A 127.0.10.0
    """,
    "2.0.192.in-addr.arpa": """
        7   PTR good.client.test.
        8   PTR forged.client.test.
        9   PTR listed.client.test.
    """,
    "client.test": """
        good    A 192.0.2.7
        forged  A 192.0.2.99
        listed  A 192.0.2.9
    """,
}

SCREENING = {
    "dnsbl": {
        "sites": [
            {"zone": "bl.test", "weight": 3, "codes": ["127.0.0.2-127.0.0.9"]},
            {"zone": "bl.test", "weight": 1, "codes": ["127.0.0.10-127.0.0.11"]},
            {"zone": "wl.test", "weight": -5, "codes": ["127.0.10.1-127.0.10.3"]},
        ],
        "refuse_at": 3,
        "allowlist_at": -1,
    },
    "dynamic_ranges": ["198.51.100.0/24"],
    "fcrdns": True,
}


def start_mx(tmp_path, downstream, cert_files, password_hash, dns_port, screening, policies=None,
             **extra):
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=policies or customer_policies(password_hash), cert=cert_files,
        extra={"listeners": {"inbound": {"proxy_protocol": {"from": ["127.0.0.0/8"]}}}, "screening": screening,
               "dns": {"nameservers": ["127.0.0.1"], "port": dns_port, "timeout": 1}, **extra})
    return gw.start()


@pytest.fixture
def zones(authdns_factory):
    return authdns_factory(ZONES)


@pytest.fixture
def mx(tmp_path, zones, downstream, cert_files, password_hash):
    gw = start_mx(tmp_path, downstream, cert_files, password_hash, zones.port, SCREENING)
    try:
        yield gw
    finally:
        gw.stop()


def eventually(check, seconds=5.0):
    """The log lines are written as the gateway closes the connection: wait for them."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)


def rcpt_from(gw, client_ip, rcpt="bob@acme.example"):
    with ProxiedSMTP(client_ip, "127.0.0.1", gw.ports["inbound"], timeout=15) as c:
        c.ehlo("client.example")
        c.mail("someone@sender.example")
        return c.rcpt(rcpt)


def send_from(gw, client_ip, rcpt="bob@acme.example"):
    with ProxiedSMTP(client_ip, "127.0.0.1", gw.ports["inbound"], timeout=15) as c:
        c.ehlo("client.example")
        c.mail("someone@sender.example")
        assert c.rcpt(rcpt)[0] == 250
        return c.data(b"From: someone@sender.example\r\nSubject: hi\r\n\r\nhello\r\n")


def test_listed_client_is_refused_at_rcpt_with_the_list_named(mx, downstream, caplog):
    caplog.set_level(logging.INFO, logger="portcullis")
    code, text = rcpt_from(mx, "192.0.2.2")
    assert code == 554
    assert text.startswith(b"5.7.1 Service unavailable; client [192.0.2.2] listed by bl.test")
    eventually(lambda: "screening=" in caplog.text and "rcpt_rules=" in caplog.text)
    assert "rcpt_rules=screening.dnsbl" in caplog.text
    # The score and the listing on the connection's line.
    assert "dnsbl_score=3 listed=bl.test:127.0.0.2" in caplog.text


def test_a_listed_client_is_refused_again_from_what_was_found_before(mx, zones):
    assert rcpt_from(mx, "192.0.2.9")[0] == 554
    # No DNS now, and the resolver's cache emptied: the next connection is judged
    # from what the first one's look-ups found, kept until their TTL ends.
    zones.stop()
    mx.run(_clear(mx.runtime.resolver))
    sent = mx.runtime.resolver.queries_sent
    assert rcpt_from(mx, "192.0.2.9")[0] == 554
    assert mx.runtime.resolver.queries_sent == sent


async def _clear(resolver):
    resolver.clear_cache()


def test_weights_add_up_and_return_codes_filter(mx):
    # PBL only (weight 1): below the threshold, the mail gets in.
    assert rcpt_from(mx, "192.0.2.10")[0] == 250
    # XBL (127.0.0.4, in the 2-9 range): weight 3, refused.
    assert rcpt_from(mx, "192.0.2.4")[0] == 554
    # A code outside every filter (an error code of the list) counts for nothing.
    assert rcpt_from(mx, "192.0.2.255")[0] == 250


def test_allowlist_weight_cancels_a_listing(mx):
    # Listed (3) and on the allowlist with a trusted code (-5): score -2.
    assert rcpt_from(mx, "192.0.2.11")[0] == 250


def test_abuse_and_postmaster_are_reachable_from_a_listed_client(mx, downstream):
    assert send_from(mx, "192.0.2.2", "abuse@acme.example")[0] == 250
    assert rcpt_from(mx, "192.0.2.2", "postmaster")[0] == 250
    assert [m.rcpt_tos for m in downstream.messages] == [["abuse@acme.example"]]


def test_refusal_is_on_the_decision_trail(mx):
    with ProxiedSMTP("192.0.2.2", "127.0.0.1", mx.ports["inbound"], timeout=15) as c:
        c.ehlo("client.example")
        c.mail("someone@sender.example")
        code, text = c.rcpt("bob@acme.example")
    assert code == 554
    txid = text.decode().rsplit("(id ", 1)[1].rstrip(")")
    runtime = mx.runtime
    runtime.journal and mx.run(runtime.journal.drain())
    entries = mx.run(runtime.metering.store.journal_find(txid))
    step = entries[-1].record["steps"][-1]
    assert step["rule"] == "screening.dnsbl"
    assert step["facts"]["score"] == 3
    assert step["facts"]["listed"] == ["bl.test:127.0.0.2"]


def test_dynamic_range_is_sent_to_submission_and_counted_per_address(mx):
    code, text = rcpt_from(mx, "198.51.100.23")
    assert code == 550
    assert b"5.7.1" in text and b"587 or 465" in text
    assert rcpt_from(mx, "198.51.100.23")[0] == 550
    metrics = mx.runtime.metrics
    assert metrics.screening_refusals.labels("screening.dynamic_range")._value.get() == 2
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = mx.run(mx.runtime.metering.store.events("198.51.100.23"))
        if len(events) == 2:
            break
        time.sleep(0.05)
    assert [e.kind for e in events] == ["screening.dynamic_range"] * 2
    assert rcpt_from(mx, "198.51.100.24")[0] == 550
    # The abuse desk's report, by address, from the same store.
    from gateway.cli import main

    eventually(lambda: len(mx.run(mx.runtime.metering.store.events("198.51.100.24"))) == 1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["screening", "-c", str(mx.config_path), "dynamic", "--json"]) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["address"], r["refusals"]) for r in rows] == [("198.51.100.23", 2),
                                                            ("198.51.100.24", 1)]


def test_fcrdns_is_recorded_as_iprev_in_authentication_results(mx, downstream):
    assert send_from(mx, "192.0.2.7")[0] == 250
    assert send_from(mx, "192.0.2.8")[0] == 250
    good, forged = (m.content for m in downstream.messages)
    assert b"iprev=pass policy.iprev=192.0.2.7 (good.client.test)" in good
    assert b"iprev=fail policy.iprev=192.0.2.8" in forged


def test_dns_server_down_mail_flows(tmp_path, zones, downstream, cert_files, password_hash):
    zones.stop()
    gw = start_mx(tmp_path, downstream, cert_files, password_hash, zones.port, SCREENING)
    try:
        started = time.monotonic()
        assert send_from(gw, "192.0.2.2")[0] == 250  # listed, but nobody can say so
        assert time.monotonic() - started < 10
    finally:
        gw.stop()
    assert len(downstream.messages) == 1
    assert b"iprev=temperror" in downstream.messages[0].content


def test_customer_may_be_stricter_never_looser(tmp_path, zones, downstream, cert_files,
                                               password_hash):
    policies = customer_policies(password_hash)
    # acme refuses at a PBL listing (score 1) and without FCrDNS; globex tries to be
    # looser than the gateway, which it cannot.
    policies["acme"]["inbound"] = {"screening": {"dnsbl_refuse_at": 1, "require_fcrdns": True}}
    policies["globex"]["inbound"] = {"screening": {"dnsbl_refuse_at": 50}}
    gw = start_mx(tmp_path, downstream, cert_files, password_hash, zones.port, SCREENING,
                  policies=policies)
    try:
        globex = policies["globex"]["domains"][0]
        assert rcpt_from(gw, "192.0.2.10", "bob@acme.example")[0] == 554
        assert rcpt_from(gw, "192.0.2.10", f"bob@{globex}")[0] == 250
        assert rcpt_from(gw, "192.0.2.2", f"bob@{globex}")[0] == 554
        code, text = rcpt_from(gw, "192.0.2.8", "bob@acme.example")
        assert (code, text[:6]) == (550, b"5.7.25")
        assert rcpt_from(gw, "192.0.2.7", "bob@acme.example")[0] == 250
    finally:
        gw.stop()


# --- early talkers -------------------------------------------------------------------

@pytest.fixture
def delayed(tmp_path, zones, downstream, cert_files, password_hash):
    gw = start_mx(tmp_path, downstream, cert_files, password_hash, zones.port,
                  {"greeting": {"delay": 0.5}})
    try:
        yield gw
    finally:
        gw.stop()


def read_reply(sock):
    data = b""
    while True:
        data += sock.recv(4096)
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] == b" ":
            return data


def test_delayed_greeting_is_multiline_and_a_patient_client_is_served(delayed):
    with socket.create_connection(("127.0.0.1", delayed.ports["inbound"]), timeout=10) as s:
        s.sendall(proxy_v1("192.0.2.50"))
        greeting = read_reply(s)
        assert greeting.startswith(b"220-mx.gateway.test")
        assert b"\r\n220 mx.gateway.test" in greeting
        s.sendall(b"EHLO client.example\r\n")
        assert read_reply(s).startswith(b"250")
        s.sendall(b"MAIL FROM:<a@sender.example>\r\n")
        read_reply(s)
        s.sendall(b"RCPT TO:<bob@acme.example>\r\n")
        assert read_reply(s).startswith(b"250")


def test_pregreet_is_refused_at_rcpt_and_counted(delayed):
    with socket.create_connection(("127.0.0.1", delayed.ports["inbound"]), timeout=10) as s:
        # A bot does not wait for the greeting: its whole transaction at once.
        s.sendall(proxy_v1("192.0.2.51") + b"EHLO bot\r\nMAIL FROM:<a@sender.example>\r\n"
                  b"RCPT TO:<bob@acme.example>\r\nQUIT\r\n")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    assert b"550 5.5.1 Protocol error: the client talked before the greeting" in out
    assert delayed.runtime.metrics.screening_refusals.labels(
        "screening.pregreet")._value.get() == 1


def test_greeting_delay_is_off_by_default(mx):
    with socket.create_connection(("127.0.0.1", mx.ports["inbound"]), timeout=10) as s:
        s.sendall(proxy_v1("192.0.2.50"))
        assert read_reply(s).startswith(b"220 mx.gateway.test")


# --- per-client limits ----------------------------------------------------------------

def test_concurrent_connections_per_address_get_421(tmp_path, zones, downstream, cert_files,
                                                     password_hash):
    screening = {"limits": {"connections_per_address": 2, "connections_per_24": 3},
                 "allowlist": ["203.0.113.0/28"]}
    gw = start_mx(tmp_path, downstream, cert_files, password_hash, zones.port, screening)
    try:
        first = [ProxiedSMTP("192.0.2.60", "127.0.0.1", gw.ports["inbound"], timeout=10)
                 for _ in range(2)]
        with pytest.raises(smtplib.SMTPConnectError) as third:
            ProxiedSMTP("192.0.2.60", "127.0.0.1", gw.ports["inbound"], timeout=10)
        assert third.value.smtp_code == 421
        assert b"4.7.0 Too many connections from your address" in third.value.smtp_error
        # Another address of the same /24 takes the network's last slot, then not one more.
        other = ProxiedSMTP("192.0.2.61", "127.0.0.1", gw.ports["inbound"], timeout=10)
        with pytest.raises(smtplib.SMTPConnectError) as net:
            ProxiedSMTP("192.0.2.62", "127.0.0.1", gw.ports["inbound"], timeout=10)
        assert b"from your network" in net.value.smtp_error
        # Allowlisted networks bypass the limits.
        allowed = [ProxiedSMTP("203.0.113.5", "127.0.0.1", gw.ports["inbound"], timeout=10)
                   for _ in range(4)]
        for c in [*first, other, *allowed]:
            c.quit()
        # Closed connections give their slots back.
        deadline = time.monotonic() + 5
        while True:
            try:
                ProxiedSMTP("192.0.2.60", "127.0.0.1", gw.ports["inbound"], timeout=10).quit()
                break
            except smtplib.SMTPConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        gw.stop()


def test_message_and_recipient_rates_get_421(tmp_path, zones, downstream, cert_files,
                                             password_hash):
    screening = {"limits": {"messages_per_minute": 2, "recipients_per_minute": 3,
                            "connections_per_minute": 4}}
    gw = start_mx(tmp_path, downstream, cert_files, password_hash, zones.port, screening)
    try:
        port = gw.ports["inbound"]
        with ProxiedSMTP("192.0.2.70", "127.0.0.1", port, timeout=10) as c:
            c.ehlo("client.example")
            for _ in range(2):
                assert c.mail("a@sender.example")[0] == 250
                c.rset()
            code, text = c.mail("a@sender.example")
            assert (code, text[:5]) == (421, b"4.7.0")
        with ProxiedSMTP("192.0.2.71", "127.0.0.1", port, timeout=10) as c:
            c.ehlo("client.example")
            c.mail("a@sender.example")
            assert [c.rcpt(f"bob{i}@acme.example")[0] for i in range(3)] == [250] * 3
            code, text = c.rcpt("bob9@acme.example")
            assert code == 421 and b"Too many recipients" in text
        # Two connections from .70 and .71 so far; .72 may open four in a minute.
        for _ in range(4):
            ProxiedSMTP("192.0.2.72", "127.0.0.1", port, timeout=10).quit()
        with pytest.raises(smtplib.SMTPConnectError) as fifth:
            ProxiedSMTP("192.0.2.72", "127.0.0.1", port, timeout=10)
        assert b"Too many new connections" in fifth.value.smtp_error
    finally:
        gw.stop()


# --- across worker processes ----------------------------------------------------------

def test_concurrent_limit_is_exact_across_two_worker_processes(tmp_path, downstream,
                                                               password_hash):
    """`serve --workers 2`: the connection slots are in the shared store, so the
    limit holds for the gateway, not for each worker (which would let 2x in)."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    from tests.support.ports import free_port
    from tests.support.serve_process import eventually

    policy = tmp_path / "policy"
    policy.mkdir()
    for name, p in customer_policies(password_hash).items():
        (policy / f"{name}.yaml").write_text(yaml.safe_dump(p))
    port = free_port()
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump({
        "hostname": "mx.test", "listeners": {"inbound": {"port": port}},
        "downstream": {"inbound": downstream.url}, "policy_dir": "policy",
        "dns": {"nameservers": ["127.0.0.1"], "port": free_port(), "timeout": 1},
        "limits": {"shutdown_grace": 2},
        "screening": {"limits": {"connections_per_address": 3}}}))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c",
                             str(tmp_path / "gateway.yaml"), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    held = []
    try:
        assert eventually(lambda: smtplib.SMTP("127.0.0.1", port, timeout=5).quit())
        time.sleep(0.5)  # the probe's slot is given back as its connection closes
        greetings = []
        for _ in range(8):  # SO_REUSEPORT spreads them over both workers by source port
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(s)
            greetings.append(s.recv(1024)[:9])
        assert sorted(greetings) == [b"220 mx.te"] * 3 + [b"421 4.7.0"] * 5
        for s in held:
            s.close()
        held.clear()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        log = proc.stderr.read()
        served_by = {line.split()[2] for line in log.splitlines()
                     if "cid=" in line and "listener=inbound" in line}
        assert len(served_by) == 2, log  # both workers took part
    finally:
        for s in held:
            s.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
