"""authenticate_inbound end to end: real NSD, signed messages, evidence → stamp → decision."""

from __future__ import annotations

import asyncio

import pytest

from gateway.checks.dns import Resolver
from gateway.checks.inbound import authenticate_inbound
from gateway.config.inbound import InboundDomainPolicy
from gateway.message import Message
from gateway.rules.inbound import decide_inbound
from gateway.stamps.authresults import stamp_authentication_results
from tests.support.authdns import txt_record
from tests.support.dkim_keys import ed25519_key, rsa_key

SENDER_IP = "192.0.2.1"
OUR_ID = "mx.isp.example"

pytest_plugins = ("tests.support.authdns",)  # NSD fixtures: authdns_factory, silent_dns, ...


def message(from_addr: bytes) -> bytes:
    return (
        b"From: " + from_addr + b"\r\n"
        b"To: bob@isp.example\r\n"
        b"Subject: invoice\r\n"
        b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        b"Message-ID: <42@sender.test>\r\n"
        b"Authentication-Results: mx.isp.example; dkim=pass header.d=bank.test; dmarc=pass\r\n"
        b"\r\n"
        b"Please pay.\r\n"
    )


@pytest.fixture(scope="module")
def server(authdns_module_factory):
    return authdns_module_factory({
        "sender.test": "\n".join([
            '@               TXT "v=spf1 ip4:192.0.2.1 -all"',
            '_dmarc          TXT "v=DMARC1; p=reject"',
            f"rsa._domainkey TXT {txt_record(rsa_key().record)}",
            f"ed._domainkey  TXT {txt_record(ed25519_key().record)}",
        ]),
        "bank.test": '_dmarc TXT "v=DMARC1; p=reject"\n@ TXT "v=spf1 -all"',
    })


def check(server, msg, mail_from="a@sender.test", ip=SENDER_IP, port=None, timeout=2.0):
    async def go():
        resolver = Resolver(["127.0.0.1"], port=port or server.port, timeout=timeout)
        return await authenticate_inbound(resolver, message=Message.parse(msg), mail_from=mail_from,
                                          helo="mx.sender.test", client_ip=ip)

    return asyncio.run(go())


def test_signed_mail_from_an_authorised_server_passes_everything(server):
    signed = ed25519_key().sign(rsa_key().sign(message(b"a@sender.test"), b"rsa", b"sender.test"),
                                b"ed", b"sender.test")
    ev = check(server, signed)
    assert ev.spf.result == "pass"
    assert [(d.selector, d.result) for d in ev.dkim] == [("ed", "pass"), ("rsa", "pass")]
    assert (ev.dmarc.result, ev.dmarc.spf_aligned, ev.dmarc.dkim_aligned) == ("pass", True, True)
    assert ev.arc.result == "none" and not ev.has_temperror
    decision = decide_inbound(ev, [InboundDomainPolicy()])
    assert decision.verdict.accept


def test_spoofed_from_is_refused_with_5_7_26_and_the_forged_header_goes(server):
    # A legitimate sender.test server and envelope, but From: claims bank.test.
    spoof = rsa_key().sign(message(b"ceo@bank.test"), b"rsa", b"sender.test")
    ev = check(server, spoof)
    assert (ev.spf.result, ev.dkim[0].result) == ("pass", "pass")
    assert (ev.dmarc.result, ev.dmarc.disposition) == ("fail", "reject")
    decision = decide_inbound(ev, [InboundDomainPolicy()])
    assert (decision.verdict.accept, decision.verdict.reply.enhanced) == (False, "5.7.26")
    stamped = stamp_authentication_results(Message.parse(spoof), OUR_ID, ev)
    assert b"header.d=bank.test" not in stamped  # the forged pass is gone
    assert stamped.count(b"Authentication-Results: mx.isp.example;") == 1


def test_null_sender_bounce_is_checked_on_helo(server):
    ev = check(server, message(b"a@sender.test"), mail_from="<>", ip="203.0.113.5")
    assert (ev.spf.identity, ev.spf.domain) == ("helo", "mx.sender.test")


def test_dns_outage_is_temperror_everywhere_and_never_a_reject(server, silent_dns):
    signed = rsa_key().sign(message(b"a@sender.test"), b"rsa", b"sender.test")
    ev = check(server, signed, port=silent_dns.port, timeout=0.3)
    assert (ev.spf.result, ev.dkim[0].result, ev.dmarc.result) == ("temperror",) * 3
    assert decide_inbound(ev, [InboundDomainPolicy()]).verdict.accept  # default: tag
    strict = decide_inbound(ev, [InboundDomainPolicy(temperror="tempfail")])
    assert strict.verdict.reply.code == 451


def test_checks_run_concurrently(server, silent_dns):
    # Four look-ups that each time out after 0.3 s take about 0.3 s in all, not 1.2 s.
    import time

    signed = rsa_key().sign(message(b"a@sender.test"), b"rsa", b"sender.test")
    start = time.monotonic()
    check(server, signed, port=silent_dns.port, timeout=0.3)
    assert time.monotonic() - start < 0.9
