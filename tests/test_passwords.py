"""Password hashes: argon2id made, the formats ISPs hold verified, plaintext refused."""

import subprocess
import sys

import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from passlib.hash import sha512_crypt

from gateway.accounts import passwords


def test_passwd_command_prints_an_argon2id_hash_that_verifies():
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "passwd", "--stdin"],
                         input="s3cret pass\n", capture_output=True, text=True, check=True)
    hashed = out.stdout.strip()
    assert hashed.startswith("$argon2id$")
    assert "s3cret" not in out.stdout + out.stderr
    assert passwords.verify(hashed, "s3cret pass")
    assert not passwords.verify(hashed, "s3cret pas")


def test_passwd_refuses_an_empty_password():
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "passwd", "--stdin"],
                         input="\n", capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == ""


def dovecot_style_hashes(pw):
    b = bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()
    s = sha512_crypt.using(rounds=5000).hash(pw)
    a = passwords.hash_password(pw)
    return {
        "argon2id": a, "{ARGON2ID}": "{ARGON2ID}" + a,
        "bcrypt $2b$": b, "bcrypt $2y$ (PHP)": b.replace("$2b$", "$2y$", 1),
        "{BLF-CRYPT}": "{BLF-CRYPT}" + b.replace("$2b$", "$2y$", 1),
        "$6$": s, "{SHA512-CRYPT}": "{SHA512-CRYPT}" + s,
    }


@pytest.mark.parametrize("scheme", list(dovecot_style_hashes("x")))
def test_imported_hash_formats_verify(scheme):
    stored = dovecot_style_hashes("pässword")[scheme]
    assert passwords.is_supported_hash(stored)
    assert passwords.verify(stored, "pässword")
    assert not passwords.verify(stored, "password")


@pytest.mark.parametrize("stored", ["hunter2", "{PLAIN}hunter2", "$1$abc$def", "{MD5-CRYPT}$1$x$y",
                                    "$argon2id$garbage", ""])
def test_plaintext_and_weak_or_broken_hashes_are_not_supported(stored):
    assert not passwords.is_supported_hash(stored)
    assert not passwords.verify(stored, "hunter2")


def test_a_missing_login_still_costs_a_hash_verification():
    assert passwords.verify(None, "anything") is False


def is_supported_hash_before(stored: str) -> bool:
    """is_supported_hash as it was before its regular-expression fast path: the
    reference the fast path must agree with on every string."""
    import argon2

    split = passwords.split_hash(stored)
    if split is None:
        return False
    scheme, value = split
    if scheme.startswith("argon2"):
        try:
            argon2.extract_parameters(value)
        except argon2.exceptions.InvalidHashError:
            return False
        return True
    if scheme == "bcrypt":
        return len(value) == 60
    return sha512_crypt.identify(value)


def hash_format_cases() -> list[str]:
    a = passwords.hash_password("pw")  # $argon2id$v=19$m=65536,t=3,p=4$salt$hash
    head, salt, digest = a.rsplit("$", 2)[0], a.rsplit("$", 2)[1], a.rsplit("$", 2)[2]
    cases = list(dovecot_style_hashes("pw").values()) + [
        a, "{argon2id}" + a, "{ARGON2I}" + a.replace("argon2id", "argon2i", 1),
        a.replace("argon2id", "argon2i", 1), a.replace("argon2id", "argon2d", 1),
        a.replace("$v=19", "", 1),                       # Argon2 v1.2: no v= part
        a.replace("m=65536,t=3,p=4", "t=3,p=4,m=65536"),  # parameters in another order
        a.replace("m=65536,t=3,p=4", "m=65536,t=3"),      # one missing
        a.replace("m=65536,t=3,p=4", "m=65536,t=3,p=4,x=1"),
        a.replace("m=65536,t=3,p=4", "m=65536,t=3,p=4,v=19"),  # v twice
        a.replace("m=65536", "m=6_5536"), a.replace("m=65536", "m= 65536"),
        a.replace("m=65536", "m=+65536"), a.replace("m=65536", "m=-1"),
        a.replace("m=65536", "m=٦٥٥٣٦"),                  # digits int() reads
        a.replace("m=65536", "m="), a.replace("m=65536", "m=0x10"),
        a.replace("v=19", "v=1.9"), a.replace("v=19", "v19"), a.replace("v=19", "v=1=9"),
        f"{head}${salt}", f"{head}${salt}${digest}$extra", f"{head}$${digest}", f"{head}${salt}$",
        a + "\n", a + " ", " " + a, "$argon2id$", "$argon2id$v=19$m=1,t=1,p=1$$",
        "$argon2i$m=1,t=1,p=1$c2FsdA$aGFzaA", "$argon2id$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA",
        "$argon2id$v=19$m=1,t=1,p=1$c2FsdA", "$argon2id$V=19$m=1,t=1,p=1$c2FsdA$aGFzaA",
        "$argon2id$v=19$M=1,t=1,p=1$c2FsdA$aGFzaA", "$argon2id$v=19$m=1,t=1,p=1,$c2FsdA$aGFzaA",
        "plaintext", "", "$2b$short", "$6$", "$6$rounds=5000$salt$", "{PLAIN}secret", "{SSHA}abc",
        "$1$salt$hash", "$5$salt$hash", "$argon2id", "argon2id$v=19$m=1,t=1,p=1$a$b",
    ]
    return cases


@pytest.mark.parametrize("stored", hash_format_cases())
def test_the_hash_format_check_agrees_with_argon2s_own_parser(stored):
    assert passwords.is_supported_hash(stored) == is_supported_hash_before(stored)


def test_the_hash_format_check_refuses_what_it_should():
    a = passwords.hash_password("pw")
    assert passwords.is_supported_hash(a)
    assert passwords.is_supported_hash(a.replace("m=65536,t=3,p=4", "t=3,p=4,m=65536"))
    assert not passwords.is_supported_hash(a.replace("m=65536,t=3,p=4", "m=65536,t=3"))
    assert not passwords.is_supported_hash(a.replace("m=65536", "m=x"))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["$", "argon2id", "argon2i", "v=19", "m=1", "t=2", "p=3", ",", "=",
                                  "v", "m", "1", "x", "c2FsdA", "{ARGON2ID}", " ", "٣", "_"]),
                max_size=14).map("".join))
def test_random_argon2_like_strings_get_the_same_answer(stored):
    assert passwords.is_supported_hash(stored) == is_supported_hash_before(stored)
