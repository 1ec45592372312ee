"""``portcullis keys``: generate, list and check DKIM keys.

    portcullis keys generate DOMAIN --selector S [--algorithm rsa|ed25519] [--bits 2048]
                                    [--not-before WHEN] [--not-after WHEN]
    portcullis keys list [--dns [--nameserver IP] [--port N] [--timeout S]]
    portcullis keys check DOMAIN [--nameserver IP] [--port N] [--timeout S]

``check`` and ``list --dns`` judge each record as the gateway's publication watch
does (gateway/dkim/publication.py) and say which selectors sign now by its rule.

The lead's ``gateway/cli.py`` calls :func:`add_keys_parser`; until then
``python -m gateway.dkim.commands keys ...`` runs the same commands.
Private keys are never printed: only public keys and file names.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import dns.asyncresolver
import dns.exception
import dns.resolver

from gateway.config.errors import ConfigErrors
from gateway.dkim.keystore import (
    KeyStore,
    Selector,
    generate_selector,
    zone_record,
)
from gateway.dkim.publication import (
    Publication,
    judge_records,
    parse_tags,  # noqa: F401  (kept importable from here, where it lived)
    signing_selectors,
)

ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}


def add_keys_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``keys`` and its subcommands; each sets ``func(args) -> exit code``."""
    keys = subparsers.add_parser("keys", help="DKIM signing keys: generate, list, check")
    keys.add_argument("--keys-dir", type=Path, help="the key directory (default: the "
                      "config's dkim.keys_dir, else ./keys)")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="make a key and print its DNS record")
    gen.add_argument("domain")
    gen.add_argument("--selector", required=True, help="DNS label, e.g. s2026a")
    gen.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="rsa")
    gen.add_argument("--bits", type=int, default=2048, help="RSA key size (1024-4096; default 2048)")
    gen.add_argument("--not-before", type=parse_when, metavar="WHEN",
                     help="start signing at this time (ISO 8601, UTC unless a zone is given)")
    gen.add_argument("--not-after", type=parse_when, metavar="WHEN", help="stop signing at this time")
    gen.set_defaults(func=cmd_generate)

    lst = sub.add_parser("list", help="every selector with its window and state")
    lst.add_argument("--dns", action="store_true",
                     help="also look each record up: is it published, does the selector sign now")
    lst.add_argument("--nameserver", help="with --dns: ask this server (IP address)")
    lst.add_argument("--port", type=int, default=53)
    lst.add_argument("--timeout", type=float, default=5.0)
    lst.set_defaults(func=cmd_list)

    chk = sub.add_parser("check", help="compare the DNS records of a domain's selectors with its keys")
    chk.add_argument("domain")
    chk.add_argument("--nameserver", help="ask this server (IP address) instead of the system's")
    chk.add_argument("--port", type=int, default=53)
    chk.add_argument("--timeout", type=float, default=5.0)
    chk.set_defaults(func=cmd_check)
    return keys


def parse_when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time, as in 2026-12-01T00:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _store_location(args: argparse.Namespace) -> tuple[Path, int]:
    """The key directory and publish grace: --keys-dir, else the config file's ``dkim:``."""
    if getattr(args, "keys_dir", None):
        return args.keys_dir, 7
    config_file = getattr(args, "config", None)
    if config_file:
        from gateway.config.load import load_config

        loaded = load_config(config_file)
        settings = getattr(loaded.config, "dkim", None)
        if settings is not None:
            keys_dir = settings.keys_dir
            if not keys_dir.is_absolute():
                keys_dir = loaded.path.resolve().parent / keys_dir
            return keys_dir, settings.publish_grace_days
    return Path("keys"), 7


# --- generate ----------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        keys_dir, _ = _store_location(args)
    except ConfigErrors as exc:
        print(exc, file=err)
        return 2
    try:
        selector = generate_selector(
            keys_dir, args.domain, args.selector, ALGORITHMS[args.algorithm], args.bits,
            args.not_before, args.not_after,
        )
    except FileExistsError:
        print(f"keys generate: {keys_dir}/{args.domain}/{args.selector}.key exists; "
              "a selector's key is never replaced: choose a new selector", file=err)
        return 1
    except ValueError as exc:
        print(f"keys generate: {exc}", file=err)
        return 2
    print(f"; {selector.domain} selector {selector.selector}: {selector.algorithm}, "
          f"{selector.bits} bits, key in {selector.key_file}", file=out)
    print(f"; signs {selector.window_text()}; publish this record first, then run "
          f"`portcullis keys check {selector.domain}`", file=out)
    print(zone_record(selector.dns_name, selector.dns_value()), file=out)
    return 0


