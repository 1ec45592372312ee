"""Our Authentication-Results header (RFC 8601), and removal of forged ones.

RFC 8601 §5: before adding ours, remove every Authentication-Results field
that claims our authserv-id, so a sender cannot hand the downstream a forged
"pass".  The fields are those gateway/message.py read (the one header parser:
``authentication-results :`` is the same field to it as to every other reader);
the removal reads only the authserv-id at the start of the value, with its own
small scanner: a field that authres cannot parse (forgers do not follow the
grammar) is still recognised and removed.  Fields of other authserv-ids are kept
byte for byte, folding included.

Our own field is written by authres, one result per folded line.  Everything
in it but DKIM's header.b (RFC 6008) repeats from message to message of one
sender, so the text authres makes of each result is remembered in bounded
caches and only header.b is formatted per message, by authres's quoting rules.
"""

from __future__ import annotations

import functools
import re

import authres
import authres.arc
import authres.dmarc

from gateway.message import HeaderField, Message
from gateway.values.evidence import InboundEvidence

FIELD_NAME = b"Authentication-Results"
FIELD_KEY = FIELD_NAME.lower()


def authserv_id_of(field: bytes) -> str:
    """The authserv-id an A-R field claims ('' if none can be read), lower case."""
    value = field.split(b":", 1)[1] if b":" in field else b""
    text = re.sub(rb"\r?\n", b"", value).decode("utf-8", "replace")
    text = _skip_cfws(text)
    if text.startswith('"'):  # RFC 8601 §2.2: authserv-id is a value: token or quoted-string
        end = text.find('"', 1)
        return text[1:end if end > 0 else None].strip().lower()
    return re.split(r"[\s;()]", text, maxsplit=1)[0].strip().lower()


def _skip_cfws(text: str) -> str:
    # Leading white space and (nested) comments, RFC 5322 §3.2.2.
    i, depth = 0, 0
    while i < len(text):
        c = text[i]
        if depth:
            if c == "\\":
                i += 1
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        elif c == "(":
            depth = 1
        elif not c.isspace():
            break
        i += 1
    return text[i:]


def claims_authserv_id(field: HeaderField, ours: str) -> bool:
    """Is this an A-R field claiming ``ours`` (stripped, lower case)?"""
    return field.key == FIELD_KEY and authserv_id_of(field.raw) == ours


def strip_our_authentication_results(message: Message, authserv_id: str) -> Message:
    ours = authserv_id.strip().lower()
    return message.without(lambda field: claims_authserv_id(field, ours))


# --- our header -------------------------------------------------------------------------
# authres builds and quotes every result (a few object constructions and regular
# expressions each: tens of microseconds a message), yet all but DKIM's header.b
# repeats from message to message of one sender.  So the text authres makes of
# each result is remembered, keyed by the plain values that decide it, and only
# header.b is formatted per message.  The caches are bounded: their keys come
# from senders (MAIL FROM, d=, s=, From: domain).
_CACHED_RESULTS = 4096
# QuotableValue.quote_if_needed's own test for a value left unquoted (RFC 2045 token).
_TOKEN_RE = re.compile(rf"^{authres.core.RFC2045_TOKEN_PATTERN}$")


def authentication_results(authserv_id: str, evidence: InboundEvidence,
                           iprev: tuple[str, str, str] | None = None) -> bytes:
    """The A-R field, one result per folded line, ending in CRLF.  ``iprev``:
    (result, client address, confirmed name) from MX screening's FCrDNS."""
    ev = evidence
    spf_prop, spf_value = ev.spf.property
    results = [authserv_id]
    if iprev is not None:
        results.append(_iprev_text(*iprev))
    results.append(_spf_text(ev.spf.result, spf_prop, spf_value))
    if not ev.dkim:
        results.append(_dkim_text("none", "", "", "", ""))
    for d in ev.dkim:
        text = _dkim_text(d.result, d.reason, d.domain, d.selector, d.algorithm)
        if d.b_prefix:  # RFC 6008 §4: tells apart two signatures of one domain
            text += _header_b(d.b_prefix)
        results.append(text)
    if ev.arc.result != "none":
        comment = f"i={ev.arc.instances} as.d={ev.arc.sealer}" if ev.arc.sealer else None
        results.append(_arc_text(ev.arc.result, comment))
    dm = ev.dmarc
    results.append(_dmarc_text(dm.result, dm.header_from, dm.policy, dm.disposition))
    return FIELD_NAME + b": " + ";\r\n\t".join(results).encode("utf-8") + b"\r\n"


@functools.lru_cache(maxsize=_CACHED_RESULTS)
def _iprev_text(result: str, client_ip: str, name: str) -> str:
    # RFC 8601 §2.7.3: iprev reports policy.iprev, the address checked; the name
    # that confirmed it goes in a comment.
    return str(authres.IPRevAuthenticationResult(
        result=result, policy_iprev=client_ip, policy_iprev_comment=name or None))


@functools.lru_cache(maxsize=_CACHED_RESULTS)
def _spf_text(result: str, prop: str, value: str) -> str:
    return str(authres.SPFAuthenticationResult(
        result=result,
        smtp_mailfrom=value if prop == "smtp.mailfrom" and value else None,
        smtp_helo=value if prop == "smtp.helo" and value else None,
    ))


@functools.lru_cache(maxsize=_CACHED_RESULTS)
def _dkim_text(result: str, reason: str, domain: str, selector: str, algorithm: str) -> str:
    """The DKIM result without header.b, which authres would append last."""
    return str(authres.DKIMAuthenticationResult(
        result=result, reason=reason or None, header_d=domain or None,
        header_s=selector or None, header_a=algorithm or None,
    ))


def _header_b(b_prefix: str) -> str:
    """' header.b=<value>', as authres's AuthenticationResult.__str__ appends it.

    The same decisions as authres's QuotableValue.quote_if_needed, without
    building objects for the two usual cases: a value with '@' or a whole RFC
    2045 token stays as it is; one without '"' or '\\' (base64's '/' and '='
    are not token characters) is quoted with nothing to escape.  Anything else
    goes through authres itself.
    """
    if "@" in b_prefix or _TOKEN_RE.match(b_prefix):
        return " header.b=" + b_prefix
    if '"' not in b_prefix and "\\" not in b_prefix:
        return ' header.b="' + b_prefix + '"'
    return " header.b=" + authres.core.QuotableValue(b_prefix).quote_if_needed()


@functools.lru_cache(maxsize=1024)  # only mail that went through a forwarder has ARC
def _arc_text(result: str, comment: str | None) -> str:
    return str(authres.arc.ARCAuthenticationResult(result=result, result_comment=comment))


@functools.lru_cache(maxsize=_CACHED_RESULTS)
def _dmarc_text(result: str, header_from: str, policy: str, disposition: str) -> str:
    applied = result in ("pass", "fail")
    # The published policy and our applied disposition, as in RFC 7489 §7.2 reports.
    comment = f"p={policy.upper()} dis={disposition.upper()}" if applied else None
    return str(authres.dmarc.DMARCAuthenticationResult(
        result=result, result_comment=comment, header_from=header_from or None,
        policy=policy if applied else None,
    ))


def stamp_authentication_results(
    message: Message, authserv_id: str, evidence: InboundEvidence
) -> bytes:
    """Strip forged A-R fields claiming ``authserv_id`` and prepend ours."""
    stripped = strip_our_authentication_results(message, authserv_id)
    return authentication_results(authserv_id, evidence) + bytes(stripped.data)
