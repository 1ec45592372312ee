"""DKIM verification (RFC 6376) of every signature on an inbound message.

dkimpy does the canonicalisation and hashing; around it we:

* look the keys up first, asynchronously, through the shared resolver, and
  hand dkimpy a ``dnsfunc`` that only reads those answers.  The key names are
  known from the signatures (``s=`` and ``d=``), so unlike SPF nothing needs
  a thread waiting on the loop; a DNS failure is raised from ``dnsfunc`` and
  becomes ``temperror`` (dkimpy's own plug-in would make it a ``fail``);
* verify each signature by index (``DKIM.verify(idx=i)`` checks only one);
* map dkimpy's mix of False and exceptions to RFC 8601 §2.7.1 results;
* refuse what RFC 8301 forbids: ``rsa-sha1`` and RSA keys under 1024 bits;
* do RSA with OpenSSL (``cryptography``) instead of dkimpy's pure Python,
  which is about 25 times slower per signature.

The CPU work (hashing, RSA) runs in an executor, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

import dkim
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.util import InvalidTagValueList, parse_tag_value

from gateway.checks.dns import DnsTempError, Resolver

MIN_RSA_BITS = 1024  # RFC 8301 §3.2
_quiet = logging.getLogger("gateway.checks.dkim.lib")  # dkimpy logs every failure as an error
_quiet.setLevel(logging.CRITICAL)


@dataclass(frozen=True, slots=True)
class DkimResult:
    result: str  # pass, fail, neutral, temperror, permerror (RFC 8601 §2.7.1)
    domain: str  # header.d
    selector: str  # header.s
    algorithm: str  # header.a
    b_prefix: str  # header.b: the first 8 characters of b= (RFC 6008 §4)
    identity: str = ""  # header.i, when given
    reason: str = ""


# --- keys: fetched asynchronously, read synchronously by dkimpy -------------------
class KeyTable:
    """DNS TXT answers for DKIM/ARC key names, fetched ahead for dkimpy's ``dnsfunc``."""

    def __init__(self, answers: dict[str, bytes | None | DnsTempError]):
        self._answers = answers

    def dnsfunc(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        key = _key_name(name)
        answer = self._answers.get(key)
        if isinstance(answer, DnsTempError):
            raise answer
        return answer

    def is_missing(self, name: str) -> bool:
        return self._answers.get(_key_name(name)) is None


async def fetch_keys(resolver: Resolver, names: Iterable[str]) -> KeyTable:
    unique = sorted({_key_name(n) for n in names})
    answers: dict[str, bytes | None | DnsTempError] = {}
    missing = []
    for name in unique:  # warm cache: no tasks needed
        cached = resolver.cached(name, "TXT")
        if cached is None:
            missing.append(name)
        else:
            answers[name] = _first(cached.texts())

    async def one(name: str) -> bytes | None | DnsTempError:
        try:
            return _first(await resolver.txt(name))
        except DnsTempError as e:
            return e

    if missing:
        results = await asyncio.gather(*(one(n) for n in missing))
        answers.update(zip(missing, results, strict=True))
    return KeyTable(answers)


def _first(texts: list[bytes]) -> bytes | None:
    # dkimpy's own plug-in also takes the first TXT record.
    return texts[0] if texts else None


def key_name(selector: bytes | str, domain: bytes | str) -> str:
    # Tags come from the sender: never let odd bytes raise here.
    s = selector.decode("utf-8", "replace") if isinstance(selector, bytes) else selector
    d = domain.decode("utf-8", "replace") if isinstance(domain, bytes) else domain
    return f"{s}._domainkey.{d}"


def _key_name(name: bytes | str) -> str:
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return name.rstrip(".").lower()


# --- the check -------------------------------------------------------------------------
async def verify_dkim(
    resolver: Resolver, message: bytes, *, executor: Executor | None = None
) -> list[DkimResult]:
    """One result per DKIM-Signature, top to bottom; [] when the message has none."""
    signatures = header_values(message, b"dkim-signature")
    if not signatures:
        return []  # RFC 8601 §2.7.1: dkim=none, decided by the caller
    tags = [_tags(value) for value in signatures]
    names = [key_name(t[b"s"], t[b"d"]) for t in tags if t and b"s" in t and b"d" in t]
    keys = await fetch_keys(resolver, names)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, _verify_all, message, tags, keys)


def header_values(message: bytes, *names: bytes) -> list[bytes]:
    """Unfolded values of the named header fields, in order (names in lower case).

    A quick scan for the fields we need before verifying; dkimpy's own parser
    (a regex per line) costs about 0.2 ms on a 5 KB message.
    """
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    lowered = head.lower()
    if not any(n in lowered for n in names):
        return []
    values: list[bytes] = []
    current: bytes | None = None
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                values[-1] += line
            continue
        name, colon, value = line.partition(b":")
        current = value if colon and name.strip().lower() in names else None
        if current is not None:
            values.append(value)
    return values


