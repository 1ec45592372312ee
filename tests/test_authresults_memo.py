"""The remembered Authentication-Results text is what authres itself would write.

authentication_results() keeps the text authres makes of each SPF, DKIM, ARC and
DMARC result and formats only DKIM's header.b per message.  The oracle here is
the straightforward construction it replaced (authres objects built and turned
into text for every message): the two must agree byte for byte on any evidence,
and authres's parser must read our header back with the same results.
"""

from __future__ import annotations

import re
import string

import authres
import authres.arc
import authres.dmarc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.checks.arc import ArcResult
from gateway.checks.dkim_verify import DkimResult
from gateway.checks.dmarc import DmarcResult
from gateway.checks.inbound import InboundEvidence
from gateway.checks.spf import SpfResult
from gateway.stamps import authresults
from gateway.stamps.authresults import authentication_results

OUR_ID = "mx.isp.example"


# --- the oracle: every result built by authres, every message ----------------------------
def reference_results(ev: InboundEvidence) -> list[authres.core.AuthenticationResult]:
    spf_prop, spf_value = ev.spf.property
    out: list = [
        authres.SPFAuthenticationResult(
            result=ev.spf.result,
            smtp_mailfrom=spf_value if spf_prop == "smtp.mailfrom" and spf_value else None,
            smtp_helo=spf_value if spf_prop == "smtp.helo" and spf_value else None,
        )
    ]
    if not ev.dkim:
        out.append(authres.DKIMAuthenticationResult(result="none"))
    for d in ev.dkim:
        r = authres.DKIMAuthenticationResult(
            result=d.result, reason=d.reason or None, header_d=d.domain or None,
            header_s=d.selector or None, header_a=d.algorithm or None,
        )
        if d.b_prefix:
            r.properties.append(authres.core.AuthenticationResultProperty("header", "b", d.b_prefix))
        out.append(r)
    if ev.arc.result != "none":
        out.append(authres.arc.ARCAuthenticationResult(
            result=ev.arc.result,
            result_comment=f"i={ev.arc.instances} as.d={ev.arc.sealer}" if ev.arc.sealer else None,
        ))
    dm = ev.dmarc
    comment = None
    if dm.result in ("pass", "fail"):
        comment = f"p={dm.policy.upper()} dis={dm.disposition.upper()}"
    out.append(authres.dmarc.DMARCAuthenticationResult(
        result=dm.result, result_comment=comment, header_from=dm.header_from or None,
        policy=dm.policy if dm.result in ("pass", "fail") else None,
    ))
    return out


def reference_header(authserv_id: str, ev: InboundEvidence) -> bytes:
    value = ";\r\n\t".join([authserv_id, *(str(r) for r in reference_results(ev))])
    return b"Authentication-Results: " + value.encode("utf-8") + b"\r\n"


# --- evidence: result words from the RFCs, names and values as senders send them ------------
SPF_RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")  # 8601 §2.7.2
DKIM_RESULTS = ("none", "pass", "fail", "policy", "neutral", "temperror", "permerror")  # 8601 §2.7.1
ARC_RESULTS = ("none", "pass", "fail", "temperror")  # RFC 8617 §4.4, and our temperror
DMARC_RESULTS = ("none", "pass", "fail", "temperror", "permerror")  # RFC 7489 §11.2
POLICIES = ("none", "quarantine", "reject")
BASE64 = string.ascii_letters + string.digits + "+/="

label = st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,8}[A-Za-z0-9])?\Z")
domain = st.lists(label, min_size=1, max_size=4).map(".".join)
maybe_domain = st.one_of(st.just(""), domain)
selector = st.one_of(st.just(""), label, st.builds("{}._{}".format, label, label))
local_part = st.from_regex(r"\A[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(?:\.[A-Za-z0-9+_-]{1,5})?\Z")
b_prefix = st.text(alphabet=BASE64, max_size=8)
# Free text as a verifier writes it: spaces, quotes, semicolons, parentheses,
# backslashes; no '@' (authres leaves a value with '@' unquoted, see below).
reason = st.one_of(st.just(""), st.sampled_from(["body hash mismatch", "signature expired (x=)"]),
                   st.text(alphabet=string.printable[:-5].replace("@", ""), max_size=30))


@st.composite
def spf_results(draw, sender=local_part, domains=domain):
    result = draw(st.sampled_from(SPF_RESULTS))
    if draw(st.booleans()):
        helo = draw(domains)
        return SpfResult(result, "helo", f"postmaster@{helo}", helo)
    dom = draw(domains)
    address = draw(st.one_of(st.just(""), st.builds("{}@{}".format, sender, st.just(dom))))
    return SpfResult(result, "mailfrom", address, dom)


def dkim_results(domains=maybe_domain, selectors=selector, bs=b_prefix, reasons=reason):
    return st.builds(
        DkimResult, st.sampled_from(DKIM_RESULTS), domains, selectors,
        st.sampled_from(["", "rsa-sha256", "ed25519-sha256"]), bs, reason=reasons)


@st.composite
def arc_results(draw, domains=maybe_domain):
    result = draw(st.sampled_from(ARC_RESULTS))
    if result == "none":
        return ArcResult("none")
    return ArcResult(result, draw(st.integers(1, 50)), sealer=draw(domains))


@st.composite
def dmarc_results(draw, domains=maybe_domain):
    return DmarcResult(draw(st.sampled_from(DMARC_RESULTS)), draw(domains),
                       policy=draw(st.sampled_from(POLICIES)),
                       disposition=draw(st.sampled_from(POLICIES)))


