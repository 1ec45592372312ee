"""``portcullis audit relay | proxy | scan | report``: the command lines and their exits.

Exit status of relay, proxy and scan: 0 nothing open, 1 something open, 2 the audit
could not run (a bad argument is one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

from gateway.audit import records, report, scan
from gateway.audit.listener import AuditListener
from gateway.audit.proxy import DEFAULT_PROXY_PORT, METHODS, audit_proxy, format_proxy_report
from gateway.audit.relay import (
    DEFAULT_THIRD_PARTY,
    audit_relay,
    check_argument,
    exit_code,
    format_report,
)
from gateway.audit.relay_proof import prove_relay
from gateway.audit.targets import (
    PROXY_PORTS,
    RELAY_PORTS,
    hosts_in,
    parse_host_port,
    parse_ports,
    parse_ranges,
)
from gateway.values.domains import normalise_domain

EXIT_CANNOT_RUN = 2


def add_audit_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``audit`` to the CLI; the parsed args carry ``func(args) -> exit code``."""
    audit = subparsers.add_parser("audit", help="audit servers for open relays and open proxies")
    kinds = audit.add_subparsers(dest="audit_kind", required=True)
    _add_relay(kinds)
    _add_proxy(kinds)
    _add_scan(kinds)
    _add_report(kinds)
    return audit


def _listener_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", metavar="HOST[:PORT]",
        help="where the audit's own SMTP listener binds (port 25 by default); the targets "
        "are asked to reach it, so it must be reachable from them",
    )
    parser.add_argument(
        "--reach", metavar="HOST[:PORT]",
        help="the listener's address as the targets see it, if not --listen (NAT)",
    )


def _add_relay(kinds) -> None:
    relay = kinds.add_parser(
        "relay",
        help="test a server for open relaying",
        description="Try the classic open-relay tricks against HOST[:PORT]. Only that address "
        "is contacted; every transaction is reset after RCPT and no DATA is sent, unless "
        "--prove-domain is given: then each open trick sends one tagged message to that "
        "domain, which must route to the audit listener (--listen). "
        "Exit status: 0 nothing open, 1 open relay, 2 could not run.",
    )
    relay.add_argument("server", metavar="HOST[:PORT]", help="the server to test (port 25 by default)")
    relay.add_argument("--helo", help="the name to send in EHLO (default: this machine's name)")
    relay.add_argument(
        "--target-domain",
        help="a domain the server accepts mail for, to build the local-looking forms "
        "(default: the name in the server's greeting)",
    )
    relay.add_argument(
        "--third-party-domain", default=DEFAULT_THIRD_PARTY,
        help=f"the stranger's domain (default: {DEFAULT_THIRD_PARTY}, reserved by RFC 2606)",
    )
    tls = relay.add_mutually_exclusive_group()
    tls.add_argument("--starttls", action="store_true", help="STARTTLS before the tests (port 587)")
    tls.add_argument("--tls", action="store_true", help="TLS from the first byte (port 465)")
    relay.add_argument("--timeout", type=float, default=15.0, help="seconds per reply (default 15)")
    relay.add_argument(
        "--prove-domain",
        help="prove delivery: a domain whose mail goes to the audit listener; it replaces "
        "the third party in every trick",
    )
    relay.add_argument("--prove-wait", type=float, default=60.0,
                       help="seconds to wait for the tagged messages (default 60)")
    _listener_options(relay)
    relay.set_defaults(func=run_relay_command)


def _add_proxy(kinds) -> None:
    proxy = kinds.add_parser(
        "proxy",
        help="test a host for an open proxy (HTTP, SOCKS, port forward)",
        description="Ask HOST[:PORT] to carry a connection to the audit's own SMTP listener "
        "(--listen), by HTTP CONNECT, POST and GET, SOCKS4, SOCKS4a, SOCKS5 and a plain "
        "port forward. Open only when the listener receives the token sent through it. "
        "Exit status: 0 nothing open, 1 open proxy, 2 could not run.",
    )
    proxy.add_argument("server", metavar="HOST[:PORT]",
                       help=f"the host to test (port {DEFAULT_PROXY_PORT} by default)")
    proxy.add_argument("--methods", default=",".join(METHODS),
                       help=f"which methods to try (default: all of {','.join(METHODS)})")
    proxy.add_argument("--timeout", type=float, default=10.0, help="seconds per reply (default 10)")
    proxy.add_argument("--grace", type=float, default=2.0,
                       help="seconds to wait for a late arrival at the listener (default 2)")
    _listener_options(proxy)
    proxy.set_defaults(func=run_proxy_command)


