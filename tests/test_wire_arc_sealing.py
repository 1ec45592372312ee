"""ARC sealing on the MX (RFC 8617 §5.1), checked by two independent verifiers:
dkimpy's ``arc_verify`` and mailauth (postalsys, npm), both reading keys from the
test's NSD.  A message arriving without a chain gets i=1 cv=none; one arriving
with a valid 1-hop chain gets i=2 cv=pass; one whose chain broke gets cv=fail.
"""

import smtplib

import dkim
import pytest

from gateway.dkim.keystore import generate_selector
from gateway.rules.arc_seal import decide_seal
from tests.conftest import customer_policies
from tests.support.authdns import txt_record
from tests.support.dkim_verifiers import dnsfunc_for
from tests.support.gateway import GatewayUnderTest
from tests.support.mailauth import mailauth_arc

pytest_plugins = ("tests.support.authdns",)

MESSAGE = (b"From: news@sender.test\r\nTo: bob@acme.example\r\nSubject: sealed\r\n"
           b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <arc@sender.test>\r\n"
           b"\r\nHello,\r\n\r\nthrough a forwarder.\r\n")


# --- the rule --------------------------------------------------------------------------
@pytest.mark.parametrize(("ours", "instances", "newest_cv", "expected"), [
    ("none", 0, "", (True, "none")),  # §5.1.1: i=1 carries cv=none
    ("pass", 1, "none", (True, "pass")),
    ("fail", 1, "none", (True, "fail")),  # a chain that broke on its way to us
    ("fail", 2, "fail", (False, "")),  # §5.1.1 step 1: already failed, not continued
    ("temperror", 1, "none", (False, "")),  # we could not evaluate it: not ours to fail
    ("permerror", 1, "none", (False, "")),
    ("none", 1, "none", (False, "")),  # i>1 with cv=none is invalid (§4.1.3)
    ("pass", 50, "pass", (False, "")),  # §4.2.1: i= at most 50
])
def test_which_messages_are_sealed_and_with_which_cv(ours, instances, newest_cv, expected):
    decision = decide_seal(ours, instances, newest_cv)
    assert (decision.seal, decision.cv) == expected
    assert decision.seal or decision.reason


