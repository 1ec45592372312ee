"""Issue 14, defect 9: one large message costs the gateway under 2x its size in peak
memory, inbound with every check and on submission with DKIM signing, and still
arrives byte for byte (signed, with a signature that verifies).  The gateway runs
in its own process; its peak RSS (VmHWM) is a bound, not a timing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dkim
import pytest

from gateway.dkim.keystore import KeyStore, public_record
from tests.support.dkim_keys import rsa_key
from tests.support.gateway_process import (
    DOMAIN,
    GatewayProcess,
    sender_zone,
    signed_inbound_message,
    submitted_message,
)

pytest_plugins = ("tests.support.authdns",)
SIZE = 20_000_000


@pytest.fixture
def process_gateway(tmp_path, downstream, authdns_factory):
    key = rsa_key(2048)
    dns = authdns_factory(sender_zone(key))
    gateway = GatewayProcess(tmp_path, _tree(), downstream_port=downstream.port,
                             dns_port=dns.port).start()
    try:
        yield gateway, key
    finally:
        gateway.stop()


def _tree() -> Path:
    # PORTCULLIS_TREE: run the gateway from another checkout (to see this fail before the fix).
    return Path(os.environ.get("PORTCULLIS_TREE") or Path(__file__).resolve().parent.parent)


def test_large_inbound_message_with_checks_peaks_under_twice_its_size(process_gateway, downstream):
    gateway, key = process_gateway
    message = signed_inbound_message(SIZE, key)
    assert gateway.send_inbound(signed_inbound_message(5000, key))[0] == 250  # warm
    replies = []
    growth = gateway.peak_growth(lambda: replies.append(gateway.send_inbound(message)))
    assert replies[0][0] == 250, replies
    received = downstream.messages[-1].content
    assert received.endswith(message)
    head = received[: len(received) - len(message)]
    assert b"dkim=pass" in head, head  # the body hash was checked, in slabs
    assert growth < 2 * len(message), f"peak grew {growth / len(message):.2f}x the message"


def test_large_submitted_message_signed_peaks_under_twice_its_size(process_gateway, downstream):
    gateway, _ = process_gateway
    message = submitted_message(SIZE)
    assert gateway.send_submission(submitted_message(5000))[0] == 250  # warm
    replies = []
    growth = gateway.peak_growth(lambda: replies.append(gateway.send_submission(message)))
    assert replies[0][0] == 250, replies
    received = downstream.messages[-1].content
    assert received.endswith(message) and received.startswith(b"DKIM-Signature:")
    active = KeyStore.load(gateway.keys_dir).active(DOMAIN, time.time())[0]
    record = public_record(active.private_key).encode()
    assert dkim.verify(received, dnsfunc=lambda name, timeout=5: record)  # dkimpy, independent
    assert growth < 2 * len(message), f"peak grew {growth / len(message):.2f}x the message"