# --- list --------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None,
             now: float | None = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        keys_dir, grace = _store_location(args)
    except ConfigErrors as exc:
        print(exc, file=err)
        return 2
    store = KeyStore.load(keys_dir, grace)
    now = datetime.now(UTC).timestamp() if now is None else now
    rows = [("DOMAIN", "SELECTOR", "ALGORITHM", "BITS", "WINDOW (UTC)", "STATE")]
    rows += [(s.domain, s.selector, s.algorithm, str(s.bits), s.window_text(), s.state(now, store.grace))
             for s in store.selectors()]
    if getattr(args, "dns", False):
        rows = _with_dns_columns(store, rows, args, now)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    for error in store.errors:
        print(error, file=err)
    return 1 if store.errors else 0


def _with_dns_columns(store: KeyStore, rows: list[tuple[str, ...]], args: argparse.Namespace,
                      now: float) -> list[tuple[str, ...]]:
    """DNS: what the record says (published, missing, wrong, dns-failed); SIGNS: whether
    a gateway with these verdicts signs with the selector now (docs/dkim.md)."""
    resolver = make_resolver(args.nameserver, args.port, args.timeout)

    async def check_all() -> list[CheckResult]:
        found = await asyncio.gather(*(check_domain(store, d, resolver, now) for d in store.domains()))
        return [r for domain in found for r in domain]

    results = asyncio.run(check_all())
    by_key = {(r.selector.domain, r.selector.selector): r for r in results}
    signing = {(s.domain, s.selector) for d in store.domains()
               for s in signing_now(store, d, [r for r in results if r.selector.domain == d], now)}
    out = [(*rows[0], "DNS", "SIGNS")]
    for row in rows[1:]:
        r = by_key[(row[0], row[1])]
        dns_word = r.verdict.outcome if r.verdict is not None else "dns-failed"
        out.append((*row, dns_word, "yes" if (row[0], row[1]) in signing else "no"))
    return out


# --- check ---------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    selector: Selector
    state: str
    ok: bool
    detail: str
    verdict: Publication | None = None  # None: DNS did not answer


def make_resolver(nameserver: str | None, port: int, timeout: float) -> dns.asyncresolver.Resolver:
    if nameserver:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [nameserver]
        resolver.port = port
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


async def check_selector(resolver: dns.asyncresolver.Resolver, selector: Selector,
                         state: str, now: float = 0.0) -> CheckResult:
    """The same verdict the gateway's watch makes (gateway/dkim/publication.py)."""
    try:
        answer = await resolver.resolve(selector.dns_name, "TXT")
    except dns.resolver.NXDOMAIN:
        verdict = judge_records(selector, None, now)
    except dns.resolver.NoAnswer:
        verdict = judge_records(selector, [], now)
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
        return CheckResult(selector, state, False, f"DNS failure, try again: {exc.__class__.__name__}")
    else:
        verdict = judge_records(selector, [b"".join(r.strings) for r in answer], now)
    return CheckResult(selector, state, verdict.published, verdict.detail, verdict)


async def check_domain(store: KeyStore, domain: str, resolver: dns.asyncresolver.Resolver,
                       now: float) -> list[CheckResult]:
    selectors = store.selectors(domain)
    return list(await asyncio.gather(
        *(check_selector(resolver, s, s.state(now, store.grace), now) for s in selectors)
    ))


def signing_now(store: KeyStore, domain: str, results: list[CheckResult], now: float) -> list[Selector]:
    """What a gateway with these verdicts signs ``domain``'s mail with now."""
    verdicts = {(r.selector.domain, r.selector.selector): r.verdict
                for r in results if r.verdict is not None}
    return signing_selectors(store.selectors(domain), verdicts, now, store.grace)


def cmd_check(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Exit 0 when every selector that signs or will sign (pending, active, retiring)
    has its key published; 1 otherwise.  Expired selectors are shown but not required."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    from gateway.values.domains import normalise_domain

    try:
        keys_dir, grace = _store_location(args)
    except ConfigErrors as exc:
        print(exc, file=err)
        return 2
    store = KeyStore.load(keys_dir, grace)
    for error in store.errors:
        print(error, file=err)
    domain = normalise_domain(args.domain)
    if not store.selectors(domain):
        print(f"keys check: no key for {domain} in {keys_dir}", file=err)
        return 1
    resolver = make_resolver(args.nameserver, args.port, args.timeout)
    now = datetime.now(UTC).timestamp()
    results = asyncio.run(check_domain(store, domain, resolver, now))
    # What the gateway does with these verdicts (dkim.check_published, docs/dkim.md).
    signing = signing_now(store, domain, results, now)
    failed = False
    for r in results:
        needed = r.state != "expired"
        failed |= needed and not r.ok
        mark = "ok" if r.ok else ("FAIL" if needed else "--")
        held = "" if r.ok or not r.selector.is_active(now) else (
            "; the gateway does not sign with it until its key is seen in DNS")
        print(f"{mark:<4}  {r.selector.dns_name}  {r.selector.algorithm}  {r.state}: "
              f"{r.detail}{held}", file=out)
    names = ", ".join(s.selector for s in signing) or "nothing (the policy's missing_key applies)"
    print(f"signs: {domain} now with {names}", file=out)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portcullis")
    add_keys_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
