"""What does reading the header cost a message, on each listener, from DATA's end on?

The header work the handler does for one 5 KB message, with the DNS cache warm:

* inbound: read the message, SPF/DKIM (one RSA-2048 signature)/ARC/DMARC
  (``authenticate_inbound``), strip forged Authentication-Results, build ours;
* submission: read the message, the From:/Sender: check, strip the client's
  X-Portcullis-Sender-Id, the signing facts, sign (Ed25519, so the header work is
  not lost behind RSA) with our stamps above the message;
* the reading alone.

It runs against whichever ``gateway`` is first on PYTHONPATH and speaks both the
one-Message API (issue 15) and the one before it, so the two trees can be timed in
the same run on the same machine:

    git archive <old commit> | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python bench/header_path.py; PYTHONPATH=. python bench/header_path.py

CPU time per message, best of several rounds (the spread is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # tests.support; PYTHONPATH's gateway first

from cryptography.hazmat.primitives.asymmetric import ed25519

import gateway
import gateway.message
from gateway.accounts.source import Identity
from gateway.checks.dns import Resolver
from gateway.checks.inbound import authenticate_inbound
from gateway.dkim.keystore import ActiveKey
from gateway.dkim.sign import sign_message, signing_facts
from gateway.rules.senders import decide_header_senders
from gateway.stamps.authresults import authentication_results, strip_our_authentication_results
from gateway.stamps.sender_id import strip_sender_id_headers
from tests.support.authdns import AuthDNS, txt_record
from tests.support.dkim_keys import rsa_key

NEW = hasattr(gateway.message, "Message")
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
STAMP = (b"Received: from client.example ([203.0.113.9])\r\n\tby mx.isp.example with ESMTPSA id T1;"
         b" Mon, 23 Nov 2026 19:00:00 +0000\r\nX-Portcullis-Sender-Id: v1.AAAAAAAAAAAAAAAAAAAAAAAA\r\n")
ALICE = Identity(login="alice@sender.example", customer="acme", senders=frozenset({"*@sender.example"}))
KEY = ActiveKey("sender.example", "ed", "ed25519-sha256", ed25519.Ed25519PrivateKey.generate())


def message_5k() -> bytes:
    body = b""
    while len(HEADERS) + 2 + len(body) + len(LINE) <= 5120:
        body += LINE
    return HEADERS + b"\r\n" + body


if NEW:
    from gateway.message import Message

    read = Message.parse

    async def inbound(resolver: Resolver, msg: bytes) -> object:
        message = read(msg)
        ev = await authenticate_inbound(resolver, message=message, mail_from="alice@sender.example",
                                        helo="mx.sender.example", client_ip="192.0.2.1")
        strip_our_authentication_results(message, "mx.isp.example")
        authentication_results("mx.isp.example", ev)
        return ev

    def submission(msg: bytes) -> bytes:
        message = read(msg)
        assert decide_header_senders(ALICE, {}, message.fields).accept
        message = strip_sender_id_headers(message)
        assert signing_facts(message).header_ok
        return sign_message(message, [KEY], 1_800_000_000, prefix=STAMP)
else:
    from gateway.message import header_fields

    read = header_fields

    async def inbound(resolver: Resolver, msg: bytes) -> object:
        header = read(msg)
        ev = await authenticate_inbound(resolver, message=msg, mail_from="alice@sender.example",
                                        helo="mx.sender.example", client_ip="192.0.2.1", header=header)
        if any(f.name.lower() == "authentication-results" for f in header):  # as check_inbound did
            strip_our_authentication_results(msg, "mx.isp.example")
        authentication_results("mx.isp.example", ev)
        return ev

    def submission(msg: bytes) -> bytes:
        fields = read(msg)
        assert decide_header_senders(ALICE, {}, fields).accept
        msg = strip_sender_id_headers(msg)
        assert signing_facts(msg).header_ok
        return sign_message(msg, [KEY], 1_800_000_000, prefix=STAMP)


def best_of(rounds: int, fn, number: int) -> tuple[float, float]:
    """(best, worst) microseconds of CPU per call over ``rounds`` rounds."""
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(number):
            fn()
        times.append((time.process_time() - start) / number * 1e6)
    return min(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--number", type=int, default=2000)
    args = ap.parse_args()
    zone = "\n".join([
        '@               TXT "v=spf1 ip4:192.0.2.0/24 -all"',
        '_dmarc          TXT "v=DMARC1; p=reject"',
        f"rsa._domainkey TXT {txt_record(rsa_key().record)}",
    ])
    msg = rsa_key().sign(message_5k(), b"rsa", b"sender.example")
    with tempfile.TemporaryDirectory() as tmp, AuthDNS({"sender.example": zone}, tmp) as dns:
        resolver = Resolver(["127.0.0.1"], port=dns.port, timeout=2.0)
        loop = asyncio.new_event_loop()
        ev = loop.run_until_complete(inbound(resolver, msg))  # warm the cache
        ev = loop.run_until_complete(inbound(resolver, msg))
        assert (ev.spf.result, ev.dkim[0].result, ev.dmarc.result) == ("pass",) * 3, ev
        rows = [
            ("inbound: read + checks + A-R", best_of(
                args.rounds, lambda: loop.run_until_complete(inbound(resolver, msg)), args.number)),
            ("submission: read + senders + strip + sign", best_of(
                args.rounds, lambda: submission(msg), args.number)),
            ("reading the header alone", best_of(args.rounds, lambda: read(msg), args.number * 5)),
        ]
        loop.close()
    print(f"{gateway.__file__} ({'one Message' if NEW else 'before'}), 5 KB message, "
          f"best / worst of {args.rounds} rounds, us CPU per message:")
    for label, (best, worst) in rows:
        print(f"  {label:44s} {best:7.1f} / {worst:7.1f}")


if __name__ == "__main__":
    main()