def _tags(value: bytes) -> dict[bytes, bytes] | None:
    try:
        return parse_tag_value(value)
    except InvalidTagValueList:
        return None


def _verify_all(message: bytes, tags: list, keys: KeyTable) -> list[DkimResult]:
    verifier = dkim.DKIM(message, logger=_quiet, minkey=MIN_RSA_BITS)
    return [_verify_one(verifier, i, t, keys) for i, t in enumerate(tags)]


def _verify_one(verifier: dkim.DKIM, idx: int, tags: dict | None, keys: KeyTable) -> DkimResult:
    if tags is None:
        return DkimResult("permerror", "", "", "", "", reason="signature tag list unparsable")

    def text(tag: bytes) -> str:
        return tags.get(tag, b"").decode("ascii", "replace")

    b = "".join(text(b"b").split())
    made = functools.partial(
        DkimResult, domain=text(b"d").lower(), selector=text(b"s"), algorithm=text(b"a").lower(),
        b_prefix=b[:8], identity=text(b"i"),
    )
    # RFC 8301 §3.1: verifiers MUST NOT consider rsa-sha1 signatures valid.
    if tags.get(b"a", b"").lower() == b"rsa-sha1":
        return made("fail", reason="rsa-sha1 is not accepted (RFC 8301)")
    name = key_name(tags.get(b"s", b""), tags.get(b"d", b""))
    # One DKIM object serves every index: forget the previous signature's key.
    verifier.pk, verifier.keysize, verifier.ktag = None, 0, None
    try:
        valid = verifier.verify(idx=idx, dnsfunc=keys.dnsfunc)
    except DnsTempError as e:
        return made("temperror", reason=f"key lookup failed: {e}")
    except dkim.KeyFormatError as e:
        # dkimpy raises this after a good signature made with a short key.
        if "too small" in str(e):
            return made("fail", reason=f"RSA key under {MIN_RSA_BITS} bits (RFC 8301)")
        return made("permerror", reason=f"bad key: {e}")
    except dkim.ValidationError as e:
        # RFC 6376 §6.1.1-3: a bad body hash or an expired signature fails;
        # a signature that is malformed cannot be verified at all.
        msg = str(e)
        if "body hash mismatch" in msg or "expired" in msg or "in the future" in msg:
            return made("fail", reason=msg.split(" (")[0])
        return made("permerror", reason=msg)
    except dkim.DKIMException as e:
        return made("permerror", reason=str(e))
    if valid:
        return made("pass")
    if b"s" in tags and b"d" in tags and keys.is_missing(name):
        return made("permerror", reason="no key for signature")
    if verifier.keysize and verifier.keysize < MIN_RSA_BITS and verifier.ktag == b"rsa":
        return made("fail", reason=f"RSA key under {MIN_RSA_BITS} bits (RFC 8301)")
    if getattr(verifier, "pk", None) is None:
        return made("permerror", reason="key record unusable")
    return made("fail", reason="signature did not verify")


# --- RSA through OpenSSL -------------------------------------------------------------
# dkimpy verifies RSA with Python integers (dkim.crypto.RSASSA_PKCS1_v1_5_verify);
# the same check through OpenSSL is ~25x faster.  dkimpy calls the name it imported
# into the ``dkim`` module, so replacing it there covers DKIM and ARC alike.
_HASHES = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}


@functools.lru_cache(maxsize=4096)
def _public_key(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def rsa_verify_openssl(hash_obj, signature: bytes, public_key: dict) -> bool:
    """Drop-in for dkimpy's RSASSA_PKCS1_v1_5_verify (same arguments, same answer)."""
    algorithm = _HASHES[hash_obj.name]()
    try:
        key = _public_key(public_key["modulus"], public_key["publicExponent"])
        key.verify(signature, hash_obj.digest(), padding.PKCS1v15(), Prehashed(algorithm))
    except (InvalidSignature, ValueError):
        return False
    return True


_pure_python_rsa_verify = dkim.RSASSA_PKCS1_v1_5_verify
dkim.RSASSA_PKCS1_v1_5_verify = rsa_verify_openssl

# dkimpy parses the key record (base64, ASN.1 in Python) for every signature: about
# 0.1 ms.  The parse depends only on the record text, so keep recent ones.
_evaluate_pk_uncached = dkim.evaluate_pk
dkim.evaluate_pk = functools.lru_cache(maxsize=4096)(_evaluate_pk_uncached)
