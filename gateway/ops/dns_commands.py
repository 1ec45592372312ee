"""``portcullis dns``: the DNS records a customer domain needs, and a check of them.

    portcullis dns -c CONFIG [--keys-dir DIR] records DOMAIN [--format zone|table]
    portcullis dns -c CONFIG [--keys-dir DIR] check DOMAIN [--nameserver IP] [--port N]
                                                           [--timeout S]

``records`` prints zone-file lines ready to paste; ``check`` asks DNS for each one
and says ok / missing / different / failed, exit 0 only when all are ok.  The
records themselves come from gateway/ops/dns_records.py; this module only gathers
the facts (config, policy directory, key store) and talks to DNS.

The lead's ``gateway/cli.py`` calls :func:`add_dns_parser`; until then
``python -m gateway.ops.dns_commands dns ...`` runs the same commands.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import dns.asyncresolver
import dns.exception
import dns.resolver

from gateway.checks.dmarc import organisational_domain
from gateway.config.errors import ConfigErrors
from gateway.config.load import Loaded, load_config
from gateway.config.publish import PublishSettings
from gateway.dkim.commands import make_resolver
from gateway.dkim.keystore import KeyStore
from gateway.ops.dns_records import (
    DkimKey,
    DomainFacts,
    Finding,
    Found,
    Mailbox,
    Record,
    dmarc_report_notes,
    judge,
    required_records,
    table_text,
    zone_text,
)
from gateway.ops.mta_sts import POLICY_PATH, gateway_policy, judge_policy
from gateway.ops.mta_sts_fetch import fetch_policy
from gateway.values.domains import normalise_domain

EXIT_OK, EXIT_NOT_OK, EXIT_USAGE = 0, 1, 2
PUBLISHED_STATES = ("pending", "active", "retiring")


def add_dns_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``dns records`` and ``dns check``; each sets ``func(args) -> exit code``."""
    dns_ = subparsers.add_parser("dns", help="DNS records a customer domain needs: print, check")
    dns_.add_argument("-c", "--config", required=True, help="the gateway file")
    dns_.add_argument("--keys-dir", type=Path, help="the DKIM key directory (default: the "
                      "config's dkim.keys_dir, else keys/ next to the gateway file)")
    sub = dns_.add_subparsers(dest="dns_command", required=True, metavar="COMMAND")

    rec = sub.add_parser("records", help="print the records, ready to paste into the zone")
    rec.add_argument("domain")
    rec.add_argument("--format", choices=("zone", "table", "mta-sts-policy"), default="zone",
                     help="mta-sts-policy: the MTA-STS policy file text instead of records")
    rec.set_defaults(func=cmd_records)

    chk = sub.add_parser("check", help="ask DNS for each record: ok / missing / different")
    chk.add_argument("domain")
    chk.add_argument("--nameserver", help="ask this server (IP address) instead of the system's")
    chk.add_argument("--port", type=int, default=53)
    chk.add_argument("--timeout", type=float, default=5.0, help="seconds per question (default 5)")
    chk.add_argument("--https-port", type=int, default=443,
                     help="port of https://mta-sts.DOMAIN/ for the policy file (default 443)")
    chk.add_argument("--cafile", help="CA certificates for that HTTPS server (default: system)")
    chk.set_defaults(func=cmd_check)
    return dns_


# --- gathering the facts -------------------------------------------------------------
class NotServed(Exception):
    """The domain is not in the policy directory: we print nothing for it."""


def keys_location(loaded: Loaded, keys_dir: Path | None) -> tuple[Path, int]:
    """--keys-dir, else the config's ``dkim:`` section, else ``keys/`` next to the file."""
    settings = getattr(loaded.config, "dkim", None)
    grace = settings.publish_grace_days if settings is not None else 7
    if keys_dir is not None:
        return keys_dir, grace
    base = loaded.path.resolve().parent
    path = settings.keys_dir if settings is not None else Path("keys")
    return (path if path.is_absolute() else base / path), grace


