"""How fast does Portcullis DKIM-sign a 5 KB message, next to OpenSSL itself?

Prints, measured in the same run and pinned to one core: our signer (RSA-2048 and
Ed25519, single signature), dkimpy's ``dkim.sign`` on the same message, the bare
signature operation our signer calls (RSA through ``cryptography``, Ed25519 through
PyNaCl's libsodium: the ceiling for the signer),
and ``openssl speed rsa2048`` / ``openssl speed ed25519`` sign rates, with ratios.

    /work/venv/bin/python bench/dkim_sign.py [--seconds 3] [--cpu 0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.dkim.keystore import ActiveKey, public_record
from gateway.dkim.sign import sign_message

HEADERS = (
    b"Received: from client.example.net (client.example.net [192.0.2.10])\r\n"
    b"\tby submit.example.com with ESMTPSA id 4XYZ; Mon, 23 Nov 2026 19:00:00 +0000\r\n"
    b"From: Alice Example <alice@example.com>\r\n"
    b"To: Bob Example <bob@example.org>, carol@example.org\r\n"
    b"Cc: dave@example.net\r\n"
    b"Subject: Quarterly report: figures for the\r\n third quarter\r\n"
    b"Date: Mon, 23 Nov 2026 19:00:00 +0000\r\n"
    b"Message-ID: <20261123190000.4XYZ@client.example.net>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"User-Agent: Example Mail 1.0\r\n"
)
# "plain": single spaces, no trailing white space (most mail: HTML, QP, base64 parts).
# "flowed": RFC 3676 format=flowed text, a trailing space on every line, and two
# spaces after each sentence: every white-space rule of relaxed canonicalisation fires.
LINES = {
    "plain": b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. Sed do eiusmod\r\n",
    "flowed": b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.  Sed do eiusmod \r\n",
}


def message_5k(shape: str = "plain") -> bytes:
    line, body = LINES[shape], b""
    while len(HEADERS) + 2 + len(body) + len(line) <= 5120 - 13:
        body += line
    body += b"-- \r\nAlice\r\n"
    return HEADERS + b"\r\n" + body


def rate(fn, seconds: float) -> float:
    """Calls per second of CPU time, as `openssl speed` counts by default (user CPU
    time, unless -elapsed): other processes on the machine then slow neither side."""
    fn()  # warm up
    n, start = 0, time.process_time()
    end = start + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        now = time.process_time()
        if now >= end:
            return n / (now - start)


def openssl_speed(alg: str, seconds: int, cpu: int) -> float:
    out = subprocess.run(
        ["taskset", "-c", str(cpu), "openssl", "speed", "-seconds", str(seconds), alg],
        capture_output=True, text=True, check=True,
    ).stdout
    pattern = (r"rsa 2048 bits\s+\S+s\s+\S+s\s+([\d.]+)" if alg == "rsa2048"
               else r"\(Ed25519\)\s+\S+s\s+\S+s\s+([\d.]+)")
    m = re.search(pattern, out)
    if not m:
        raise RuntimeError(f"cannot read openssl speed output:\n{out}")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per figure per round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="figures are measured in interleaved rounds; the best round counts "
                         "(other load on the machine only ever lowers a figure)")
    ap.add_argument("--cpu", type=int, default=0, help="the core to pin to")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})

    rk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ek = ed25519.Ed25519PrivateKey.generate()
    keys = {"RSA-2048": ActiveKey("example.com", "rsa", "rsa-sha256", rk),
            "Ed25519": ActiveKey("example.com", "ed", "ed25519-sha256", ek)}
    pem_r = rk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    raw_e = base64_raw_ed25519(ek)
    now = int(time.time())
    msgs = {shape: message_5k(shape) for shape in LINES}

    # Every figure below is only meaningful if the signatures verify.
    records = {b"rsa._domainkey.example.com.": public_record(rk).encode(),
               b"ed._domainkey.example.com.": public_record(ek).encode()}
    for msg in msgs.values():
        for key in keys.values():
            signed = sign_message(msg, [key], now) + msg
            assert dkim.verify(signed, dnsfunc=lambda n, timeout=5: records.get(n)), key.algorithm

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    from nacl.bindings import crypto_sign

    sodium_sk = (ek.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
                 + ek.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw))
    digest = hashlib.sha256(b"x").digest()
    pk, ph = padding.PKCS1v15(), Prehashed(hashes.SHA256())
    s = args.seconds
    measures = {
        ("RSA-2048", "openssl"): lambda: openssl_speed("rsa2048", max(1, round(s)), args.cpu),
        ("RSA-2048", "raw"): lambda: rate(lambda: rk.sign(digest, pk, ph), s),
        ("Ed25519", "openssl"): lambda: openssl_speed("ed25519", max(1, round(s)), args.cpu),
        # The primitive our signer calls: libsodium (PyNaCl) for Ed25519.
        ("Ed25519", "raw"): lambda: rate(lambda: crypto_sign(digest, sodium_sk), s),
        ("dual", "plain"): lambda: rate(
            lambda: sign_message(msgs["plain"], list(keys.values()), now), s),
    }
    for alg, key in keys.items():
        for shape, msg in msgs.items():
            measures[(alg, shape)] = (lambda m=msg, k=key: rate(lambda: sign_message(m, [k], now), s))
    samples: dict[tuple[str, str], list[float]] = {name: [] for name in measures}
    for _ in range(args.rounds):
        for name, measure in measures.items():
            samples[name].append(measure())
    best = {name: max(figures) for name, figures in samples.items()}
    # dkimpy is slow and steady: one round.
    best[("RSA-2048", "dkimpy")] = rate(lambda: dkim.sign(
        msgs["plain"], b"rsa", b"example.com", pem_r, canonicalize=(b"relaxed", b"relaxed")), s)
    best[("Ed25519", "dkimpy")] = rate(lambda: dkim.sign(
        msgs["plain"], b"ed", b"example.com", raw_e, canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=b"ed25519-sha256"), s)

    print(f"DKIM signing, {len(msgs['plain'])}-byte message, relaxed/relaxed, one core (cpu {args.cpu}); "
          f"rates per CPU second, best of {args.rounds} interleaved rounds of {s:g} s; load average: "
          f"{os.getloadavg()[0]:.2f}")
    print(f"cryptography {getattr(sys.modules['cryptography'], '__version__', '?')} with "
          f"{backend.openssl_version_text()}; `openssl` command: "
          f"{subprocess.run(['openssl', 'version'], capture_output=True, text=True).stdout.strip()}")
    print()
    head = (f"{'algorithm':<10}{'message':<8}{'portcullis/s':>13}{'dkimpy/s':>10}{'raw op/s':>10}"
            f"{'openssl speed/s':>17}{'ours/openssl':>14}{'dkimpy/openssl':>16}{'ours/raw op':>13}")
    print(head)
    print("-" * len(head))
    for alg in keys:
        ossl, raw = best[(alg, "openssl")], best[(alg, "raw")]
        for shape in msgs:
            ours = best[(alg, shape)]
            dk = best[(alg, "dkimpy")] if shape == "plain" else None
            print(f"{alg:<10}{shape:<8}{ours:>13.0f}{(f'{dk:.0f}' if dk else '-'):>10}{raw:>10.0f}"
                  f"{ossl:>17.0f}{ours / ossl:>14.0%}{(f'{dk / ossl:.0%}' if dk else '-'):>16}"
                  f"{ours / raw:>13.0%}")
    print()
    print(f"dual RSA-2048 + Ed25519, plain (one body hash, two signatures): "
          f"{best[('dual', 'plain')]:.0f} messages/s")
    print("raw op = the bare signature call our signer makes: RSA through cryptography (its "
          "bundled OpenSSL), Ed25519 through PyNaCl (libsodium); the ceiling for the signer")
    # Other load on the machine lowers figures unevenly: show how far rounds spread.
    print()
    print(f"spread over the {args.rounds} rounds (worst .. best, per CPU second):")
    for (alg, what), figures in samples.items():
        print(f"  {alg:<9}{what:<8}{min(figures):>9.0f} .. {max(figures):<9.0f}"
              f"({(max(figures) - min(figures)) / max(figures):.0%})")
    library = backend.openssl_version_text().split()[1]
    command = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.split()[1]
    if library != command:
        # Not the same code: "ours/openssl" compares against the `openssl` command's
        # OpenSSL; "ours/raw op" is the like-for-like figure (same library, same run).
        print(f"note: cryptography's OpenSSL {library} is not the `openssl` command's {command}: "
              f"read ours/openssl with ours/raw op beside it")
    print("note: Ed25519 is signed by libsodium, not OpenSSL: ours/openssl is our whole "
          "signature against the `openssl` command's bare one, not the same primitive")


def base64_raw_ed25519(key: ed25519.Ed25519PrivateKey) -> bytes:
    import base64

    return base64.b64encode(key.private_bytes(serialization.Encoding.Raw,
                                              serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption()))


if __name__ == "__main__":
    main()