def _add_scan(kinds) -> None:
    defaults = scan.ScanSettings()
    p = kinds.add_parser(
        "scan",
        help="audit whole address ranges for open relays and open proxies",
        description="Test every address of the named ranges on the relay and proxy ports. "
        "Only those addresses are contacted. Results go to --out as JSON Lines as they come; "
        "run the same command again to resume. Exit status: 0 nothing open, 1 something "
        "open, 2 could not run.",
    )
    p.add_argument("ranges", nargs="+", metavar="RANGE", help="CIDR ranges or addresses (your own!)")
    p.add_argument("--exclude", action="append", default=[], metavar="RANGE",
                   help="addresses inside the ranges not to touch (repeatable)")
    p.add_argument("--relay-ports", default=",".join(map(str, RELAY_PORTS)),
                   help="ports for the relay tests, or 'none' (default: %(default)s)")
    p.add_argument("--proxy-ports", default=",".join(map(str, PROXY_PORTS)),
                   help="ports for the proxy tests, or 'none' (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("audit-scan.jsonl"),
                   help="JSON Lines, appended as each test ends (default: %(default)s)")
    p.add_argument("--csv", type=Path, help="write the CSV of every result here at the end")
    p.add_argument("--dry-run", action="store_true", help="print what would be probed and how long it takes")
    p.add_argument("--concurrency", type=int, default=defaults.concurrency)
    p.add_argument("--rate", type=float, default=defaults.rate, help="new tests per second, overall")
    p.add_argument("--host-rate", type=float, default=defaults.host_rate,
                   help="new tests per second on one host")
    p.add_argument("--connect-timeout", type=float, default=defaults.connect_timeout)
    p.add_argument("--timeout", type=float, default=defaults.reply_timeout, help="seconds per reply")
    p.add_argument("--host-deadline", type=float, default=defaults.job_deadline,
                   help="seconds for everything on one host and port")
    p.add_argument("--grace", type=float, default=defaults.grace)
    p.add_argument("--helo", help="the name to send in EHLO (default: this machine's name)")
    p.add_argument("--target-domain")
    p.add_argument("--prove-domain", help="relays: prove delivery to this domain (see audit relay)")
    p.add_argument("--prove-wait", type=float, default=defaults.prove_wait)
    _listener_options(p)
    p.set_defaults(func=run_scan_command)


def _add_report(kinds) -> None:
    p = kinds.add_parser(
        "report",
        help="the letter to each customer, from a scan's JSON Lines",
        description="For each host with something open (or the --host given): what is open, "
        "the evidence, and how to close it.",
    )
    p.add_argument("results", type=Path, help="the scan's JSON Lines (--out)")
    p.add_argument("--host", action="append", default=[], help="only this host (repeatable)")
    p.add_argument("--markdown", action="store_true", help="Markdown instead of plain text")
    p.add_argument("--dir", type=Path, help="write one file per host here instead of stdout")
    p.set_defaults(func=run_report_command)


# --- running them ----------------------------------------------------------------------

def _fail(command: str, problem: object) -> int:
    print(f"audit {command}: {problem}", file=sys.stderr)
    return EXIT_CANNOT_RUN


def _listener_address(args: argparse.Namespace, needed_for: str) -> tuple[tuple[str, int], tuple[str, int]]:
    if not args.listen:
        raise ValueError(f"--listen is needed for {needed_for}: the address of the audit's "
                         "own SMTP listener, reachable from the targets")
    bind = parse_host_port(args.listen)
    reach = parse_host_port(args.reach, bind[1]) if args.reach else bind
    return bind, reach


def _helo(args: argparse.Namespace) -> str:
    helo = args.helo or socket.gethostname() or "localhost"
    check_argument("helo", helo)
    return helo


def run_relay_command(args: argparse.Namespace) -> int:
    try:
        host, port = parse_host_port(args.server)
        helo = _helo(args)
        prove = args.prove_domain is not None
        third_party = normalise_domain(args.prove_domain) if prove else args.third_party_domain
        bind = _listener_address(args, "--prove-domain")[0] if prove else None
    except ValueError as exc:
        return _fail("relay", exc)

    async def run():
        audit = await audit_relay(
            host, port, helo=helo, target_domain=args.target_domain,
            third_party_domain=third_party, starttls=args.starttls, implicit_tls=args.tls,
            reply_timeout=args.timeout,
        )
        if bind is None or not audit.is_open:
            return audit
        async with AuditListener(*bind) as listener:
            return await prove_relay(audit, listener, helo=helo, starttls=args.starttls,
                                     implicit_tls=args.tls, reply_timeout=args.timeout,
                                     wait=args.prove_wait)

    try:
        audit = asyncio.run(run())
    except (ValueError, OSError) as exc:
        return _fail("relay", exc)
    sys.stdout.write(format_report(audit))
    return exit_code(audit)


