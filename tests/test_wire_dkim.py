"""DKIM signing through the real submission listener, checked by independent verifiers.

Keys are made with `portcullis keys generate` and served from its printed records
by a private NSD; what reaches the downstream is verified by dkimpy and by Perl
Mail::DKIM (RSA; Debian 12's cannot do Ed25519), and Ed25519 also by rspamd.
"""

import io
import smtplib
import time
from datetime import UTC, datetime, timedelta

import pytest

from gateway.cli import main
from tests.conftest import PASSWORD, customer_policies
from tests.support.dkim_verifiers import dkimpy_results, mail_dkim_results
from tests.support.gateway import GatewayUnderTest
from tests.support.rspamd_dkim import RspamdVerifier

pytest_plugins = ("tests.support.authdns",)

MESSAGE = (b"From: Alice <alice@acme.example>\r\nTo: friend@elsewhere.example\r\n"
           b"Subject: signed on the way out\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <1@acme.example>\r\n\r\nHello,\r\n\r\nthis  line  has  spaces \r\n")


def generate(keys_dir, domain, selector, *extra):
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        assert main(["keys", "--keys-dir", str(keys_dir), "generate", domain,
                     "--selector", selector, *extra]) == 0
    return out.getvalue()


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


@pytest.fixture
def signing(tmp_path, authdns_factory, downstream, cert_files, password_hash):
    keys = tmp_path / "keys"
    soon = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S")
    records = [generate(keys, "acme.example", "rsa1", "--algorithm", "rsa", "--not-after", soon),
               generate(keys, "acme.example", "ed1", "--algorithm", "ed25519", "--not-after", soon),
               generate(keys, "acme.example", "next", "--algorithm", "rsa", "--not-before", soon)]
    dns = authdns_factory({"acme.example": "\n".join(records)})
    clock = Clock()
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=customer_policies(password_hash), cert=cert_files,
                          clock=clock).start()
    try:
        yield gw, dns, clock
    finally:
        gw.stop()


def submit(gw, client_tls, message=MESSAGE):
    with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], timeout=20, context=client_tls) as c:
        c.login("alice@acme.example", PASSWORD)
        return c.sendmail("alice@acme.example", ["friend@elsewhere.example"], message)


def selectors(content):
    head = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    return [line.split(b" s=")[1].split(b";")[0].decode()
            for line in head.split(b"\r\n") if line.startswith(b"DKIM-Signature:")]


def test_dual_signed_rsa_and_ed25519_verify_with_dkimpy_and_mail_dkim(signing, client_tls, downstream):
    gw, dns, _ = signing
    submit(gw, client_tls)
    signed = downstream.messages[0].content
    assert sorted(selectors(signed)) == ["ed1", "rsa1"]
    assert b"l=" not in signed.split(b"\r\n\r\n")[0].split(b"DKIM-Signature")[1][:40]
    assert dkimpy_results(signed, dns.port) == [True, True]
    perl = {r.selector: r.result for r in mail_dkim_results(signed, dns.port)}
    assert perl["rsa1"] == "pass"


def test_ed25519_signature_verifies_with_rspamd(signing, client_tls, downstream, tmp_path):
    gw, dns, _ = signing
    submit(gw, client_tls)
    signed = downstream.messages[0].content
    # rspamd reports one result per domain: keep only the Ed25519 signature.
    rsa_sig, rest = signed.split(b"DKIM-Signature: v=1; a=ed25519-sha256", 1)
    assert b"a=rsa-sha256" in rsa_sig
    only_ed25519 = b"DKIM-Signature: v=1; a=ed25519-sha256" + rest
    verifier = RspamdVerifier(tmp_path / "rspamd", dns.port).start()
    try:
        good = verifier.dkim_trace(only_ed25519)
        bad = verifier.dkim_trace(only_ed25519.replace(b"Hello,", b"Hullo,"))
    finally:
        verifier.stop()
    assert good == ["acme.example:+"]
    assert bad == ["acme.example:-"]


def test_a_message_modified_after_signing_fails(signing, client_tls, downstream):
    gw, dns, _ = signing
    submit(gw, client_tls)
    tampered = downstream.messages[0].content.replace(b"Hello,", b"Hullo,")
    assert dkimpy_results(tampered, dns.port) == [False, False]
    perl = {r.selector: r.result for r in mail_dkim_results(tampered, dns.port)}
    assert perl["rsa1"] == "fail"


def test_a_second_from_added_after_signing_fails_thanks_to_oversigning(signing, client_tls, downstream):
    gw, dns, _ = signing
    submit(gw, client_tls)
    signed = downstream.messages[0].content
    head, body = signed.split(b"\r\n\r\n", 1)
    forged = head + b"\r\nFrom: CEO <ceo@acme.example>\r\n\r\n" + body
    assert dkimpy_results(forged, dns.port) == [False, False]
    perl = {r.selector: r.result for r in mail_dkim_results(forged, dns.port)}
    assert perl["rsa1"] == "fail"


def test_the_sender_id_token_is_covered_by_the_signature(signing, client_tls, downstream):
    gw, _, _ = signing
    submit(gw, client_tls)
    head = downstream.messages[0].content.split(b"\r\n\r\n")[0].lower()
    head = head.replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    assert b"\r\nx-portcullis-sender-id: v1." in head
    for signature in head.split(b"dkim-signature:")[1:]:
        signed_fields = signature.split(b" h=")[1].split(b";")[0].replace(b" ", b"").split(b":")
        # Signed, and listed once more than present: a second token cannot be added.
        assert signed_fields.count(b"x-portcullis-sender-id") == 2


def test_rotation_across_the_window_boundary_without_a_restart(signing, client_tls, downstream):
    gw, dns, clock = signing
    submit(gw, client_tls)
    clock.now += 3 * 3600  # rsa1 and ed1 closed, next opened
    submit(gw, client_tls)
    before, after = downstream.messages[0].content, downstream.messages[1].content
    assert sorted(selectors(before)) == ["ed1", "rsa1"]
    assert selectors(after) == ["next"]
    assert dkimpy_results(after, dns.port) == [True]


def test_no_active_key_defers_the_mail_with_451_470(tmp_path, downstream, cert_files, password_hash,
                                                      client_tls):
    keys = tmp_path / "keys"
    soon = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    generate(keys, "acme.example", "only", "--algorithm", "ed25519", "--not-after", soon)
    clock = Clock()
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=customer_policies(password_hash), cert=cert_files,
                          clock=clock).start()
    try:
        clock.now += 2 * 3600
        with pytest.raises(smtplib.SMTPDataError) as exc:
            submit(gw, client_tls)
        assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (451, b"4.7.0")
    finally:
        gw.stop()
    assert downstream.messages == []
