"""What do the inbound checks cost per message, with the DNS cache warm?

Starts a private NSD (tests/support/authdns.py) serving a sender domain with
SPF (one include), a DKIM RSA-2048 key, an Ed25519 key and a DMARC record;
signs a 5 KB message with RSA-2048; warms the resolver cache; then times
``authenticate_inbound`` one message at a time and 16 at a time, with RSA
verified through OpenSSL (our default) and through dkimpy's pure Python
(for comparison), next to ``openssl speed rsa2048`` verify rate.

    /work/venv/bin/python bench/checks_cost.py [--seconds 3] [--cpu 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim

from gateway.checks import dkim_verify
from gateway.checks.dns import Resolver
from gateway.checks.inbound import authenticate_inbound
from tests.support.authdns import AuthDNS, txt_record
from tests.support.dkim_keys import ed25519_key, rsa_key

HEADERS = (
    b"Received: from mx.sender.example (mx.sender.example [192.0.2.1])\r\n"
    b"\tby mx.isp.example; Mon, 23 Nov 2026 19:00:00 +0000\r\n"
    b"From: Alice Example <alice@sender.example>\r\n"
    b"To: Bob Example <bob@isp.example>\r\n"
    b"Subject: Quarterly report\r\n"
    b"Date: Mon, 23 Nov 2026 19:00:00 +0000\r\n"
    b"Message-ID: <20261123190000.4XYZ@sender.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
)
LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.  Sed do eiusmod \r\n"


def message_5k() -> bytes:
    body = b""
    while len(HEADERS) + 2 + len(body) + len(LINE) <= 5120:
        body += LINE
    return HEADERS + b"\r\n" + body


def openssl_verify_rate(seconds: int, cpu: int | None) -> float:
    cmd = ["openssl", "speed", "-seconds", str(seconds), "rsa2048"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"rsa 2048 bits\s+\S+s\s+\S+s\s+[\d.]+\s+([\d.]+)", out)
    return float(m.group(1)) if m else float("nan")


async def measure(resolver, msg, seconds: float, concurrency: int) -> tuple[float, float, object]:
    async def one():
        return await authenticate_inbound(resolver, message=msg, mail_from="alice@sender.example",
                                          helo="mx.sender.example", client_ip="192.0.2.1")

    ev = await one()  # warm the cache (and check the result below)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        await asyncio.gather(*(one() for _ in range(concurrency)))
        n += concurrency
    # CPU time of the whole process (loop and worker threads): steadier than wall
    # time on a shared machine, and what a core can do at most.
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n, ev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    zone = "\n".join([
        '@               TXT "v=spf1 include:_spf.sender.example -all"',
        '_spf            TXT "v=spf1 ip4:198.51.100.0/24 ip4:192.0.2.0/24 -all"',
        '_dmarc          TXT "v=DMARC1; p=reject"',
        f"rsa._domainkey TXT {txt_record(rsa_key().record)}",
        f"ed._domainkey  TXT {txt_record(ed25519_key().record)}",
    ])
    msg = rsa_key().sign(message_5k(), b"rsa", b"sender.example")
    with tempfile.TemporaryDirectory() as tmp, AuthDNS({"sender.example": zone}, tmp) as dns:
        resolver = Resolver(["127.0.0.1"], port=dns.port, timeout=2.0)
        rows = []
        for label, verify in (("OpenSSL RSA (default)", dkim_verify.rsa_verify_openssl),
                              ("dkimpy pure-Python RSA", dkim_verify._pure_python_rsa_verify)):
            dkim.RSASSA_PKCS1_v1_5_verify = verify
            for conc in (1, 16):
                rate, cpu, ev = asyncio.run(measure(resolver, msg, args.seconds, conc))
                assert (ev.spf.result, ev.dkim[0].result, ev.dmarc.result) == ("pass",) * 3, ev
                rows.append((label, conc, rate, cpu))
        dkim.RSASSA_PKCS1_v1_5_verify = dkim_verify.rsa_verify_openssl
        sent = resolver.queries_sent
    print(f"authenticate_inbound, 5 KB message, 1 RSA-2048 signature, SPF with include, "
          f"DMARC p=reject; cache warm ({sent} DNS queries in all)")
    for label, conc, rate, cpu in rows:
        print(f"  {label:24s} concurrency {conc:2d}: {rate:6.0f} msg/s wall, "
              f"{1e6 * cpu:6.0f} us CPU/msg (= {1 / cpu:5.0f} msg/s per core)")
    ossl = openssl_verify_rate(max(1, round(args.seconds)), args.cpu)
    print(f"  openssl speed rsa2048 verify: {ossl:.0f}/s ({1e6 / ossl:.0f} us each)")


if __name__ == "__main__":
    main()