def domain_facts(loaded: Loaded, domain: str, store: KeyStore,
                 now: float) -> tuple[DomainFacts, list[str]]:
    """The facts for ``domain`` and notes for the operator; NotServed for a stranger's domain."""
    config = loaded.config
    if loaded.directory.customer_for_domain(domain) is None:
        raise NotServed(domain)
    publish: PublishSettings = getattr(config, "publish", None) or PublishSettings()
    http = getattr(config, "http", None)
    auto = http.autoconfig if http is not None else None
    notes: list[str] = []

    dkim = [DkimKey(s.selector, s.dns_value(), state) for s in store.selectors(domain)
            if (state := s.state(now, store.grace)) in PUBLISHED_STATES]
    if not dkim:
        notes.append(f"no DKIM key for {domain} in {store.keys_dir}: make one with "
                     f"`portcullis keys generate {domain} --selector NAME`")

    # Without an inbound listener the gateway does not receive this domain's mail:
    # pointing its MX here would lose it.
    mx_host = publish.mx_host or (config.hostname if config.listeners.inbound else None)
    if mx_host is None:
        notes.append("no inbound listener and no publish.mx_host: no MX record from us")

    listeners = config.listeners
    submissions = (auto.submissions_port if auto and auto.submissions_port else
                   listeners.submissions.port if listeners.submissions else None)
    submission = (auto.submission_port if auto and auto.submission_port else
                  listeners.submission.port if listeners.submission else None)

    autoconfig_host = publish.autoconfig_host
    if autoconfig_host is None and auto is not None:
        autoconfig_host = config.hostname
        notes.append(f"the autoconfig names point at {config.hostname}; set "
                     "publish.autoconfig_host if another name serves them over HTTPS")

    def mailbox(server: object | None) -> Mailbox | None:
        if server is None:
            return None
        return Mailbox(server.hostname, server.port, server.security)

    facts = DomainFacts(
        domain=domain,
        mx_host=mx_host,
        mx_priority=publish.mx_priority,
        spf=publish.spf_record(),
        dmarc=publish.dmarc,
        dkim=tuple(dkim),
        submission_host=publish.submission_host or (auto.hostname if auto else None)
        or config.hostname,
        submissions_port=submissions,
        submission_port=submission,
        imap=mailbox(auto.imap) if auto else None,
        pop3=mailbox(auto.pop3) if auto else None,
        autoconfig_host=autoconfig_host,
        **_mta_sts_facts(publish, mx_host, config.hostname, notes),
    )
    if publish.spf is None and publish.spf_include is None:
        notes.append("SPF is the default `v=spf1 mx ~all`: set publish.spf_include to the "
                     "ISP's SPF record for its outbound MTAs (docs/dns.md)")
    notes += dmarc_report_notes(domain, publish.dmarc, organisational_domain)
    return facts, notes


def _mta_sts_facts(publish: PublishSettings, mx_host: str | None, hostname: str,
                   notes: list[str]) -> dict:
    """MTA-STS and TLS-RPT only where the gateway is the MX: they describe its TLS."""
    if mx_host is None:
        return {}
    facts: dict = {}
    sts = publish.mta_sts
    if sts is not None:
        facts["mta_sts"] = gateway_policy(sts.mode, mx_host, sts.mx, sts.max_age)
        facts["mta_sts_host"] = sts.host or hostname
        if sts.host is None:
            notes.append(f"mta-sts.DOMAIN points at {hostname}: an HTTPS front end with a "
                         f"certificate for mta-sts.DOMAIN must serve {POLICY_PATH} there "
                         "(the gateway's http: port serves it); or set publish.mta_sts.host")
    if publish.tls_rpt is not None:
        facts["tls_rpt"] = publish.tls_rpt
    elif sts is not None:
        notes.append("no TLS-RPT record: set publish.tls_rpt (e.g. mailto:tlsrpt@ISP) to "
                     "hear of senders' TLS failures before mta_sts.mode is enforce (RFC 8460)")
    return facts


def _prepare(args: argparse.Namespace, err: TextIO,
             now: float | None) -> tuple[DomainFacts, list[str]] | int:
    """Load everything for one command; an exit code when that is impossible."""
    command = f"dns {args.dns_command}"
    try:
        domain = normalise_domain(args.domain)
    except ValueError as exc:
        print(f"{command}: {exc}", file=err)
        return EXIT_USAGE
    try:
        loaded = load_config(args.config)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(error, file=err)
        return EXIT_USAGE
    keys_dir, grace = keys_location(loaded, getattr(args, "keys_dir", None))
    store = KeyStore(keys_dir, grace)  # empty when there is no key directory yet
    if keys_dir.is_dir():
        store = KeyStore.load(keys_dir, grace)
        for error in store.errors:
            print(error, file=err)
    now = datetime.now(UTC).timestamp() if now is None else now
    try:
        return domain_facts(loaded, domain, store, now)
    except NotServed:
        print(f"{command}: {domain} is not a domain of any customer in "
              f"{loaded.config.policy_dir}; add it to the customer's policy file first",
              file=err)
        return EXIT_USAGE


