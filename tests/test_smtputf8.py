"""SMTPUTF8 (RFC 6531/6532) and IDN domains in one normal form (IDNA 2008 A-labels).

The wire tests run the gateway in front of a real Postfix with smtputf8_enable
yes and no: the gateway offers SMTPUTF8 exactly when Postfix does, passes
internationalized mail through when it does, and refuses with RFC 6531's codes when
it does not.
"""

from __future__ import annotations

import smtplib
import time

import pytest

from gateway.addresses import NotAMailbox, parse_mailbox
from gateway.checks.dkim_verify import key_name
from gateway.checks.dmarc import RecordLookup, evaluate, from_domain, parse_record
from gateway.checks.spf import _identity
from gateway.values.domains import normalise_domain
from gateway.values.evidence import DkimResult
from tests.conftest import PASSWORD, customer_policies
from tests.support.gateway import GatewayUnderTest
from tests.support.ports import free_port
from tests.support.postfix import PostfixInstance, postfix_available
from tests.test_postfix_dsn import queued

BUECHER = "xn--bcher-kva.example"


# --- one normal form ---------------------------------------------------------------------
@pytest.mark.parametrize("name, a_label", [
    ("bücher.example", BUECHER),
    ("Bücher.EXAMPLE.", BUECHER),
    (BUECHER, BUECHER),
    ("XN--BCHER-KVA.example", BUECHER),
    # IDNA 2008 keeps ß (IDNA 2003, Python's "idna" codec, made it "fass": another domain).
    ("faß.example", "xn--fa-hia.example"),
    ("ＥＸＡＭＰＬＥ.com", "example.com"),  # UTS #46 maps full-width letters
])
def test_idn_domains_have_one_normal_form_the_a_label(name, a_label):
    assert normalise_domain(name) == a_label


@pytest.mark.parametrize("name", ["a..example", "-bad.example", "bü cher.example", "☃" * 70])
def test_invalid_idn_domains_are_refused(name):
    with pytest.raises(ValueError):
        normalise_domain(name)


@pytest.mark.parametrize("text, local, domain", [
    ("jürgen@bücher.example", "jürgen", BUECHER),
    ("用户@例子.example", "用户", "xn--fsqu00a.example"),
    ('"jü rgen"@acme.example', '"jü rgen"', "acme.example"),
])
def test_internationalized_addresses_parse_with_smtputf8(text, local, domain):
    mailbox = parse_mailbox(text, utf8=True)
    assert (mailbox.local, mailbox.domain) == (local, domain)
    with pytest.raises(NotAMailbox):
        parse_mailbox(text)  # without SMTPUTF8


@pytest.mark.parametrize("text", ["jü..rgen@a.example", "ü" * 33 + "@a.example",
                                  "a@b\udcff.example", "jü\u0085@a.example"])
def test_malformed_internationalized_addresses_are_refused(text):
    with pytest.raises(NotAMailbox):
        parse_mailbox(text, utf8=True)


def test_dmarc_from_domain_and_spf_domain_are_a_labels():
    message = "From: Jürgen <jürgen@Bücher.example>\r\nSubject: x\r\n\r\nbody\r\n".encode()
    assert from_domain(message) == BUECHER
    identity, sender, _, domain = _identity("jürgen@bücher.example", "mx.other.example")
    assert (identity, domain) == ("mailfrom", BUECHER)
    assert sender == f"jürgen@{BUECHER}"  # pyspf takes the domain from it


def test_a_u_label_dkim_domain_is_looked_up_and_aligned_as_its_a_label():
    assert key_name(b"s1", "bücher.example".encode()) == f"s1._domainkey.{BUECHER}"
    record = parse_record("v=DMARC1; p=reject; adkim=s")
    lookup = RecordLookup(record, found_at=BUECHER, org_domain=BUECHER)
    signature = DkimResult("pass", "Bücher.example", "s1", "ed25519-sha256", "abcdefgh")
    result = evaluate(lookup, from_domain("From: a@bücher.example\r\n\r\n".encode()), None,
                      [signature])
    assert result.result == "pass" and result.dkim_aligned


# --- over the wire, in front of a real Postfix --------------------------------------------
needs_postfix = pytest.mark.skipif(not postfix_available(),
                                   reason="needs root and Debian's postfix")
UTF8_MESSAGE = ("From: Jürgen <jürgen@other.example>\r\nTo: info@bücher.example\r\n"
                "Subject: Grüße\r\n\r\nHallo\r\n").encode()


def policies(password_hash: str) -> dict[str, dict]:
    found = customer_policies(password_hash)
    # The customer wrote its domain as a U-label: the gateway compares A-labels.
    found["buecher"] = {"customer": "buecher", "domains": ["Bücher.example"]}
    return found


