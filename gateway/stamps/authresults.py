"""Our Authentication-Results header (RFC 8601), and removal of forged ones.

RFC 8601 §5: before adding ours, remove every Authentication-Results field
that claims our authserv-id, so a sender cannot hand the downstream a forged
"pass".  The removal reads only the authserv-id at the start of the value,
with its own small scanner: a field that authres cannot parse (forgers do not
follow the grammar) is still recognised and removed.  Fields of other
authserv-ids are kept byte for byte, folding included.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import authres
import authres.arc
import authres.dmarc

from gateway.checks.inbound import InboundEvidence

FIELD_NAME = b"Authentication-Results"
_NAME_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:")  # RFC 5322 §3.6.8 field name


# --- header surgery on raw bytes ---------------------------------------------------
def split_header(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its folded lines and CRLFs) and the rest."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        head, rest = message, b""
    else:
        head, rest = message[: end + 2], message[end + 2 :]
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line  # RFC 5322 §2.2.3: a folded continuation
        else:
            fields.append(line)
    return fields, rest


def field_name(field: bytes) -> bytes:
    match = _NAME_RE.match(field)
    return match.group(1).lower() if match else b""


def remove_fields(message: bytes, should_remove: Callable[[bytes, bytes], bool]) -> bytes:
    """The message without the header fields for which ``should_remove(name, field)``."""
    fields, rest = split_header(message)
    kept = [f for f in fields if not should_remove(field_name(f), f)]
    return b"".join(kept) + rest


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


def strip_our_authentication_results(message: bytes, authserv_id: str) -> bytes:
    ours = authserv_id.strip().lower()
    return remove_fields(
        message,
        lambda name, field: name == FIELD_NAME.lower() and authserv_id_of(field) == ours,
    )


# --- our header -------------------------------------------------------------------------
def authentication_results(authserv_id: str, evidence: InboundEvidence) -> bytes:
    """The A-R field, one result per folded line, ending in CRLF."""
    results = [str(r) for r in _results(evidence)]
    value = ";\r\n\t".join([authserv_id, *results])
    return FIELD_NAME + b": " + value.encode("utf-8") + b"\r\n"


def _results(ev: InboundEvidence) -> list[authres.core.AuthenticationResult]:
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
        if d.b_prefix:  # RFC 6008 §4: tells apart two signatures of one domain
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
        # The published policy and our applied disposition, as in RFC 7489 §7.2 reports.
        comment = f"p={dm.policy.upper()} dis={dm.disposition.upper()}"
    out.append(authres.dmarc.DMARCAuthenticationResult(
        result=dm.result, result_comment=comment, header_from=dm.header_from or None,
        policy=dm.policy if dm.result in ("pass", "fail") else None,
    ))
    return out


def stamp_authentication_results(
    message: bytes, authserv_id: str, evidence: InboundEvidence
) -> bytes:
    """Strip forged A-R fields claiming ``authserv_id`` and prepend ours."""
    return authentication_results(authserv_id, evidence) + strip_our_authentication_results(
        message, authserv_id
    )
