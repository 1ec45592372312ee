"""Inbound throughput with every check on (SPF, DKIM, DMARC, ARC), against Postfix.

    python bench/inbound_checks.py [--messages 3000] [--sessions 20] [--rounds 5] [--baseline CHECKOUT]

A private NSD serves sender.test (SPF for 127.0.0.1, DMARC p=reject, an
RSA-2048 DKIM key); smtp-source sends one 5 KB message signed with that key
(a new connection per message) into smtp-sink five ways:

    postfix        smtp-source → Postfix relay → smtp-sink
    plain/1        portcullis --workers 1, inbound checks off
    checks/1       portcullis --workers 1, all checks on, DNS cache warm
    plain/auto     portcullis --workers auto, inbound checks off
    checks/auto    portcullis --workers auto, all checks on

All five stay up and each is timed once per round, the rounds interleaved (the
machine's speed drifts, and every path then sees the same drift); the table has
the median of the rounds.  It prints messages/s with the ratio against the
Postfix relay and against the plain path with the same workers, then the targets:
checks/1 at least the Postfix rate, checks/auto at least 2x, and the checks
costing at most a fifth of the plain path (checks/auto at least 0.8x plain/auto),
from the issue that added the checks; and issue 16's checks/auto at least 2.5x.  It also
prints the gateway's own CPU time per message (all its processes, from /proc),
which is steadier than wall-clock rates on a shared machine; smtp-source,
smtp-sink and NSD share the cores too, so the gateway's CPU share of a message
is a stricter measure than the rates.  Needs root and Debian's postfix and nsd.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim

from bench.inbound import (
    add_load_options,
    start_gateway,
    stop,
    timed_run,
    wait_port,
    warm_up,
)
from bench.interpreter import interpreter
from tests.support.authdns import AuthDNS, txt_record
from tests.support.dkim_keys import rsa_key
from tests.support.ports import free_port
from tests.support.postfix import PostfixInstance

SENDER = "news@sender.test"
POSTFIX = "smtp-source → Postfix relay → smtp-sink"
PLAIN_1 = "portcullis --workers 1, checks off"
CHECKS_1 = "portcullis --workers 1, all checks"
PLAIN_AUTO = "portcullis --workers auto, checks off"
CHECKS_AUTO = "portcullis --workers auto, all checks"
BASELINE = "  baseline: "


def signed_message(size: int) -> bytes:
    key = rsa_key(2048)
    line = b"All work and no play makes a benchmark a dull message. " * 1 + b"\r\n"
    body = line * max(1, size // len(line))
    msg = (f"From: News <{SENDER}>\r\nTo: bob@acme.example\r\nSubject: bench\r\n"
           f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench@sender.test>\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n").encode() + body
    sig = dkim.sign(msg, b"sel", b"sender.test", key.private,
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + msg


def signed_source(tmp: Path, size: int) -> tuple[dict, dict[str, str]]:
    """smtp_source()'s arguments for the signed message from sender.test (written
    into ``tmp``), and the zone that makes its SPF, DKIM and DMARC pass."""
    message = tmp / "signed.eml"
    # smtp-source sends each line with CRLF: give it LF-terminated lines.
    message.write_bytes(signed_message(size).replace(b"\r\n", b"\n"))
    zones = {"sender.test": f"""
        @              TXT "v=spf1 ip4:127.0.0.1 -all"
        _dmarc         TXT "v=DMARC1; p=reject"
        sel._domainkey TXT {txt_record(rsa_key(2048).record)}
    """}
    return {"message_file": message, "sender": SENDER}, zones


def checks_config(dns_port: int) -> str:
    """The gateway file's lines that turn every inbound check on, against that DNS."""
    return f"dns: {{nameservers: ['127.0.0.1'], port: {dns_port}, timeout: 2}}\n"


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its descendants, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(p, 0.0) for p in tree)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(parser, messages=3000)
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed runs of every path, interleaved; the median is reported")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/inbound_checks.py needs root (smtp-sink and Postfix drop privileges)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    source, zones = signed_source(tmp, args.size)
    rates_seen: dict[str, list[float]] = {}
    cpu_seen: dict[str, list[float]] = {}
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"])
    dns = AuthDNS(zones, tmp).start()
    gateways: dict[str, tuple[subprocess.Popen, int]] = {}
    postfix = PostfixInstance(free_port(), f"[127.0.0.1]:{sink_port}", relay_domains=["acme.example"])
    try:
        wait_port(sink_port)
        postfix.start()
        checks = checks_config(dns.port)
        for label, workers, extra in (
            (PLAIN_1, "1", "inbound_checks: false\n"),
            (CHECKS_1, "1", checks),
            (PLAIN_AUTO, "auto", "inbound_checks: false\n"),
            (CHECKS_AUTO, "auto", checks),
        ):
            gateways[label] = start_gateway(tmp, sink_port, workers, extra, name=f"{workers}-{len(gateways)}")
            if args.baseline is not None:
                # The same path from the baseline checkout, timed in the same rounds.
                gateways[BASELINE + label] = start_gateway(
                    tmp, sink_port, workers, extra, name=f"base-{workers}-{len(gateways)}",
                    checkout=args.baseline)
        # All five paths stay up; each is warmed (the gateways' DNS caches too, as the
        # issue asks), then timed once per round, in a new order each round: the
        # machine's speed drifts, and every path sees the same drift.
        warm_up(postfix.port, args, **source)
        for _proc, port in gateways.values():
            warm_up(port, args, at_least=50, **source)
        paths = [POSTFIX, *gateways]
        for round_number in range(args.rounds):
            order = paths[round_number % len(paths):] + paths[: round_number % len(paths)]
            for label in order:
                if label == POSTFIX:
                    rates_seen.setdefault(label, []).append(timed_run(postfix.port, args, **source))
                    continue
                proc, port = gateways[label]
                cpu = process_tree_cpu(proc.pid)
                rates_seen.setdefault(label, []).append(timed_run(port, args, **source))
                cpu_seen.setdefault(label, []).append((process_tree_cpu(proc.pid) - cpu) / args.messages)
    finally:
        for proc, _port in gateways.values():
            stop(proc)
        postfix.stop()
        dns.stop()
        sink.terminate()
        sink.wait(10)

    rows = [(label, statistics.median(rates_seen[label])) for label in (POSTFIX, *gateways)]
    cpu_per_message = {label: statistics.median(v) for label, v in cpu_seen.items()}
    rates = dict(rows)
    postfix_rate = rows[0][1]
    plain_of = {CHECKS_1: PLAIN_1, CHECKS_AUTO: PLAIN_AUTO}
    print(f"\nInbound with checks: {args.messages} DKIM-signed messages of ~{args.size} bytes, "
          f"{args.sessions} sessions, a new connection per message, {os.cpu_count()} cores; "
          f"the median of {args.rounds} interleaved rounds; gateways on {interpreter()}\n")
    print(f"{'path':<48} {'msg/s':>9} {'(rounds)':>12} {'× Postfix':>10} {'× plain':>8} "
          f"{'gateway CPU/msg':>16}")
    for name, rate in rows:
        plain = rates.get(plain_of.get(name, name))
        versus_plain = f"{rate / plain:>8.2f}" if plain and name in plain_of else f"{'':>8}"
        cpu = cpu_per_message.get(name)
        cpu_text = f"{1e6 * cpu:>13.0f} us" if cpu is not None else ""
        spread = f"{min(rates_seen[name]):.0f}-{max(rates_seen[name]):.0f}"
        print(f"{name:<48} {rate:>9.0f} {spread:>12} {rate / postfix_rate:>10.2f} {versus_plain} "
              f"{cpu_text}")
    if args.baseline is not None:
        print(f"\nthis checkout against the baseline {args.baseline} (same rounds): "
              "rate ratio, and gateway CPU per message ratio (lower is better)")
        for label in (PLAIN_1, CHECKS_1, PLAIN_AUTO, CHECKS_AUTO):
            base = BASELINE + label
            print(f"  {label:<46} rate {rates[label] / rates[base]:>6.3f}   "
                  f"CPU/msg {cpu_per_message[label] / cpu_per_message[base]:>6.3f}")
    print("\ntargets:")
    for text, value, goal in (
        ("checks, 1 worker, × Postfix", rates[CHECKS_1] / postfix_rate, 1.0),
        ("checks, --workers auto, × Postfix", rates[CHECKS_AUTO] / postfix_rate, 2.0),
        ("checks, --workers auto, × Postfix (issue 16)", rates[CHECKS_AUTO] / postfix_rate, 2.5),
        ("checks, --workers auto, × plain (a fifth off at most)",
         rates[CHECKS_AUTO] / rates[PLAIN_AUTO], 0.8),
    ):
        print(f"  {text:<56} {value:5.2f}  (at least {goal:.1f}: {'met' if value >= goal else 'NOT met'})")
    for checks_label, plain_label in plain_of.items():
        plain_cpu, checks_cpu = cpu_per_message[plain_label], cpu_per_message[checks_label]
        print(f"  the checks' gateway CPU per message ({checks_label.split(',')[0]}): "
              f"{1e6 * (checks_cpu - plain_cpu):.0f} us, {(checks_cpu - plain_cpu) / plain_cpu:.0%} "
              f"of the plain path's {1e6 * plain_cpu:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
