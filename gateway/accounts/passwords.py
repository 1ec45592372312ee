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

import argon2
import bcrypt
from passlib.hash import sha512_crypt

# Which hashes a policy file may hold is a setting's check (gateway/config/policy.py);
# verifying them is ours.
from gateway.config.password_hashes import is_supported_hash, split_hash

__all__ = ["hash_password", "is_supported_hash", "split_hash", "verify"]

_hasher = argon2.PasswordHasher()  # RFC 9106 second recommended profile (64 MiB, t=3)

# Verified against when a login does not exist, so a wrong login costs the same
# time as a wrong password and the reply timing reveals nothing (no enumeration).
_DUMMY_HASH = _hasher.hash("portcullis-dummy-password-for-timing")


def hash_password(password: str) -> str:
    """An argon2id hash for a policy file."""
    return _hasher.hash(password)


def verify(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored``.  Blocking: run it off the event loop.

    With ``stored=None`` (no such login) a dummy hash is checked so that timing
    does not tell a missing login from a wrong password.
    """
    if stored is None:
        _verify_argon2(_DUMMY_HASH, password)
        return False
    split = split_hash(stored)
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

