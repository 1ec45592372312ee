"""Admin tokens: made here, stored hashed (scrypt) in the gateway file, checked off
the event loop.

A token reads ``NAME.SECRET``.  The name is not secret: it picks the one hash to
check and names the caller in the audit journal; the secret is 32 random bytes.
scrypt (RFC 7914) costs about 50 ms and 16 MB per check, so a stolen gateway file
does not give the tokens away; a check that succeeded is remembered (by a keyed
SHA-256 of the token, for a minute) so an API client is not slowed on every call.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config.admin import TOKEN_NAME, AdminToken

# RFC 7914 §2 / OWASP: N=2^14, r=8, p=1 is the interactive-login minimum.
N, R, P = 2**14, 8, 1
_REMEMBER = 60.0


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    role: str  # "read-only" | "operator"

    @property
    def may_change(self) -> bool:
        return self.role == "operator"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2,
                          dklen=32)


def new_token(name: str) -> tuple[str, str]:
    """A fresh token for ``name`` and the hash that goes into the gateway file."""
    if not TOKEN_NAME.match(name):
        raise ValueError("a token name is 1-32 of a-z, 0-9 and '-'")
    secret = _b64(secrets.token_bytes(32))
    salt = secrets.token_bytes(16)
    digest = _scrypt(secret, salt, N, R, P)
    return f"{name}.{secret}", f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def hash_matches(secret: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    got = _scrypt(secret, _unb64(salt), int(n), int(r), int(p))
    return hmac.compare_digest(got, _unb64(digest))


class TokenChecker:
    """Checks tokens against the tokens in force (passed on each call, so a reload
    that adds or removes one is seen at once)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._known: dict[bytes, tuple[str, str, float]] = {}

    async def check(self, token: str, tokens: Sequence[AdminToken]) -> Caller | None:
        name, dot, secret = token.partition(".")
        if not dot or not secret or len(token) > 200:
            return None
        entry = next((t for t in tokens if t.name == name), None)
        if entry is None:
            return None
        key = hmac.new(self._key, token.encode(), hashlib.sha256).digest()
        now = self._clock()
        known = self._known.get(key)
        # Remembered only for the same hash: a token replaced in the file stops working.
        if known is not None and known[0] == entry.hash and known[2] > now:
            return Caller(entry.name, entry.role)
        if not await asyncio.to_thread(hash_matches, secret, entry.hash):
            return None
        if len(self._known) > 1000:
            self._known.clear()
        self._known[key] = (entry.hash, entry.role, now + _REMEMBER)
        return Caller(entry.name, entry.role)
