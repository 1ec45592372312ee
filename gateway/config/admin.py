"""The gateway file's ``admin:`` section: the admin API and the abuse desk's console.

    admin:
      address: 127.0.0.1            # loopback by default; an SSO proxy in front (docs/console.md)
      port: 8443
      tls: {cert: admin.pem, key: admin.key}
      tokens:
        - name: desk                # who, in the audit journal
          role: operator            # read-only | operator
          hash: scrypt$16384$8$1$...   # `portcullis admin-token desk --role operator`
      audit_log: admin-audit.jsonl
      session_minutes: 30

A listener of its own, apart from ``http:`` (metrics and autoconfig may face the
world; this one changes state).  Tokens are stored hashed: the gateway file never
holds a secret that would let its reader act.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.base import Port, Strict, TLSFiles

Role = Literal["read-only", "operator"]
# A token is "NAME.SECRET": the name picks the one hash to check (no scrypt per
# configured token on every attempt), and names the caller in the audit journal.
TOKEN_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
# scrypt$N$r$p$salt$hash (salt and hash in URL-safe base64): gateway/admin/tokens.py.
TOKEN_HASH = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$[A-Za-z0-9_-]{16,}\$[A-Za-z0-9_-]{43}$")


class AdminToken(Strict):
    name: str
    role: Role
    hash: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not TOKEN_NAME.match(value):
            raise ValueError("must be 1-32 of a-z, 0-9 and '-', starting with a letter or digit")
        return value

    @field_validator("hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        m = TOKEN_HASH.match(value)
        if not m:
            raise ValueError("must be a scrypt hash as `portcullis admin-token` prints it, "
                             "never the token itself")
        n, r, p = (int(x) for x in m.groups())
        if n < 2**14 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise ValueError("scrypt parameters too weak or invalid (N a power of 2, at least 16384)")
        return value


class AdminSettings(Strict):
    address: str = "127.0.0.1"
    port: Port = 8443
    # HTTPS: the session cookie is Secure, so a browser sends it only over HTTPS.
    # Without tls, put a TLS-terminating proxy in front (docs/console.md).
    tls: TLSFiles | None = None
    # No token: nobody can use the listener (every request refused).
    tokens: tuple[AdminToken, ...] = ()
    # Every change made through the API or the console: who, when, what, from where.
    audit_log: Path = Path("admin-audit.jsonl")
    session_minutes: Annotated[int, Field(ge=1, le=24 * 60)] = 30
    # Refused logins or tokens per client address per minute, before 429.
    max_failures_per_minute: Annotated[int, Field(ge=1, le=1000)] = 10
    # Client addresses of a trusted proxy: only from them is X-Forwarded-For believed.
    trusted_proxies: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> AdminSettings:
        names = [t.name for t in self.tokens]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tokens: the name {dup[0]!r} is used twice")
        return self
