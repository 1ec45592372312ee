"""Inbound SPF/DKIM/DMARC through the real MX listener, against a real NSD.

The client connects from 127.0.0.1; sender.test authorises it in SPF,
spoof.test does not, and both publish DMARC p=reject.
"""

import re
import smtplib
import time

import pytest

from tests.conftest import customer_policies
from tests.support.authdns import txt_record
from tests.support.dkim_keys import rsa_key
from tests.support.gateway import GatewayUnderTest

pytest_plugins = ("tests.support.authdns",)

ZONES = {
    "sender.test": f"""
        @            TXT "v=spf1 ip4:127.0.0.1 -all"
        _dmarc       TXT "v=DMARC1; p=reject"
        sel._domainkey TXT {txt_record(rsa_key(2048, 7).record)}
    """,
    "spoof.test": """
        @            TXT "v=spf1 ip4:192.0.2.1 -all"
        _dmarc       TXT "v=DMARC1; p=reject"
    """,
    "nodmarc.test": """
        @            TXT "v=spf1 ip4:192.0.2.1 -all"
    """,
}


@pytest.fixture
def mx(tmp_path, authdns_factory, downstream, cert_files, password_hash):
    dns = authdns_factory(ZONES)
    policies = customer_policies(password_hash)
    # globex refuses SPF failures outright; acme keeps the defaults.
    policies["globex"]["inbound"] = {"default": {"spf_fail": "reject"}}
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=policies, cert=cert_files,
                          extra={"dns": {"nameservers": ["127.0.0.1"], "port": dns.port,
                                         "timeout": 2}}).start()
    try:
        yield gw
    finally:
        gw.stop()


def send(gw, sender, rcpt, message):
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=20) as c:
        c.ehlo("client.example")
        c.mail(sender)
        assert c.rcpt(rcpt)[0] == 250
        return c.data(message)


def test_spf_and_dmarc_pass_are_recorded_in_our_authentication_results(mx, downstream):
    code, _ = send(mx, "news@sender.test", "bob@acme.example",
                   b"From: news@sender.test\r\nSubject: hi\r\n\r\nhello\r\n")
    assert code == 250
    content = downstream.messages[0].content
    ar = content.split(b"Authentication-Results: ", 1)[1].split(b"\r\n", 1)[0]
    assert ar.startswith(b"mx.gateway.test;")
    head = content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    assert b"spf=pass smtp.mailfrom=news@sender.test" in head
    assert b"dmarc=pass" in head
    # Our Received header sits on top.
    assert content.startswith(b"Received: from client.example")


def test_dmarc_reject_is_refused_with_550_5726_and_nothing_reaches_downstream(mx, downstream):
    code, msg = send(mx, "ceo@spoof.test", "bob@acme.example",
                     b"From: ceo@spoof.test\r\nSubject: wire money\r\n\r\nnow\r\n")
    assert (code, msg[:6]) == (550, b"5.7.26")
    assert downstream.messages == []


def test_dkim_signed_mail_passes_dkim_and_dmarc(mx, downstream):
    msg = (b"From: news@sender.test\r\nTo: bob@acme.example\r\nSubject: signed\r\n"
           b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@sender.test>\r\n\r\nbody\r\n")
    signed = rsa_key(2048, 7).sign(msg, b"sel", b"sender.test")
    # The envelope sender is elsewhere: DMARC must pass on DKIM alignment alone.
    code, _ = send(mx, "bounces@spoof.test", "bob@acme.example", signed)
    assert code == 250
    head = downstream.messages[0].content.split(b"\r\n\r\n", 1)[0]
    head = head.replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    assert b"dkim=pass" in head and b"header.d=sender.test" in head
    assert b"dmarc=pass" in head
    assert b"spf=fail" in head


def test_forged_authentication_results_claiming_us_are_removed_others_kept(mx, downstream):
    forged = (b"Authentication-Results: mx.gateway.test; spf=pass smtp.mailfrom=ceo@acme.example;"
              b" dmarc=pass\r\n"
              b"Authentication-Results: other.example; spf=fail\r\n")
    code, _ = send(mx, "x@nodmarc.test", "bob@acme.example",
                   forged + b"From: x@nodmarc.test\r\n\r\nhi\r\n")
    assert code == 250
    content = downstream.messages[0].content
    assert content.count(b"Authentication-Results: mx.gateway.test") == 1
    assert b"Authentication-Results: other.example; spf=fail" in content
    assert b"spf=pass smtp.mailfrom=ceo@acme.example" not in content


def test_spf_fail_is_tagged_by_default_and_rejected_where_the_customer_says_so(mx, downstream):
    msg = b"From: x@nodmarc.test\r\n\r\nhi\r\n"
    assert send(mx, "x@nodmarc.test", "bob@acme.example", msg)[0] == 250
    code, text = send(mx, "x@nodmarc.test", "dave@globex.example", msg)
    assert (code, text[:5]) == (550, b"5.7.1")
    assert len(downstream.messages) == 1


def test_dns_down_is_temperror_and_mail_is_tagged_not_lost(gateway, downstream):
    # The default gateway fixture points DNS at a closed port.
    code, _ = send(gateway, "x@sender.test", "bob@acme.example", b"From: x@sender.test\r\n\r\nhi\r\n")
    assert code == 250
    assert b"spf=temperror" in downstream.messages[0].content


@pytest.mark.parametrize("forged", [
    b"X-Portcullis-Quarantine: yes\r\n",  # only we may set it, and no A-R field is present
    b"x-portcullis-quarantine:yes\r\n",
    b"authentication-results : MX.Gateway.Test; dkim=pass\r\n",  # odd case and spacing
])
def test_fields_only_we_may_set_are_removed_whatever_their_spelling(mx, downstream, forged):
    code, _ = send(mx, "x@nodmarc.test", "bob@acme.example",
                   forged + b"From: x@nodmarc.test\r\n\r\nhi\r\n")
    assert code == 250
    content = downstream.messages[0].content
    assert forged not in content
    assert content.lower().count(b"authentication-results") == 1  # ours


def test_a_signed_from_with_wsp_before_the_colon_verifies(mx, downstream):
    # RFC 5322 §4.5.8 obsolete "From :" is the From field (RFC 6376 §3.4.2 relaxed
    # deletes the WSP before the colon).  The verifier once skipped it as an mbox
    # "From " line while DMARC read it as From: a good signature failed.
    from cryptography.hazmat.primitives import serialization

    from gateway.dkim.keystore import ActiveKey
    from gateway.dkim.sign import sign_message

    private = serialization.load_pem_private_key(rsa_key(2048, 7).private, None)
    message = b"From : news@sender.test\r\nSubject: hi\r\n\r\nhello\r\n"
    signature = sign_message(message, [ActiveKey("sender.test", "sel", "rsa-sha256", private)],
                             int(time.time()))
    code, _ = send(mx, "news@sender.test", "bob@acme.example", signature + message)
    assert code == 250
    stamp = downstream.messages[0].content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ")
    assert re.search(rb"dkim=pass [^;]*header\.d=sender\.test", stamp), stamp