# --- dns records ---------------------------------------------------------------------
def cmd_records(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None,
                now: float | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr  # looked up now: redirect_stdout works
    prepared = _prepare(args, err, now)
    if isinstance(prepared, int):
        return prepared
    facts, notes = prepared
    records = required_records(facts)
    if args.format == "mta-sts-policy":
        if facts.mta_sts is None:
            print(f"dns records: {facts.domain} has no MTA-STS policy (no MX of ours, or "
                  "publish.mta_sts is null)", file=err)
            return EXIT_USAGE
        out.write(facts.mta_sts.text())
        return EXIT_OK
    if args.format == "table":
        for note in notes:
            print(f"dns records: note: {note}", file=err)
        out.write(table_text(records))
    else:
        header = [f"DNS records for {facts.domain}, from `portcullis dns records`", *notes]
        if facts.mta_sts is not None:
            header += [f"MTA-STS policy file, served as https://mta-sts.{facts.domain}"
                       f"{POLICY_PATH} (text/plain):", *facts.mta_sts.text().splitlines()]
        out.write(zone_text(records, header))
    return EXIT_OK


# --- dns check -----------------------------------------------------------------------
async def look_up(resolver: dns.asyncresolver.Resolver, record: Record) -> Found:
    """Every value at the record's name and type (a TXT's strings joined, RFC 7208 §3.3)."""
    try:
        answer = await resolver.resolve(record.name + ".", record.type)
    except dns.resolver.NXDOMAIN:
        return Found(nxdomain=True)
    except dns.resolver.NoAnswer:
        return Found()
    except dns.exception.DNSException as exc:  # timeout, SERVFAIL/REFUSED (NoNameservers)
        return Found(error=exc.__class__.__name__)
    if record.type == "TXT":
        values = tuple(b"".join(r.strings).decode("ascii", "replace") for r in answer)
    else:
        values = tuple(r.to_text() for r in answer)
    return Found(values)


async def check_records(resolver: dns.asyncresolver.Resolver,
                        records: list[Record]) -> list[Finding]:
    found = await asyncio.gather(*(look_up(resolver, r) for r in records))
    return [judge(r, f) for r, f in zip(records, found, strict=True)]


async def check_policy_file(resolver: dns.asyncresolver.Resolver, facts: DomainFacts,
                            args: argparse.Namespace) -> Finding:
    """RFC 8461 §3.3: the policy a sender would fetch, compared with the one we publish."""
    assert facts.mta_sts is not None
    record = Record(f"mta-sts.{facts.domain}", "HTTPS", facts.mta_sts.text().replace("\n", " "),
                    "MTA-STS policy file", "mta-sts")
    fetched = await fetch_policy(resolver, facts.domain, port=getattr(args, "https_port", 443),
                                 cafile=getattr(args, "cafile", None), seconds=args.timeout)
    if fetched.error:
        return Finding(record, "failed", f"{POLICY_PATH} could not be fetched: {fetched.error}")
    if fetched.status == 404:
        return Finding(record, "missing", f"{POLICY_PATH} answers 404: serve it")
    ok, detail = judge_policy(facts.mta_sts, fetched.status, fetched.content_type, fetched.body)
    return Finding(record, "ok" if ok else "different", detail,
                   () if ok else (fetched.body[:300].decode("utf-8", "replace")
                                  .replace("\n", " "),))


async def check_all(resolver: dns.asyncresolver.Resolver, facts: DomainFacts,
                    args: argparse.Namespace) -> list[Finding]:
    findings = await check_records(resolver, required_records(facts))
    if facts.mta_sts is not None:
        findings.append(await check_policy_file(resolver, facts, args))
    return findings


def report_text(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        r = f.record
        lines.append(f"{f.status:<9}  {r.type:<5}  {r.name}: {f.detail}")
        if not f.ok:
            lines.append(f"           expected: {r.value}")
            for value in f.found:
                lines.append(f"           found:    {value}")
    bad = sum(not f.ok for f in findings)
    lines.append(f"{len(findings) - bad} of {len(findings)} records ok"
                 + (f", {bad} to fix" if bad else ""))
    return "\n".join(lines) + "\n"


def cmd_check(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None,
              now: float | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr  # looked up now: redirect_stdout works
    prepared = _prepare(args, err, now)
    if isinstance(prepared, int):
        return prepared
    facts, notes = prepared
    for note in notes:
        print(f"dns check: note: {note}", file=err)
    resolver = make_resolver(args.nameserver, args.port, args.timeout)
    findings = asyncio.run(check_all(resolver, facts, args))
    out.write(report_text(findings))
    return EXIT_OK if all(f.ok for f in findings) else EXIT_NOT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portcullis")
    add_dns_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
