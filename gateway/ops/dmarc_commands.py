"""``portcullis dmarc report``: send the DMARC aggregate reports of closed periods.

    portcullis dmarc -c CONFIG report --from dmarc-reports@isp.example --org-name "ISP"
                     [--contact URL] [--grace S] [--stale S] [--now EPOCH]

Run it from a timer (docs/dmarc-reports.md has a cron line).  Each run:

1. takes every closed period's counts out of the running counts, one report per
   (period, DMARC Policy Domain) (store ``dmarc_take``, atomic: a count is in one
   report only, and counts written later go into a follow-up report);
2. for each report not yet finished: claims it (state "sending", with the time),
   looks up the domain's record and its ``rua=`` destinations (external ones
   verified, gateway/checks/dmarc_destinations.py), builds the RFC 9990 report
   (gateway/ops/dmarc_feedback.py), signs it with the reporting domain's DKIM key
   from the key store, sends it through the outbound downstream, and marks it
   "sent" (or "skipped", "failed").

A report marked sent is never sent again.  A run that stops between the
downstream's 250 and the mark leaves the report "sending": the next run after
``--stale`` seconds sends it again, with the same Report-ID, Message-ID and file
name (RFC 9990 "Handling of Duplicates"), so a crash costs at most one duplicate
of that one report, which the Domain Owner's tools recognise.  Exit 0 when every
report was sent or had nowhere to go, 1 when one must wait for a later run, 2 for
an operator error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from gateway.checks.dmarc import find_record
from gateway.checks.dmarc_destinations import report_destinations
from gateway.checks.dns import DnsTempError, Resolver
from gateway.config.errors import ConfigErrors, one_line
from gateway.config.load import Loaded, load_for_command
from gateway.dkim.keystore import KeyStore
from gateway.dkim.sign import sign_message_off_loop
from gateway.downstream.base import Downstream
from gateway.downstream.maildir import MaildirDownstream
from gateway.downstream.smtp import SmtpDownstream
from gateway.ops.dmarc_feedback import PublishedPolicy, Report, Reporter, report_message
from gateway.store import open_store
from gateway.store.base import Store, TakenReport
from gateway.values.dmarc_reports import DAY, ReportRow, period_begin

log = logging.getLogger("portcullis.dmarc")

EXIT_OK, EXIT_LATER, EXIT_USAGE = 0, 1, 2


def add_dmarc_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("dmarc", help="DMARC aggregate reports (RFC 9990)")
    p.add_argument("-c", "--config", required=True, help="the gateway file")
    sub = p.add_subparsers(dest="dmarc_command", required=True, metavar="COMMAND")
    r = sub.add_parser("report", help="send the reports of the periods that have ended")
    r.add_argument("--from", dest="sender", required=True,
                   help="the reports' From: address; its domain signs them (a key in the key store)")
    r.add_argument("--org-name", required=True, help="org_name in the reports")
    r.add_argument("--contact", default="", help="extra_contact_info in the reports")
    r.add_argument("--keys-dir", type=Path, help="the DKIM key directory (default: dkim.keys_dir)")
    r.add_argument("--grace", type=float, default=600.0,
                   help="seconds after a period ends before it is reported (the workers' counts "
                        "reach the store within seconds; default 600)")
    r.add_argument("--stale", type=float, default=3600.0,
                   help="seconds after which a report another run began sending is taken "
                        "to be abandoned and sent again (default 3600)")
    r.add_argument("--now", type=float, help="decide which periods are over, and which claims "
                   "are stale, as if it were this time (seconds since the epoch)")
    r.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    loaded = load_for_command(args.config)
    if loaded is None:
        return EXIT_USAGE
    config = loaded.config
    if "@" not in args.sender:
        print(f"--from: {args.sender!r} is not an address", file=sys.stderr)
        return EXIT_USAGE
    if config.downstream.outbound is None:
        print(f"{args.config}: downstream.outbound: not set; reports go out through it", file=sys.stderr)
        return EXIT_USAGE
    reporter = Reporter(args.org_name, args.sender, args.contact)
    keys_dir = args.keys_dir or config.dkim.keys_dir
    try:
        keystore = KeyStore.load(keys_dir, config.dkim.publish_grace_days)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_USAGE
    now = args.now if args.now is not None else time.time()
    if not keystore.active(reporter.domain, time.time()):
        print(f"{keys_dir}: no active DKIM key for {reporter.domain}: reports must pass DMARC "
              f"(RFC 9990 \"Email\"); make one with `portcullis keys`", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_report(loaded, reporter, keystore, args, now))
    except Exception as exc:  # one line for the operator, never a traceback
        print(one_line(f"dmarc report: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return EXIT_LATER


def _downstream(loaded: Loaded) -> Downstream:
    config = loaded.config
    settings = config.downstream.outbound
    assert settings is not None
    if settings.scheme == "maildir":
        path = Path(settings.maildir_path)
        return MaildirDownstream(path if path.is_absolute() else config.base_dir / path, "outbound")
    return SmtpDownstream(settings, config.hostname, "outbound")


async def _report(loaded: Loaded, reporter: Reporter, keystore: KeyStore,
                  args: argparse.Namespace, now: float) -> int:
    config = loaded.config
    store = open_store(config.store, config.base_dir)
    resolver = Resolver.from_settings(config.dns)
    downstream = _downstream(loaded)
    try:
        # A period is closed once it ended `grace` seconds ago.
        for period, domain in await store.dmarc_periods(period_begin(now - args.grace, DAY)):
            await store.dmarc_take(period, domain, now)
        waiting = 0
        for taken in await store.dmarc_unsent():
            if not await store.dmarc_claim(taken.report_id, now, args.stale):
                continue  # another run is sending it
            try:
                state = await _send_one(store, resolver, downstream, keystore, reporter, taken, now)
            except Exception as exc:  # the downstream went away mid-send: it may have the
                # report, so it stays claimed and goes again only after --stale.
                log.error("dmarc: report %s: %s: %s", taken.report_id, type(exc).__name__, exc)
                waiting += 1
                continue
            if state == "later":  # not sent: the next run may try at once
                await store.dmarc_release(taken.report_id)
                waiting += 1
        return EXIT_LATER if waiting else EXIT_OK
    finally:
        await downstream.close()
        await store.close()


async def _send_one(store: Store, resolver: Resolver, downstream: Downstream, keystore: KeyStore,
                    reporter: Reporter, taken: TakenReport, now: float) -> str:
    rid = taken.report_id
    try:
        lookup = await find_record(resolver, taken.domain)
    except DnsTempError as exc:
        lookup = None
        log.error("dmarc: report %s waits: %s", rid, exc)
    if lookup is None or lookup.temperror:
        return "later"
    record = lookup.record
    if record is None or lookup.found_at != taken.domain or not record.rua:
        await store.dmarc_finish(rid, "skipped", now)
        log.info("dmarc: report %s not sent: %s publishes no rua= now", rid, taken.domain)
        return "skipped"
    dest = await report_destinations(resolver, taken.domain, record.rua, lookup.org_domain or taken.domain)
    for why in dest.dropped:
        log.warning("dmarc: report %s: destination dropped: %s", rid, why)
    if dest.temperror:
        log.error("dmarc: report %s waits: %s", rid, dest.temperror)
        return "later"
    if not dest.addresses:
        await store.dmarc_finish(rid, "skipped", now)
        return "skipped"
    tags = record.policy_tags() or ("none", "", "")
    policy = PublishedPolicy(taken.domain, tags[0], tags[1], tags[2], record.adkim, record.aspf, record.t)
    report = Report(rid, taken.period, taken.period + DAY - 1, taken.seq, policy,
                    tuple((ReportRow.from_key(k), n) for k, n in taken.rows))
    recipients = list(dest.addresses)
    # --now moves the periods and claims only: the mail is dated and signed now (a
    # t= in the future fails at the receiver).
    wall = time.time()
    message = report_message(report, reporter, recipients, wall)
    signature = await sign_message_off_loop(message, keystore.active(reporter.domain, wall), int(wall))
    tx = downstream.begin(reporter.email, [])
    accepted = [r for r in recipients if (await tx.rcpt(r, [])).is_success]
    if not accepted:
        await tx.abort()
        log.error("dmarc: report %s: every destination refused (%s)", rid, ", ".join(recipients))
        await store.dmarc_finish(rid, "failed", now)
        return "failed"
    reply = await tx.data(signature + message)
    if not reply.is_success:
        log.error("dmarc: report %s refused at DATA: %s", rid, reply)
        if reply.code >= 500:
            await store.dmarc_finish(rid, "failed", now)
            return "failed"
        return "later"
    await store.dmarc_finish(rid, "sent", now)
    log.info("dmarc: report %s sent to %s (%d rows, %d messages)", rid, ", ".join(accepted),
             len(taken.rows), sum(n for _, n in taken.rows))
    return "sent"
