"""Our Authentication-Results header, and removal of forged ones (RFC 8601 §5)."""

from __future__ import annotations

import authres
import authres.arc
import authres.dmarc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.checks.arc import ArcResult
from gateway.checks.dkim_verify import DkimResult
from gateway.checks.dmarc import DmarcResult
from gateway.checks.inbound import InboundEvidence
from gateway.checks.spf import SpfResult
from gateway.message import Message
from gateway.stamps.authresults import (
    authentication_results,
    authserv_id_of,
    stamp_authentication_results,
    strip_our_authentication_results,
)

OUR_ID = "mx.isp.example"
BODY = b"\r\nAuthentication-Results: mx.isp.example; spf=pass\r\nbody line\r\n"


def stripped(message: bytes) -> bytes:
    return bytes(strip_our_authentication_results(Message.parse(message), OUR_ID).data)


def evidence(dkim=(), spf=None, arc="none"):
    return InboundEvidence(
        spf=spf or SpfResult("pass", "mailfrom", "a@sender.example", "sender.example"),
        dkim=tuple(dkim),
        dmarc=DmarcResult("fail", "sender.example", policy="reject", disposition="quarantine"),
        arc=ArcResult(arc, 1, sealer="lists.example") if arc != "none" else ArcResult("none"),
        header_from="sender.example",
    )


def parse(header: bytes):
    ctx = authres.FeatureContext(authres.dmarc, authres.arc)
    text = header.decode().replace("\r\n", "")
    return ctx.parse(text)


def test_header_carries_every_result_and_parses_back():
    ev = evidence(dkim=[
        DkimResult("pass", "sender.example", "s1", "rsa-sha256", "AbCdEfGh"),
        DkimResult("fail", "sender.example", "s2", "ed25519-sha256", "ZyXwVuTs", reason="body hash mismatch"),
    ], arc="pass")
    header = authentication_results(OUR_ID, ev)
    assert header.startswith(b"Authentication-Results: mx.isp.example;\r\n\t") and header.endswith(b"\r\n")
    assert all(len(line) < 200 for line in header.split(b"\r\n"))  # folded, one result a line
    parsed = parse(header)
    assert parsed.authserv_id == OUR_ID
    methods = [(r.method, r.result) for r in parsed.results]
    assert methods == [("spf", "pass"), ("dkim", "pass"), ("dkim", "fail"), ("arc", "pass"), ("dmarc", "fail")]
    spf, dkim1, dkim2 = parsed.results[:3]
    assert spf.smtp_mailfrom == "a@sender.example"
    assert (dkim1.header_d, dkim1.header_s, dkim1.header_a) == ("sender.example", "s1", "rsa-sha256")
    assert dkim2.header_a == "ed25519-sha256" and dkim2.reason == "body hash mismatch"
    assert b"header.b=AbCdEfGh" in header and b"header.b=ZyXwVuTs" in header
    dmarc = parsed.results[-1]
    assert (dmarc.header_from, dmarc.policy) == ("sender.example", "reject")
    assert b"dis=QUARANTINE" in header


def test_unsigned_message_says_dkim_none_and_helo_identity_is_named():
    ev = evidence(spf=SpfResult("fail", "helo", "postmaster@mx.sender.example", "mx.sender.example"))
    header = authentication_results(OUR_ID, ev)
    assert b"dkim=none" in header and b"spf=fail smtp.helo=mx.sender.example" in header
    assert b"\tarc=" not in header


FORGED = [
    b"Authentication-Results: mx.isp.example; spf=pass smtp.mailfrom=a@b\r\n",
    b"authentication-results: MX.ISP.EXAMPLE; dkim=pass\r\n",
    b"Authentication-Results:mx.isp.example;dmarc=pass\r\n",
    b"Authentication-Results: (sure, trust me) mx.isp.example 1; dkim=pass\r\n",
    b"Authentication-Results:\r\n mx.isp.example;\r\n\tdkim=pass header.d=bank.example\r\n",
    b"Authentication-Results: \"mx.isp.example\"; dkim=pass\r\n",
    b"Authentication-Results: mx.isp.example; this is {not} valid ;;; syntax ===\r\n",
    b"Authentication-Results: mx.isp.example\r\n",
    b"Authentication-Results : mx.isp.example; spf=pass\r\n",
]
KEPT = [
    b"Authentication-Results: other.example; spf=pass smtp.mailfrom=a@b\r\n",
    b"Authentication-Results: mx.isp.example.evil; dkim=pass\r\n",
    b"Authentication-Results: isp.example; dkim=pass\r\n",
    b"Authentication-Results: other.example;\r\n\tdkim=fail (mx.isp.example; was here)\r\n",
    b"X-Authentication-Results: mx.isp.example; spf=pass\r\n",
    b"ARC-Authentication-Results: i=1; mx.isp.example; spf=pass\r\n",
]


@pytest.mark.parametrize("forged", FORGED)
def test_forged_header_claiming_our_id_is_removed(forged):
    message = b"From: a@sender.example\r\n" + forged + b"Subject: hi\r\n" + BODY
    assert stripped(message) == b"From: a@sender.example\r\nSubject: hi\r\n" + BODY


def test_forged_header_authres_cannot_parse_is_still_removed():
    garbage = FORGED[6]
    with pytest.raises(authres.core.AuthResError):
        parse(garbage.rstrip(b"\r\n"))
    assert garbage not in stripped(b"To: x\r\n" + garbage + BODY)


@pytest.mark.parametrize("kept", KEPT)
def test_other_headers_are_kept_byte_for_byte(kept):
    message = b"From: a@sender.example\r\n" + kept + b"Subject: hi\r\n" + BODY
    parsed = Message.parse(message)
    assert strip_our_authentication_results(parsed, OUR_ID) is parsed  # nothing copied


def test_body_is_never_touched():
    message = b"From: a@b\r\n" + BODY
    assert stripped(message) == message


def test_stamp_prepends_ours_and_drops_forged():
    message = b"From: a@b\r\n" + FORGED[0] + KEPT[0] + BODY
    stamped = Message.parse(stamp_authentication_results(Message.parse(message), OUR_ID, evidence()))
    assert [authserv_id_of(f.raw) for f in stamped.named("Authentication-Results")] == [
        OUR_ID, "other.example"]
    assert stamped.fields[0].raw.startswith(b"Authentication-Results: mx.isp.example;")
    assert stamped.data[stamped.head_end:] == BODY


header_line = st.from_regex(rb"\A[A-Za-z][A-Za-z0-9-]{0,20}: [ -~]{0,60}\r\n(?:[ \t][ -~]{1,40}\r\n){0,2}\Z")


@given(st.lists(header_line, max_size=8), st.sampled_from(FORGED))
def test_property_only_forged_fields_go(others, forged):
    others = [h for h in others if not h.lower().startswith(b"authentication-results")]
    message = b"".join(others[:3]) + forged + b"".join(others[3:]) + BODY
    assert stripped(message) == b"".join(others) + BODY
