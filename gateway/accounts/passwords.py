"""Password hashes: make argon2id, verify the formats ISPs already hold.

Accepted on import (so an existing Dovecot passwd-file or LDAP dump can be used
as is):

=====================  ===========================================
``$argon2id$...``      argon2-cffi (what ``portcullis passwd`` makes)
``{ARGON2ID}$argon2id$...``  Dovecot's scheme prefix, same hash
``$2b$`` / ``$2y$`` / ``$2a$``  bcrypt; ``{BLF-CRYPT}`` prefix too
``$6$...``             SHA512-CRYPT; ``{SHA512-CRYPT}`` prefix too
=====================  ===========================================

Verifying is slow on purpose (argon2id, bcrypt): call :func:`verify` through
``asyncio.to_thread`` or an executor, never on the event loop.
"""

from __future__ import annotations

import re

import argon2
import bcrypt
from passlib.hash import sha512_crypt

_hasher = argon2.PasswordHasher()  # RFC 9106 second recommended profile (64 MiB, t=3)

# Dovecot's scheme prefixes; the hash after them says which algorithm it is.
_DOVECOT_PREFIXES = ("{ARGON2ID}", "{ARGON2I}", "{BLF-CRYPT}", "{SHA512-CRYPT}")

# Verified against when a login does not exist, so a wrong login costs the same
# time as a wrong password and the reply timing reveals nothing (no enumeration).
_DUMMY_HASH = _hasher.hash("portcullis-dummy-password-for-timing")


def hash_password(password: str) -> str:
    """An argon2id hash for a policy file."""
    return _hasher.hash(password)


def _split(stored: str) -> tuple[str, str] | None:
    """(scheme, hash without a Dovecot {SCHEME} prefix), or None if unsupported."""
    for prefix in _DOVECOT_PREFIXES:
        if stored.upper().startswith(prefix):
            stored = stored[len(prefix):]
            break
    if stored.startswith("$argon2id$"):
        return "argon2id", stored
    if stored.startswith("$argon2i$"):
        return "argon2i", stored
    if stored[:4] in ("$2a$", "$2b$", "$2y$"):
        return "bcrypt", stored
    if stored.startswith("$6$"):
        return "sha512-crypt", stored
    return None


# An argon2 hash as argon2-cffi writes it ($argon2id$v=19$m=65536,t=3,p=4$salt$hash).
# Matching it proves argon2.extract_parameters would accept the hash; anything else
# (other orders, v1.2 without v=, odd digits) is left to extract_parameters to decide.
# Checking 100,000 policy files, the regular expression is about ten times faster.
_ARGON2_PLAIN = re.compile(r"\$argon2(?:id|i)\$v=[0-9]+\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[^$]*\$[^$]*")


def is_supported_hash(stored: str) -> bool:
    """Whether ``stored`` is a hash :func:`verify` can check (never a plaintext)."""
    split = _split(stored)
    if split is None:
        return False
    scheme, value = split
    if scheme.startswith("argon2"):
        if _ARGON2_PLAIN.fullmatch(value):
            return True
        try:
            argon2.extract_parameters(value)
        except argon2.exceptions.InvalidHashError:
            return False
        return True
    if scheme == "bcrypt":
        return len(value) == 60
    return sha512_crypt.identify(value)


def verify(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored``.  Blocking: run it off the event loop.

    With ``stored=None`` (no such login) a dummy hash is checked so that timing
    does not tell a missing login from a wrong password.
    """
    if stored is None:
        _verify_argon2(_DUMMY_HASH, password)
        return False
    split = _split(stored)
    if split is None:
        _verify_argon2(_DUMMY_HASH, password)
        return False
    scheme, value = split
    if scheme.startswith("argon2"):
        return _verify_argon2(value, password)
    if scheme == "bcrypt":
        # bcrypt >= 4 does not know $2y$ (PHP's name for the same algorithm).
        data = value.replace("$2y$", "$2b$", 1).encode()
        try:
            return bcrypt.checkpw(password.encode()[:72], data)
        except ValueError:
            return False
    try:
        return bool(sha512_crypt.verify(password, value))
    except ValueError:
        return False


def _verify_argon2(value: str, password: str) -> bool:
    try:
        return _hasher.verify(value, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False

