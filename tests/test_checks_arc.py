"""ARC chain validation: chains sealed by dkimpy with keys served by a real NSD."""

from __future__ import annotations

import asyncio

import dkim
import pytest

from gateway.checks.arc import verify_arc
from gateway.checks.dns import Resolver
from gateway.message import Message
from tests.support.authdns import txt_record
from tests.support.dkim_keys import rsa_key

MESSAGE = (
    b"From: Alice <alice@origin.test>\r\n"
    b"To: list@list.test\r\n"
    b"Subject: to the list\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@origin.test>\r\n"
    b"\r\n"
    b"Hello list.\r\n"
)

pytest_plugins = ("tests.support.authdns",)  # NSD fixtures: authdns_factory, silent_dns, ...


@pytest.fixture(scope="module")
def server(authdns_module_factory):
    return authdns_module_factory({
        "list.test": f"arc._domainkey TXT {txt_record(rsa_key().record)}",
        "fwd.test": f"seal._domainkey TXT {txt_record(rsa_key(2048, 1).record)}",
    })


def seal(message: bytes, sealer: bytes, selector: bytes, key, arc: str) -> bytes:
    """What a list or forwarder does: record its checks in A-R, then add an ARC set."""
    with_ar = b"Authentication-Results: %s; dkim=pass header.d=origin.test; arc=%s\r\n" % (
        sealer, arc.encode())
    return key.arc_sign(with_ar + message, selector, sealer, sealer)


def verify(server, message, port=None, timeout=2.0):
    async def go():
        resolver = Resolver(["127.0.0.1"], port=port or server.port, timeout=timeout)
        return await verify_arc(resolver, Message.parse(message))

    return asyncio.run(go())


def test_message_without_arc_is_none(server):
    assert verify(server, MESSAGE).result == "none"


def test_one_hop_chain_passes(server):
    r = verify(server, seal(MESSAGE, b"list.test", b"arc", rsa_key(), "none"))
    assert (r.result, r.instances, r.sealer, r.sealer_selector) == ("pass", 1, "list.test", "arc")
    assert "dkim=pass" in r.newest_aar


def test_two_hop_chain_passes_and_names_every_sealer(server):
    once = seal(MESSAGE, b"list.test", b"arc", rsa_key(), "none")
    twice = seal(once, b"fwd.test", b"seal", rsa_key(2048, 1), "pass")
    r = verify(server, twice)
    assert (r.result, r.instances, r.sealers) == ("pass", 2, ("fwd.test", "list.test"))


def test_body_changed_after_sealing_fails(server):
    sealed = seal(MESSAGE, b"list.test", b"arc", rsa_key(), "none")
    r = verify(server, sealed.replace(b"Hello list.", b"Buy now."))
    assert r.result == "fail"


def test_chain_whose_newest_seal_says_cv_fail_is_fail_not_none(server):
    # dkimpy's arc_verify returns None for this; RFC 8617 §5.2 makes it a failure.
    broken = seal(MESSAGE, b"list.test", b"arc", rsa_key(), "none").replace(b"Hello", b"Bye")
    resealed = seal(broken, b"fwd.test", b"seal", rsa_key(2048, 1), "fail")
    assert b"cv=fail" in resealed
    keys = {"arc._domainkey.list.test": rsa_key().record.encode(),
            "seal._domainkey.fwd.test": rsa_key(2048, 1).record.encode()}
    cv, _sets, _reason = dkim.arc_verify(
        resealed, dnsfunc=lambda name, timeout=5: keys.get(name.decode().rstrip(".")))
    assert cv is None  # the quirk this test guards against
    r = verify(server, resealed)
    assert r.result == "fail"


def test_seal_by_a_key_not_in_dns_fails(server):
    r = verify(server, seal(MESSAGE, b"list.test", b"nokey", rsa_key(), "none"))
    assert r.result == "fail"


def test_dns_failure_is_temperror(server, silent_dns):
    sealed = seal(MESSAGE, b"list.test", b"arc", rsa_key(), "none")
    assert verify(server, sealed, port=silent_dns.port, timeout=0.3).result == "temperror"
