"""`portcullis audit relay --prove`: real Postfix instances, one an open relay (it trusts all
of 127/8), one closed; proven open only when the tagged message reaches the listener."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.audit.listener import AuditListener
from gateway.audit.relay import NOT_ARRIVED, PROVEN, REFUSED_AT_DATA, audit_relay, judge_proof
from gateway.audit.relay_proof import prove_relay
from gateway.audit.smtp_client import SMTPReply
from tests.support.ports import free_port
from tests.support.postfix import PostfixInstance, postfix_available

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix_available(), reason="needs Debian's postfix, run as root"),
]

TARGET = "target.example"
PROOF = "proof.example"


def start_postfix(address: str, listener_port: int, *, open_relay: bool) -> PostfixInstance:
    """Everything Postfix sends goes to the audit listener (relayhost), as mail for the
    prove domain would through its MX.  Open: it trusts every 127/8 client; closed: it
    relays for nobody and takes mail only for target.example."""
    return PostfixInstance(
        free_port(), f"[127.0.0.1]:{listener_port}", relay_domains=[TARGET], address=address,
        extra={"mynetworks": "127.0.0.0/8" if open_relay else "192.0.2.0/24",
               "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
               # Postfix slows down a client that collects errors (tarpitting), as the
               # battery does on a closed server: not in a test.
               "smtpd_error_sleep_time": "0", "smtpd_soft_error_limit": "100",
               "smtpd_hard_error_limit": "100",
               "queue_run_delay": "1s", "maximal_backoff_time": "1s",
               "minimal_backoff_time": "1s"},
    ).start()


@pytest.fixture(scope="module")
def relays():
    listener_port = free_port()
    open_one = start_postfix("127.0.0.6", listener_port, open_relay=True)
    closed_one = start_postfix("127.0.0.7", listener_port, open_relay=False)
    yield listener_port, open_one, closed_one
    open_one.stop()
    closed_one.stop()


@pytest.mark.asyncio
async def test_open_postfix_relay_is_proven_open_by_the_message_arriving(relays):
    listener_port, open_one, _ = relays
    audit = await audit_relay(open_one.address, open_one.port, helo="audit.test",
                              target_domain=TARGET, third_party_domain=PROOF, reply_timeout=5)
    assert audit.is_open and audit.greeting.text.startswith("postfix.test")
    async with AuditListener("127.0.0.1", listener_port) as listener:
        proven = await prove_relay(audit, listener, helo="audit.test", reply_timeout=5, wait=20)
    assert len(proven.proofs) == 3
    assert [p.verdict for p in proven.proofs] == [PROVEN] * 3
    first = proven.proofs[0]
    assert first.probe.recipient == f"relaytest@{PROOF}"
    # The evidence: Postfix itself delivered the tagged message to the listener.
    assert first.arrival.peer.startswith("127.0.0.")
    assert first.token in first.arrival.message
    assert f"<relaytest@{PROOF}>" in first.arrival.recipients[0]
    assert any(line.startswith("C: EHLO postfix.test") for line in first.arrival.transcript)


@pytest.mark.asyncio
async def test_closed_postfix_is_closed_and_nothing_is_sent(relays):
    listener_port, _, closed_one = relays
    audit = await audit_relay(closed_one.address, closed_one.port, helo="audit.test",
                              target_domain=TARGET, third_party_domain=PROOF, reply_timeout=5)
    assert not audit.is_open and not audit.error
    assert audit.results[0].verdict == "control: accepted"
    stranger = [r for r in audit.results[1:] if r.probe.recipient == f"relaytest@{PROOF}"]
    assert stranger and all(str(r.rcpt).startswith("554 5.7.1") and "Relay access denied"
                            in str(r.rcpt) for r in stranger)
    async with AuditListener("127.0.0.1", listener_port) as listener:
        proven = await prove_relay(audit, listener, helo="audit.test", reply_timeout=5, wait=1)
    assert proven.proofs == () and listener.connections == 0


def test_cli_prove_reports_proven_and_exits_1(relays):
    listener_port, open_one, _ = relays
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "relay", f"{open_one.address}:{open_one.port}",
         "--helo", "audit.test", "--target-domain", TARGET, "--prove-domain", PROOF,
         "--listen", f"127.0.0.1:{listener_port}", "--prove-wait", "20", "--timeout", "5"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "PROVEN: 3 tagged message(s) arrived" in out.stdout
    assert "proof, third-party sender to third party: PROVEN OPEN (arrived from 127.0.0." in out.stdout


def test_cli_prove_without_listen_is_one_line_and_exit_2():
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "relay", "127.0.0.1:1", "--prove-domain", PROOF],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--listen" in out.stderr


@pytest.mark.parametrize(
    ("data", "arrived", "error", "verdict"),
    [
        (250, True, "", PROVEN),
        (250, False, "", NOT_ARRIVED),  # a 250 is a promise, not a delivery
        (554, False, "", REFUSED_AT_DATA),
        (None, False, "connection reset", "could not send"),
        (None, True, "connection reset", PROVEN),  # it arrived all the same
    ],
)
def test_judge_proof(data, arrived, error, verdict):
    from gateway.audit.listener import Arrival

    reply = SMTPReply(data, ("ok",)) if data else None
    arrival = Arrival("t", "127.0.0.1:1", ()) if arrived else None
    assert judge_proof(reply, arrival, error) == verdict

