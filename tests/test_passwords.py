"""Password hashes: argon2id made, the formats ISPs hold verified, plaintext refused."""

import subprocess
import sys

import bcrypt
import pytest
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