@pytest.fixture
def gateway_before(tmp_path, downstream, cert_files, password_hash):
    running = []

    def start(smtputf8: bool) -> tuple[GatewayUnderTest, PostfixInstance]:
        pf = PostfixInstance(free_port(), f"[127.0.0.1]:{downstream.port}",
                             relay_domains=["acme.example", BUECHER],
                             recipients=["bob@acme.example", f"info@{BUECHER}"],
                             extra={"defer_transports": "relay smtp",
                                    "smtputf8_enable": "yes" if smtputf8 else "no"}).start()
        running.append(pf)
        url = f"smtp://127.0.0.1:{pf.port}"
        gw = GatewayUnderTest(tmp_path, inbound_url=url, outbound_url=url,
                              policies=policies(password_hash), cert=cert_files).start()
        running.append(gw)
        return gw, pf

    yield start
    for thing in reversed(running):
        thing.stop()


def keywords_once_learnt(port: int) -> set[str]:
    """The first EHLO sends the gateway to learn Postfix's keywords in the background."""
    deadline = time.monotonic() + 10
    while True:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
            c.ehlo("sender.example")
            features = set(c.esmtp_features)
        if "dsn" in features or time.monotonic() > deadline:  # Postfix always offers DSN
            return features
        time.sleep(0.2)


@needs_postfix
def test_internationalized_mail_goes_through_when_postfix_offers_smtputf8(gateway_before):
    gw, postfix = gateway_before(smtputf8=True)
    port = gw.ports["inbound"]
    assert "smtputf8" in keywords_once_learnt(port)
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.ehlo("sender.example")
        assert c.mail("jürgen@other.example", ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        # The U-label form of a customer's domain is that domain.
        code, msg = c.rcpt("info@bücher.example")
        assert code == 250, msg
        code, msg = c.data(UTF8_MESSAGE)
        assert code == 250 and b"queued as" in msg
    [text] = queued(postfix)
    assert "sender: jürgen@other.example" in text, text
    assert f"recipient: info@{BUECHER}" in text, text
    assert "Subject: Grüße" in text, text
    # Postfix's message_size record ends in its SMTPUTF8 flags (src/global/smtputf8.h):
    # 1 requested (MAIL had SMTPUTF8), 2 UTF-8 header, 4 UTF-8 sender.
    flags = int(next(line for line in text.splitlines()
                     if line.startswith("message_size:")).split()[-1])
    assert flags == 1 | 2 | 4, text


@needs_postfix
def test_submission_sends_internationalized_mail_when_postfix_offers_smtputf8(
        gateway_before, client_tls):
    gw, postfix = gateway_before(smtputf8=True)
    port = gw.ports["submission"]
    assert "smtputf8" in keywords_once_learnt(port)
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.starttls(context=client_tls)
        c.login("alice@acme.example", PASSWORD)
        c.sendmail("alice@acme.example", ["info@bücher.example"],
                   "From: alice@acme.example\r\nTo: Jürgen <info@bücher.example>\r\n"
                   "Subject: Grüße\r\n\r\nHallo\r\n".encode(), mail_options=["SMTPUTF8"])
    [text] = queued(postfix)
    assert f"recipient: info@{BUECHER}" in text and "Subject: Grüße" in text, text
    assert "DKIM-Signature:" in text  # signed on the way, UTF-8 header and all


@needs_postfix
def test_without_smtputf8_downstream_internationalized_mail_is_refused_per_rfc_6531(
        gateway_before):
    gw, postfix = gateway_before(smtputf8=False)
    port = gw.ports["inbound"]
    features = keywords_once_learnt(port)
    assert "dsn" in features and "smtputf8" not in features
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.ehlo("sender.example")
        # RFC 6531 §3.4: SMTPUTF8 where not offered; a non-ASCII address without it.
        code, msg = c.docmd("MAIL FROM:<a@other.example> SMTPUTF8")
        assert (code, msg[:5]) == (555, b"5.6.7"), msg
        c.command_encoding = "utf-8"  # a client that sends UTF-8 anyway
        code, msg = c.docmd("MAIL FROM:<jürgen@other.example>")
        assert (code, msg[:5]) == (553, b"5.6.7"), msg
        assert c.mail("a@other.example")[0] == 250
        code, msg = c.docmd("RCPT TO:<jürgen@bücher.example>")
        assert (code, msg[:5]) == (553, b"5.6.7"), msg
        # The A-label form is plain ASCII and needs nothing.
        assert c.rcpt(f"info@{BUECHER}")[0] == 250
        assert c.data(b"From: a@other.example\r\nSubject: x\r\n\r\nhi\r\n")[0] == 250
    [text] = queued(postfix)
    assert f"recipient: info@{BUECHER}" in text