@st.composite
def evidence(draw, dkim=None, spf=None):
    dmarc = draw(dmarc_results())
    return InboundEvidence(
        spf=draw(spf_results() if spf is None else spf),
        dkim=tuple(draw(st.lists(dkim_results() if dkim is None else dkim, max_size=4))),
        dmarc=dmarc, arc=draw(arc_results()), header_from=dmarc.header_from or None,
    )


# Anything at all where a sender's bytes end up: header.b of a broken signature,
# reasons quoting an exception, odd selectors.  The parser need not read these back
# (authres writes some values it cannot parse), but the bytes must not change.
anything = st.text(max_size=12)
odd_evidence = evidence(
    dkim=dkim_results(domains=st.one_of(maybe_domain, anything), selectors=anything,
                      bs=st.one_of(b_prefix, anything), reasons=anything),
    spf=spf_results(sender=st.one_of(local_part, anything), domains=st.one_of(domain, anything)),
)


# --- the same bytes ------------------------------------------------------------------------
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(evidence(), odd_evidence), st.sampled_from([OUR_ID, "Mail.Example.Net"]))
def test_remembered_header_is_byte_for_byte_what_authres_writes(ev, authserv_id):
    expected = reference_header(authserv_id, ev)
    assert authentication_results(authserv_id, ev) == expected  # maybe first time: built
    assert authentication_results(authserv_id, ev) == expected  # now surely remembered


@given(st.one_of(st.text(alphabet=BASE64, min_size=1, max_size=8), st.text(min_size=1)))
def test_header_b_is_formatted_as_authres_formats_the_property(value):
    # Only a non-empty b= prefix gets a header.b (an empty one has none, as before).
    expected = " " + str(authres.core.AuthenticationResultProperty("header", "b", value))
    assert authresults._header_b(value) == expected


TRICKY_B = ["Kx9/aB+3", "ab==", "+/+/+/+/", "AbCdEfGh", 'a"b\\c', "a@b c", "abc\n", "ab c",
            "é/x", "\\", '"']


def test_header_b_values_that_authres_quotes_or_not_come_out_the_same():
    for value in TRICKY_B:
        ev = InboundEvidence(
            spf=SpfResult("pass", "mailfrom", "a@sender.example", "sender.example"),
            dkim=(DkimResult("pass", "sender.example", "s1", "rsa-sha256", value),),
            dmarc=DmarcResult("pass", "sender.example", policy="reject", disposition="none"),
            arc=ArcResult("none"), header_from="sender.example")
        assert authentication_results(OUR_ID, ev) == reference_header(OUR_ID, ev), value
    # Base64's '/' and '=' are not RFC 2045 token characters: authres quotes them.
    assert authresults._header_b("Kx9/aB+3") == ' header.b="Kx9/aB+3"'
    assert authresults._header_b("Kx9+aB+3") == " header.b=Kx9+aB+3"


def test_two_messages_of_one_sender_differ_only_in_header_b():
    def ev(b):
        return InboundEvidence(
            spf=SpfResult("pass", "mailfrom", "a@sender.example", "sender.example"),
            dkim=(DkimResult("pass", "sender.example", "s1", "rsa-sha256", b),),
            dmarc=DmarcResult("pass", "sender.example", policy="reject", disposition="none"),
            arc=ArcResult("none"), header_from="sender.example")
    first, second = authentication_results(OUR_ID, ev("AAAAAAAA")), authentication_results(
        OUR_ID, ev("BBBB/BBB"))
    assert first.replace(b"header.b=AAAAAAAA", b'header.b="BBBB/BBB"') == second


# --- authres's parser reads it back ----------------------------------------------------------
def _unquote(value):
    # authres's parser keeps the quoted-pairs of a quoted-string (RFC 5322 §3.2.1) as written.
    return value and re.sub(r"\\(.)", r"\1", value, flags=re.S)


def _facts(result, read=lambda value: value):
    # Not the comments: authres's parser skips them as CFWS (RFC 5322 §3.2.2).
    return (result.method, result.result, read(result.reason),
            [(p.type, p.name, read(p.value)) for p in result.properties])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(evidence())
def test_authres_parses_our_header_back_to_the_same_results(ev):
    header = authentication_results(OUR_ID, ev)
    parsed = authres.parse(header.decode("utf-8").replace("\r\n", "").rstrip())
    assert parsed.authserv_id == OUR_ID
    expected = reference_results(ev)
    assert [_facts(r, _unquote) for r in parsed.results] == [_facts(r) for r in expected]
    text = header.decode("utf-8")
    for r in expected:
        if r.result_comment:  # ARC's i= and as.d=, DMARC's p= and dis=
            assert f"{r.method}={r.result} ({r.result_comment})" in text


# --- bounded memory ------------------------------------------------------------------------
def test_remembered_texts_stay_bounded_however_many_senders():
    caches = [authresults._spf_text, authresults._dkim_text, authresults._arc_text,
              authresults._dmarc_text]
    for i in range(authresults._CACHED_RESULTS + 50):
        dom = f"sender{i}.example"
        authentication_results(OUR_ID, InboundEvidence(
            spf=SpfResult("pass", "mailfrom", f"bounce-{i}@{dom}", dom),
            dkim=(DkimResult("pass", dom, "s1", "rsa-sha256", "AbCdEfGh"),),
            dmarc=DmarcResult("pass", dom, policy="reject", disposition="none"),
            arc=ArcResult("pass", 1, sealer=f"list{i}.example"), header_from=dom))
    for cache in caches:
        info = cache.cache_info()
        assert info.maxsize is not None and info.currsize <= info.maxsize, cache
    assert authresults._spf_text.cache_info().currsize == authresults._CACHED_RESULTS