# --- on the wire -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def forwarder_key():
    """A forwarder's RSA key, to make the chain a message arrives with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    import base64

    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"


@pytest.fixture
def mx(tmp_path, authdns_factory, downstream, cert_files, password_hash, forwarder_key):
    sealer = generate_selector(tmp_path / "keys", "isp.example", "arc1", "rsa-sha256")
    dns = authdns_factory({
        "sender.test": '@ TXT "v=spf1 ip4:127.0.0.1 -all"',
        "forwarder.test": f"fw._domainkey TXT {txt_record(forwarder_key[1])}",
        "isp.example": f"arc1._domainkey TXT {txt_record(sealer.dns_value())}",
    })
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"arc_seal": {"domain": "isp.example"},
               "dkim": {"check_published": True},  # the sealing key is checked too
               "dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 2}}).start()
    try:
        yield gw, dns
    finally:
        gw.stop()


def send(gw, message):
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=20) as c:
        c.ehlo("client.example")
        c.mail("news@sender.test")
        assert c.rcpt("bob@acme.example")[0] == 250
        return c.data(message)


def forwarded(forwarder_key, message=MESSAGE):
    """``message`` as forwarder.test sealed it (i=1, cv=none) after its own checks."""
    with_ar = b"Authentication-Results: forwarder.test; spf=pass smtp.mailfrom=news@sender.test\r\n" + message
    fields = dkim.arc_sign(with_ar, b"fw", b"forwarder.test", forwarder_key[0], b"forwarder.test")
    assert fields, "dkimpy made no ARC set"
    return b"".join(fields) + with_ar


def seals(content: bytes) -> list[dict[str, str]]:
    head = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    out = []
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"arc-seal:"):
            tags = dict(p.strip().split("=", 1) for p in line.split(b":", 1)[1].decode().split(";") if "=" in p)
            out.append({k.strip(): v.strip() for k, v in tags.items()})
    return out


def dkimpy_arc(content: bytes, port: int) -> tuple[bytes | None, int]:
    cv, sets, _ = dkim.arc_verify(content, dnsfunc=dnsfunc_for(port))
    return cv, len(sets)


def test_first_hop_seal_verifies_with_dkimpy_and_mailauth(mx, downstream):
    gw, dns = mx
    assert send(gw, MESSAGE)[0] == 250
    content = downstream.messages[0].content
    newest = seals(content)[0]
    assert (newest["i"], newest["cv"], newest["d"], newest["s"]) == ("1", "none", "isp.example", "arc1")
    assert content.startswith(b"ARC-Seal: ")
    assert b"ARC-Authentication-Results: i=1; mx.gateway.test;" in content
    assert dkimpy_arc(content, dns.port) == (dkim.CV_Pass, 1)
    [ma] = mailauth_arc(dns.port, [content])
    assert (ma["result"], ma["i"]) == ("pass", 1)
    assert (ma["strict"]["result"], ma["strict"]["i"]) == ("pass", 1)
    assert gw.runtime.metrics.registry.get_sample_value(
        "portcullis_arc_seals_total", {"outcome": "none"}) == 1


def test_a_valid_one_hop_chain_is_extended_to_i2_with_cv_pass(mx, downstream, forwarder_key):
    gw, dns = mx
    arriving = forwarded(forwarder_key)
    assert dkimpy_arc(arriving, dns.port) == (dkim.CV_Pass, 1)  # the chain we are given is valid
    assert send(gw, arriving)[0] == 250
    content = downstream.messages[0].content
    assert [(s["i"], s["cv"], s["d"]) for s in seals(content)] == [
        ("2", "pass", "isp.example"), ("1", "none", "forwarder.test")]
    assert b"arc=pass" in content.split(b"ARC-Authentication-Results: i=2;", 1)[1].split(b"\r\nARC-", 1)[0]
    assert dkimpy_arc(content, dns.port) == (dkim.CV_Pass, 2)
    [ma] = mailauth_arc(dns.port, [content])
    assert (ma["result"], ma["i"]) == ("pass", 2)
    assert (ma["strict"]["result"], ma["strict"]["i"]) == ("pass", 2)


def test_a_chain_broken_on_the_way_is_sealed_with_cv_fail(mx, downstream, forwarder_key):
    gw, dns = mx
    arriving = forwarded(forwarder_key).replace(b"through a forwarder.", b"through a forger.")
    assert send(gw, arriving)[0] == 250
    content = downstream.messages[0].content
    assert [(s["i"], s["cv"]) for s in seals(content)] == [("2", "fail"), ("1", "none")]
    cv, _ = dkimpy_arc(content, dns.port)
    assert cv != dkim.CV_Pass  # dkimpy: None when the newest seal says cv=fail
    [ma] = mailauth_arc(dns.port, [content])
    assert ma["result"] == "fail"


# --- configuration -----------------------------------------------------------------------
@pytest.mark.parametrize(("key", "words"), [
    (None, "arc_seal.domain: no RSA key to seal with; make one with `portcullis keys generate isp.example"),
    ("ed25519-sha256", "arc_seal.domain: no RSA key to seal with"),
])
def test_check_config_refuses_a_sealing_domain_without_an_rsa_key(
        tmp_path, downstream, cert_files, password_hash, capsys, key, words):
    from gateway.cli import main

    if key is not None:
        generate_selector(tmp_path / "keys", "isp.example", "ed", key)
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=customer_policies(password_hash), cert=cert_files,
                          extra={"arc_seal": {"domain": "isp.example"}})
    assert main(["check-config", "-c", str(gw.config_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(str(tmp_path / "keys" / "isp.example") + ": ")
    assert words in err[0]


def test_a_chain_we_could_not_evaluate_goes_on_unsealed(mx, downstream, forwarder_key):
    """DNS stops answering: our verdict on the chain is arc=temperror, and cv=fail
    would end a chain that may be valid, so the message goes on unsealed."""
    gw, dns = mx
    arriving = forwarded(forwarder_key)
    dns.stop()
    assert send(gw, arriving)[0] == 250
    content = downstream.messages[0].content
    assert b"arc=temperror" in content
    assert [s["d"] for s in seals(content)] == ["forwarder.test"]  # theirs only
    assert gw.runtime.metrics.registry.get_sample_value(
        "portcullis_arc_seals_total", {"outcome": "unsealed"}) == 1


def test_a_sealing_key_not_seen_in_dns_seals_nothing(tmp_path, authdns_factory, downstream,
                                                      cert_files, password_hash, caplog):
    generate_selector(tmp_path / "keys", "isp.example", "arc1", "rsa-sha256", bits=1024)
    dns = authdns_factory({"sender.test": '@ TXT "v=spf1 ip4:127.0.0.1 -all"',
                           "isp.example": "@ A 192.0.2.1"})  # arc1's record: not published
    gw = GatewayUnderTest(
        tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
        policies=customer_policies(password_hash), cert=cert_files,
        extra={"arc_seal": {"domain": "isp.example"}, "dkim": {"check_published": True},
               "dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 2}}).start()
    try:
        assert send(gw, MESSAGE)[0] == 250
    finally:
        gw.stop()
    assert seals(downstream.messages[0].content) == []
    assert "isp.example has no active RSA key seen in DNS" in caplog.text
