"""MTA-STS (RFC 8461) and SMTP TLS Reporting (RFC 8460): the policy file and the two
TXT records a customer domain publishes so that senders insist on TLS to the ISP's MX.

Pure functions over plain data (docs/dns.md).  The policy is the same for every
customer domain (it lists the ISP's MX names); only where it is fetched from differs
(``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``, RFC 8461 §3.3).  The policy id
is derived from the policy text, so it changes exactly when the policy does: RFC
8461 §3.1 asks that it "uniquely identify a given instance of a policy".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

POLICY_PATH = "/.well-known/mta-sts.txt"
# RFC 8461 §3.2: a policy is cached for at most max_age seconds, at most 31557600.
MAX_MAX_AGE = 31557600
# RFC 8461 §3.1: the id is 1 to 32 alphanumeric characters.
ID_LENGTH = 20
# RFC 8461 §3.3: "senders SHOULD NOT ... a policy larger than 64 KiB".
MAX_POLICY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Policy:
    mode: str  # enforce / testing / none
    mx: tuple[str, ...]  # MX names or "*.suffix" patterns, lower case, no trailing dot
    max_age: int

    def text(self) -> str:
        """The policy file (RFC 8461 §3.2: "key: value" lines; LF or CRLF both allowed)."""
        lines = ["version: STSv1", f"mode: {self.mode}"]
        lines += [f"mx: {name}" for name in self.mx]
        lines.append(f"max_age: {self.max_age}")
        return "\n".join(lines) + "\n"

    def policy_id(self) -> str:
        return hashlib.sha256(self.text().encode("ascii")).hexdigest()[:ID_LENGTH]

    def sts_record(self) -> str:
        """The ``_mta-sts.DOMAIN`` TXT value (RFC 8461 §3.1)."""
        return f"v=STSv1; id={self.policy_id()}"


def policy_for(mode: str, mx_names: Sequence[str], max_age: int) -> Policy:
    """Our MX names first, in order, each once."""
    names = tuple(dict.fromkeys(n.rstrip(".").lower() for n in mx_names))
    return Policy(mode, names, max_age)


def gateway_policy(mode: str, mx_host: str | None, more_mx: Sequence[str],
                   max_age: int) -> Policy | None:
    """The policy of a gateway whose MX name is ``mx_host`` (None: we are nobody's MX)."""
    return policy_for(mode, (mx_host, *more_mx), max_age) if mx_host else None


def tls_rpt_record(rua: str) -> str:
    """The ``_smtp._tls.DOMAIN`` TXT value (RFC 8460 §3)."""
    return f"v=TLSRPTv1; rua={rua}"


def parse_policy(text: str) -> tuple[Policy | None, str]:
    """A fetched policy file, or None and why it is not one (RFC 8461 §3.2)."""
    fields: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            return None, f"the line {line[:60]!r} is not 'key: value'"
        fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        return None, "no 'version: STSv1' line"
    mode = fields.get("mode", [""])[0]
    if mode not in ("enforce", "testing", "none"):
        return None, f"mode {mode!r} is not enforce, testing or none"
    age = fields.get("max_age", [""])[0]
    if not age.isdigit() or int(age) > MAX_MAX_AGE:
        return None, f"max_age {age!r} is not a number of seconds up to {MAX_MAX_AGE}"
    mx = tuple(v.rstrip(".").lower() for v in fields.get("mx", []))
    if mode != "none" and not mx:
        return None, "no mx line (RFC 8461 §3.2: required unless mode is none)"
    return Policy(mode, mx, int(age)), ""


def judge_policy(expected: Policy, status: int, content_type: str,
                 body: bytes) -> tuple[bool, str]:
    """Is the policy served over HTTPS the one the TXT record's id announces?"""
    if status != 200:
        # RFC 8461 §3.3: only a 200 is a policy; redirects are not followed.
        return False, f"HTTP status {status}, not 200 (redirects are not followed)"
    if content_type.lower() != "text/plain":
        return False, f"media type {content_type or '(none)'}, not text/plain (RFC 8461 §3.2)"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False, "the body is not UTF-8 text"
    found, why = parse_policy(text)
    if found is None:
        return False, why
    wrong = [f"{name} {got}, not {want}" for name, got, want in (
        ("mode", found.mode, expected.mode),
        ("max_age", found.max_age, expected.max_age),
        ("mx", " ".join(sorted(found.mx)), " ".join(sorted(expected.mx))),
    ) if got != want]
    if wrong:
        return False, "; ".join(wrong) + " (senders would use this policy under our id)"
    return True, f"served, mode {found.mode}"
