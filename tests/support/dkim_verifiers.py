"""Independent DKIM verifiers for the signing tests, reading keys from a test's NSD.

* :func:`dkimpy_results`: dkimpy, one result per DKIM-Signature (``DKIM.verify(idx=i)``:
  ``dkim.verify()`` alone checks only the first), with a ``dnsfunc`` that asks our
  loopback NSD and raises on DNS failure rather than returning "no key".
* :func:`mail_dkim_results`: Perl Mail::DKIM (Debian's libmail-dkim-perl) through
  ``tests/support/dkim_verify.pl``, pointed at the same NSD.  Debian 12's version
  does not verify ed25519-sha256 (no Crypt::PK::Ed25519): it answers "invalid";
  tests/support/rspamd_dkim.py is the independent Ed25519 verifier.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dkim
import dns.resolver

VERIFY_PL = Path(__file__).with_name("dkim_verify.pl")


def zone_from_generate_output(*outputs: str) -> str:
    """Zone text from `portcullis keys generate` outputs: the records as printed
    (comment lines start with ';' and are zone-file comments already)."""
    return "\n".join(outputs)


def resolver_for(port: int) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    r.lifetime = 3.0
    return r


def dnsfunc_for(port: int):
    resolver = resolver_for(port)

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        try:
            answer = resolver.resolve(name.decode("ascii"), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return b""
        return b"".join(answer[0].strings)

    return dnsfunc


def dkimpy_results(message: bytes, port: int) -> list[bool]:
    """True/False per signature, top first; a dkimpy ValidationError counts as False."""
    d = dkim.DKIM(message)
    count = len(re.findall(rb"(?mi)^DKIM-Signature:", message.split(b"\r\n\r\n", 1)[0]))
    out = []
    for i in range(count):
        try:
            out.append(bool(d.verify(idx=i, dnsfunc=dnsfunc_for(port))))
        except dkim.ValidationError:
            out.append(False)
    return out


@dataclass(frozen=True)
class PerlResult:
    domain: str
    selector: str
    algorithm: str
    result: str
    detail: str


def mail_dkim_results(message: bytes, port: int) -> list[PerlResult]:
    run = subprocess.run(
        ["perl", str(VERIFY_PL), str(port)], input=message, capture_output=True, timeout=30,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    out = []
    for line in run.stdout.decode().splitlines():
        m = re.match(r"d=(\S*) s=(\S*) a=(\S*) (\S+) \((.*)\)$", line)
        if m:
            out.append(PerlResult(*m.groups()))
    return out
