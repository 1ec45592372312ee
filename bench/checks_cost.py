"""What do the inbound checks cost per message, with the DNS cache warm?

Starts a private NSD (tests/support/authdns.py) serving a sender domain with
SPF (one include), a DKIM RSA-2048 key, an Ed25519 key and a DMARC record;
signs a 5 KB message with RSA-2048; warms the resolver cache; then times
``authenticate_inbound`` and the Authentication-Results stamp, one message at a
time and 16 at a time:

* as the gateway runs it (our DKIM verifier, inline; SPF remembered);
* with dkimpy verifying DKIM in a worker thread, as before (for comparison);

then each piece alone (DKIM verify, SPF, DMARC, the Authentication-Results
stamp), and ``openssl speed rsa2048``'s verify rate.  CPU time per message is
the figure to read on a shared machine: each is the best of several rounds,
and the spread of the rounds is printed.

    /work/venv/bin/python bench/checks_cost.py [--seconds 3] [--rounds 5] [--cpu 0]
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
from gateway.checks import inbound as inbound_module
from gateway.checks.dkim_verify import DkimResult, KeyTable, fetch_keys, key_name
from gateway.checks.dmarc import evaluate, find_record_cached, from_domain
from gateway.checks.dns import Resolver
from gateway.checks.inbound import authenticate_inbound
from gateway.checks.spf import check_spf_cached
from gateway.message import Message
from gateway.stamps.authresults import authentication_results, strip_our_authentication_results
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
        evidence = await authenticate_inbound(  # read as the handler reads every message
            resolver, message=Message.parse(msg), mail_from="alice@sender.example",
            helo="mx.sender.example", client_ip="192.0.2.1")
        authentication_results("mx.isp.example", evidence)  # and the stamp, as the gateway does
        return evidence

    ev = await one()  # warm the cache (and check the result below)
    await one()
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        await asyncio.gather(*(one() for _ in range(concurrency)))
        n += concurrency
    # CPU time of the whole process (loop and worker threads): steadier than wall
    # time on a shared machine, and what a core can do at most.
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n, ev


# --- the previous DKIM path, for comparison: dkimpy in a worker thread ---------------------
def _signature_tags(message: Message) -> list:
    return [dkim_verify.parse_tags(f.raw_value) for f in message.fields
            if f.key == b"dkim-signature"]


async def verify_dkim_with_dkimpy(resolver, message: Message, *, executor=None, now=None):
    tags = _signature_tags(message)
    keys = await fetch_keys(resolver, [key_name(t[b"s"], t[b"d"]) for t in tags if t])
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, _dkimpy_all, message.data, tags, keys)


def _dkimpy_all(message: bytes, tags: list, keys: KeyTable) -> list[DkimResult]:
    verifier = dkim.DKIM(message, minkey=dkim_verify.MIN_RSA_BITS, logger=dkim_verify._quiet)
    out = []
    for i, t in enumerate(tags):
        try:
            ok = verifier.verify(idx=i, dnsfunc=keys.dnsfunc)
        except dkim.DKIMException:
            ok = False
        out.append(DkimResult("pass" if ok else "fail", t[b"d"].decode(), t[b"s"].decode(),
                              t[b"a"].decode(), ""))
    return out


def best_of(rounds: int, fn, number: int) -> tuple[float, float]:
    """(best, worst) microseconds of CPU per call over ``rounds`` rounds."""
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(number):
            fn()
        times.append((time.process_time() - start) / number * 1e6)
    return min(times), max(times)


def pieces(resolver: Resolver, msg: bytes, ev, rounds: int) -> list[tuple[str, float, float]]:
    """CPU per call of each piece, with the cache warm."""
    keys = asyncio.run(fetch_keys(resolver, ["rsa._domainkey.sender.example"]))
    now = time.time()
    spf_args = dict(client_ip="192.0.2.1", mail_from="alice@sender.example",
                    helo="mx.sender.example")
    header_from = from_domain(msg)
    lookup = find_record_cached(resolver, header_from)
    parsed = Message.parse(msg)  # as the handler read it
    n = 2000
    return [
        ("DKIM verify (ours, 1 x RSA-2048)",
         *best_of(rounds, lambda: dkim_verify.verify_signatures(msg, keys, now), n)),
        ("DKIM verify (dkimpy, for comparison)",
         *best_of(rounds, lambda: _dkimpy_all(msg, _signature_tags(parsed), keys), n // 4)),
        ("SPF (remembered result)", *best_of(rounds, lambda: check_spf_cached(resolver, **spf_args), n)),
        ("DMARC (From:, record, evaluate)", *best_of(rounds, lambda: evaluate(
            find_record_cached(resolver, from_domain(parsed)), header_from, ev.spf, ev.dkim), n)),
        ("A-R stamp (strip forged + build ours)", *best_of(rounds, lambda: (
            authentication_results("mx.isp.example", ev),
            strip_our_authentication_results(parsed, "mx.isp.example")), n)),
        ("reading the message (Message.parse)", *best_of(rounds, lambda: Message.parse(msg), n)),
    ] if lookup is not None else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
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
    ours = inbound_module.verify_dkim
    with tempfile.TemporaryDirectory() as tmp, AuthDNS({"sender.example": zone}, tmp) as dns:
        resolver = Resolver(["127.0.0.1"], port=dns.port, timeout=2.0)
        rows = []
        for label, verify in (("as the gateway runs it", ours),
                              ("DKIM by dkimpy in a thread", verify_dkim_with_dkimpy)):
            inbound_module.verify_dkim = verify
            for conc in (1, 16):
                runs = [asyncio.run(measure(resolver, msg, args.seconds / args.rounds, conc))
                        for _ in range(args.rounds)]
                ev = runs[0][2]
                assert (ev.spf.result, ev.dkim[0].result, ev.dmarc.result) == ("pass",) * 3, ev
                cpus = sorted(r[1] for r in runs)
                rows.append((label, conc, max(r[0] for r in runs), cpus[0], cpus[-1]))
        inbound_module.verify_dkim = ours
        ev = asyncio.run(measure(resolver, msg, 0.1, 1))[2]
        parts = pieces(resolver, msg, ev, args.rounds)
        sent = resolver.queries_sent
    print(f"authenticate_inbound, 5 KB message, 1 RSA-2048 signature, SPF with include, "
          f"DMARC p=reject; cache warm ({sent} DNS queries in all); best of {args.rounds} rounds")
    for label, conc, rate, best, worst in rows:
        print(f"  {label:28s} concurrency {conc:2d}: {rate:6.0f} msg/s wall, "
              f"{1e6 * best:5.0f} us CPU/msg (worst round {1e6 * worst:5.0f}; "
              f"= {1 / best:5.0f} msg/s per core)")
    print("each piece alone (us CPU per call, best / worst round):")
    for label, best, worst in parts:
        print(f"  {label:40s} {best:6.1f} / {worst:6.1f}")
    ossl = openssl_verify_rate(max(1, round(args.seconds)), args.cpu)
    print(f"  openssl speed rsa2048 verify: {ossl:.0f}/s ({1e6 / ossl:.0f} us each)")


if __name__ == "__main__":
    main()