def run_proxy_command(args: argparse.Namespace) -> int:
    try:
        host, port = parse_host_port(args.server, DEFAULT_PROXY_PORT)
        bind, reach = _listener_address(args, "the proxy tests")
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; "
                             f"known: {', '.join(METHODS)}")
    except ValueError as exc:
        return _fail("proxy", exc)

    async def run():
        async with AuditListener(*bind) as listener:
            return await audit_proxy(host, port, listener, reach=reach, methods=methods,
                                     reply_timeout=args.timeout, grace=args.grace)

    try:
        audit = asyncio.run(run())
    except OSError as exc:  # the listener's address cannot be bound
        return _fail("proxy", f"--listen {args.listen}: {exc.strerror or exc}")
    sys.stdout.write(format_proxy_report(audit))
    if audit.is_open:
        return 1
    return EXIT_CANNOT_RUN if audit.error else 0


def run_scan_command(args: argparse.Namespace) -> int:
    try:
        hosts = hosts_in(parse_ranges(args.ranges), parse_ranges(args.exclude))
        plan = scan.ScanPlan(tuple(hosts), parse_ports(args.relay_ports), parse_ports(args.proxy_ports))
        if args.concurrency < 1 or args.rate <= 0 or args.host_rate <= 0:
            raise ValueError("--concurrency, --rate and --host-rate must be positive")
        settings = scan.ScanSettings(
            concurrency=args.concurrency, rate=args.rate, host_rate=args.host_rate,
            connect_timeout=args.connect_timeout, reply_timeout=args.timeout,
            job_deadline=args.host_deadline, grace=args.grace, helo=_helo(args),
            target_domain=args.target_domain,
            third_party_domain=normalise_domain(args.prove_domain) if args.prove_domain else DEFAULT_THIRD_PARTY,
            prove=args.prove_domain is not None, prove_wait=args.prove_wait,
        )
        needs_listener = bool(plan.proxy_ports) or settings.prove
        addresses = _listener_address(args, "the proxy tests and --prove-domain") if needs_listener else None
    except ValueError as exc:
        return _fail("scan", exc)
    earlier = scan.read_records(args.out)
    skipped = len(scan.done_jobs(earlier) & {(j.host, j.port) for j in plan.jobs()})
    if args.dry_run:
        sys.stdout.write(scan.describe_plan(plan, settings, skipped))
        return 0

    def progress(record: dict) -> None:
        if record["status"] != records.NO_ANSWER:
            opened = ", ".join(record.get("open") or []) or record.get("error", "")
            print(f"{record['host']}:{record['port']} {record['kind']} {record['status']} {opened}",
                  file=sys.stderr)

    async def run():
        if addresses is None:
            return await scan.run_scan(plan, settings, args.out, progress=progress)
        bind, reach = addresses
        async with AuditListener(*bind) as listener:
            return await scan.run_scan(plan, settings, args.out, listener=listener,
                                       reach=reach, progress=progress)

    try:
        asyncio.run(run())
    except OSError as exc:
        return _fail("scan", f"{args.out if not args.listen else '--listen ' + args.listen}: "
                     f"{exc.strerror or exc}")
    wanted = {(j.host, j.port) for j in plan.jobs()}
    found = [r for r in scan.read_records(args.out) if (r["host"], r["port"]) in wanted]
    sys.stdout.write(scan.format_summary(found))
    if args.csv:
        args.csv.write_text(scan.format_csv(found), encoding="utf-8")
    return 1 if any(r["status"] == records.OPEN for r in found) else 0


def run_report_command(args: argparse.Namespace) -> int:
    if not args.results.exists():
        return _fail("report", f"{args.results}: no such file")
    found = scan.read_records(args.results)
    hosts = args.host or report.hosts_with_findings(found)
    if not hosts:
        print(f"{args.results}: nothing open in {len(found)} results", file=sys.stderr)
        return 0
    for host in hosts:
        text = report.format_host_report(host, found, markdown=args.markdown)
        if args.dir:
            args.dir.mkdir(parents=True, exist_ok=True)
            name = host.replace(":", "_") + (".md" if args.markdown else ".txt")
            (args.dir / name).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text + "\n")
    return 0
