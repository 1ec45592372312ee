"""`portcullis audit relay` against our own listeners finds nothing open."""

import asyncio
import subprocess
import sys

from gateway.audit.relay import audit_relay


def test_audit_of_the_inbound_listener_finds_nothing_open(gateway, downstream):
    audit = asyncio.run(audit_relay("127.0.0.1", gateway.ports["inbound"], target_domain="acme.example"))
    assert not audit.error
    assert not audit.is_open
    assert audit.results[0].verdict == "control: accepted"  # it did reach a real MX
    assert len(audit.results) > 20
    assert downstream.messages == []  # no DATA was ever sent


def test_audit_of_the_submission_listeners_finds_nothing_open(gateway):
    for port, kwargs in ((gateway.ports["submission"], {"starttls": True}),
                         (gateway.ports["submissions"], {"implicit_tls": True})):
        audit = asyncio.run(audit_relay("127.0.0.1", port, target_domain="acme.example", **kwargs))
        assert not audit.error and not audit.is_open


def test_audit_command_exits_0_and_prints_the_table(gateway):
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "relay",
                          f"127.0.0.1:{gateway.ports['inbound']}", "--target-domain", "acme.example"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "percent" in out.stdout.lower()
