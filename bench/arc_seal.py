"""What does ARC-sealing an inbound message cost, next to DKIM-signing one?

Prints, measured in the same run on one core (CPU time, as `openssl speed`): our
seal (gateway/stamps/arc_seal.py: AAR + AMS + AS, two RSA-2048 signatures) for a
5 KB message arriving without a chain (i=1) and with a 1-hop chain (i=2); dkimpy's
``arc_sign`` making the same sets (pure-Python RSA: what the first version of the
step called); and our DKIM signer (one RSA-2048 signature) as the reference, with
ratios.  The seal runs in a worker thread: this is CPU taken from the gateway,
never time the event loop waits.

    python bench/arc_seal.py [--seconds 3] [--cpu 0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.dkim.sign import sign_message
from gateway.message import Message
from gateway.stamps.arc_seal import seal
from gateway.values.keys import ActiveKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dkim_sign import message_5k, rate

OUR_AR = (b"Authentication-Results: mx.isp.example;\r\n\tspf=pass smtp.mailfrom=alice@example.com;\r\n"
          b"\tdkim=pass header.d=example.com header.s=s1 header.a=rsa-sha256;\r\n"
          b"\tdmarc=pass header.from=example.com\r\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per figure")
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is shown")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    sealer = ActiveKey("isp.example", "arc1", "rsa-sha256", key)
    signer = ActiveKey("example.com", "s1", "rsa-sha256", key)
    plain = message_5k("plain")
    first_hop = OUR_AR + plain
    # A forwarder's 1-hop chain (its own A-R, then its seal), then our A-R saying arc=pass.
    theirs = b"Authentication-Results: fwd.example; spf=pass smtp.mailfrom=alice@example.com\r\n" + plain
    chain = b"".join(dkim.arc_sign(theirs, b"f1", b"fwd.example", pem, b"fwd.example"))
    second_hop = OUR_AR.replace(b"\tdmarc", b"\tarc=pass;\r\n\tdmarc") + chain + theirs
    now = int(time.time())

    ours_first = Message.parse(plain)
    ours_second = Message.parse(chain + theirs)
    arc_pass = OUR_AR.replace(b"\tdmarc", b"\tarc=pass;\r\n\tdmarc")
    cases = {
        "ours: ARC seal, i=1 (no chain)":
            lambda: seal(OUR_AR, ours_first, sealer, "mx.isp.example", "none", 1, now),
        "ours: ARC seal, i=2 (1-hop chain)":
            lambda: seal(arc_pass, ours_second, sealer, "mx.isp.example", "pass", 2, now),
        "dkimpy arc_sign, i=1":
            lambda: dkim.arc_sign(first_hop, b"arc1", b"isp.example", pem, b"mx.isp.example"),
        "dkimpy arc_sign, i=2":
            lambda: dkim.arc_sign(second_hop, b"arc1", b"isp.example", pem, b"mx.isp.example"),
        "reference: our DKIM signer": lambda: sign_message(plain, [signer], now),
    }
    made = b"".join(dkim.arc_sign(second_hop, b"arc1", b"isp.example", pem, b"mx.isp.example"))
    assert b"cv=pass" in made  # dkimpy read our A-R's arc=pass: the i=2 case is a real one
    figures: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):  # interleaved, so a noisy neighbour slows all alike
        for name, fn in cases.items():
            figures[name].append(rate(fn, args.seconds))
    median = {name: sorted(f)[len(f) // 2] for name, f in figures.items()}
    ref = median["reference: our DKIM signer"]

    print(f"ARC sealing vs DKIM signing, {len(plain)}-byte message, RSA-2048, one core "
          f"(cpu {args.cpu}), median of {args.rounds} rounds of {args.seconds:g} CPU s; "
          f"dkimpy {version('dkimpy')}")
    head = f"{'':<36}{'per CPU s':>11}{'ms each':>10}{'vs our DKIM signer':>21}"
    print(head)
    print("-" * len(head))
    for name, r in median.items():
        print(f"{name:<36}{r:>11.0f}{1000 / r:>10.2f}{r / ref:>20.3f}x")
    print()
    print("spread (worst .. best per CPU s):")
    for name, f in figures.items():
        print(f"  {name:<34}{min(f):>9.0f} .. {max(f):.0f}")


if __name__ == "__main__":
    main()
