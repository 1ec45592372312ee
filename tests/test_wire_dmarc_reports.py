"""DMARC aggregate reports (RFC 9990) end to end: mail in through the real MX
listener against a real NSD, counts in the store, ``portcullis dmarc report`` run
as the operator runs it (a process of its own), report mail out to a recording
downstream: signed, gzip, named and titled as the RFC says, read by two
independent parsers (parsedmarc, dmarc-report) and valid against RFC 9990's XSD.

Section names are RFC 9990's ("Email", "Verifying External Destinations", ...).
"""

from __future__ import annotations

import asyncio
import email
import gzip
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lxml import etree

from gateway.dkim.keystore import generate_selector
from gateway.store.sqlite import SQLiteStore
from gateway.values.dmarc_reports import DAY, ReportRow, period_begin
from tests.conftest import customer_policies
from tests.support.authdns import txt_record
from tests.support.dkim_verifiers import dkimpy_results
from tests.support.gateway import GatewayUnderTest

pytest_plugins = ("tests.support.authdns",)

ROOT = Path(__file__).resolve().parent.parent
XSD = ROOT / "tests" / "data" / "rfc9990" / "dmarc-xml-0.2.xsd"
NS = {"d": "urn:ietf:params:xml:ns:dmarc-2.0"}
REPORTER = "dmarc-reports@isp.test"

ZONES = {
    # Reports for sender.test go to its own domain: no verification needed.
    "sender.test": """
        @            TXT "v=spf1 ip4:127.0.0.1 -all"
        _dmarc       TXT "v=DMARC1; p=reject; rua=mailto:dmarc@sender.test"
    """,
    # spoof.test asks for reports at reports.test, which agreed (a _report._dmarc record).
    "spoof.test": """
        @            TXT "v=spf1 ip4:192.0.2.1 -all"
        _dmarc       TXT "v=DMARC1; p=reject; rua=mailto:agg@reports.test"
    """,
    # victim.test names reports.test too, which never agreed: no report may go there.
    "victim.test": """
        @            TXT "v=spf1 ip4:192.0.2.1 -all"
        _dmarc       TXT "v=DMARC1; p=none; rua=mailto:agg@reports.test"
    """,
    "reports.test": """
        spoof.test._report._dmarc  TXT "v=DMARC1"
    """,
}


@pytest.fixture
def mx(tmp_path, authdns_factory, downstream, cert_files, password_hash):
    keys = tmp_path / "keys"
    # The ISP's reporting domain signs with RSA (every verifier has it).
    selector = generate_selector(keys, "isp.test", "rep", "rsa-sha256", bits=2048)
    zones = dict(ZONES)
    zones["isp.test"] = f'rep._domainkey TXT {txt_record(selector.dns_value())}'
    dns = authdns_factory(zones)
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=customer_policies(password_hash), cert=cert_files,
                          extra={"dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 2}})
    gw.dns = dns
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def send(gw, sender: str, rcpt: str, from_: str) -> int:
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=20) as c:
        c.ehlo("client.example")
        c.mail(sender)
        assert c.rcpt(rcpt)[0] == 250
        return c.data(f"From: {from_}\r\nSubject: hi\r\n\r\nhello\r\n".encode())[0]


def mail_in(gw) -> None:
    """3 passing from sender.test; 2 failing from spoof.test, refused (p=reject); 1 failing
    to postmaster only (RFC 2142: delivered, so disposition none, local_policy); 1 from
    victim.test (p=none)."""
    for _ in range(3):
        assert send(gw, "news@sender.test", "bob@acme.example", "news@sender.test") == 250
    for _ in range(2):
        assert send(gw, "ceo@spoof.test", "bob@acme.example", "ceo@spoof.test") == 550
    assert send(gw, "ceo@spoof.test", "postmaster@acme.example", "ceo@spoof.test") == 250
    assert send(gw, "x@victim.test", "bob@acme.example", "x@victim.test") == 250


def store_counts(gw) -> dict[tuple[str, str], int]:
    """(policy domain, disposition) → messages, read from the gateway's SQLite file."""
    async def read():
        store = SQLiteStore(gw.tmp / "portcullis-state.db") if (gw.tmp / "portcullis-state.db").exists() else None
        assert store is not None, "the gateway wrote no portcullis-state.db"
        try:
            periods = await store.dmarc_periods(2**40)
            out: dict[tuple[str, str], int] = {}
            for period, domain in periods:
                rows = await store._run(lambda db, p=period, d=domain: db.execute(
                    "SELECT row, n FROM dmarc_counts WHERE period = ? AND domain = ?", (p, d)).fetchall(), writes=False)
                for key, n in rows:
                    k = (domain, ReportRow.from_key(key).disposition)
                    out[k] = out.get(k, 0) + n
            return out
        finally:
            await store.close()

    return asyncio.run(read())


def run_report(gw, now: float, *extra: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gateway.cli", "dmarc", "-c", str(gw.config_path), "report",
           "--from", REPORTER, "--org-name", "ISP Test", "--now", str(now), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def report_part(content: bytes) -> tuple[email.message.Message, str, bytes]:
    msg = email.message_from_bytes(content)
    (part,) = [p for p in msg.walk() if p.get_content_type() == "application/gzip"]
    return msg, part.get_filename(), gzip.decompress(part.get_payload(decode=True))


def xml_counts(xml: bytes) -> dict[tuple[str, str], int]:
    root = etree.fromstring(xml)
    out: dict[tuple[str, str], int] = {}
    for rec in root.findall("d:record", NS):
        key = (rec.findtext("d:identifiers/d:header_from", namespaces=NS),
               rec.findtext("d:row/d:policy_evaluated/d:disposition", namespaces=NS))
        out[key] = out.get(key, 0) + int(rec.findtext("d:row/d:count", namespaces=NS))
    return out


def reports_by_domain(downstream) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in downstream.messages:
        if m.mail_from == REPORTER:
            msg, _, _ = report_part(m.content)
            domain = re.search(r"Report Domain: (\S+)", " ".join(msg["Subject"].split())).group(1)
            out.setdefault(domain, []).append(m)
    return out


def test_counts_reach_the_store_and_one_signed_report_per_domain_goes_out(mx, downstream):
    now = time.time()
    mail_in(mx)
    delivered = len(downstream.messages)
    mx.stop()  # the tally is drained into the store at shutdown (gateway/serve.py)
    assert store_counts(mx) == {("sender.test", "pass"): 3, ("spoof.test", "reject"): 2,
                                ("spoof.test", "none"): 1, ("victim.test", "none"): 1}

    # The period is not over yet: nothing is reported.
    done = run_report(mx, now)
    assert done.returncode == 0, done.stderr
    assert len(downstream.messages) == delivered

    later = period_begin(now) + DAY + 3600  # the period ended an hour ago
    done = run_report(mx, later)
    assert done.returncode == 0, done.stderr
    reports = reports_by_domain(downstream)
    # "Verifying External Destinations": victim.test's rua= at reports.test is not
    # authorised there, so it gets no report; spoof.test's is.
    assert sorted(reports) == ["sender.test", "spoof.test"]
    assert [m.rcpt_tos for m in reports["sender.test"]] == [["dmarc@sender.test"]]
    assert [m.rcpt_tos for m in reports["spoof.test"]] == [["agg@reports.test"]]
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    begin = period_begin(now)
    for domain, (m,) in reports.items():
        msg, name, xml = report_part(m.content)
        # "Email": receiver "!" policy-domain "!" begin "!" end ".xml.gz", application/gzip.
        assert name == f"isp.test!{domain}!{begin}!{begin + DAY - 1}.xml.gz"
        subject = " ".join(msg["Subject"].split())  # unfolded (FWS)
        assert re.fullmatch(rf"Report Domain: {re.escape(domain)} Submitter: isp.test "
                            rf"Report-ID: <{begin}\.0\.{re.escape(domain)}@isp\.test>", subject)
        # "Unique Identifiers in Aggregate Reporting": the same id in subject, XML, Message-ID.
        assert msg["Message-ID"] == f"<{begin}.0.{domain}@isp.test>"
        assert etree.fromstring(xml).findtext("d:report_metadata/d:report_id", namespaces=NS) \
            == f"{begin}.0.{domain}@isp.test"
        # "Mail streams carrying DMARC feedback data MUST conform to the DMARC mechanism":
        # signed by the reporting domain, verified by dkimpy against the published key.
        assert b"d=isp.test" in m.content.split(b"\r\n\r\n", 1)[0]
        assert dkimpy_results(m.content, mx.dns.port) == [True]
        assert schema.validate(etree.fromstring(xml)), schema.error_log
    assert xml_counts(report_part(reports["sender.test"][0].content)[2]) == {("sender.test", "pass"): 3}
    spoof_xml = report_part(reports["spoof.test"][0].content)[2]
    assert xml_counts(spoof_xml) == {("spoof.test", "reject"): 2, ("spoof.test", "none"): 1}
    # "Policy Override Reason": the message let through to postmaster says why.
    assert b"<reason><type>local_policy</type></reason>" in spoof_xml

    # Run again: nothing is sent twice.
    sent = len(downstream.messages)
    done = run_report(mx, later + 600)
    assert done.returncode == 0, done.stderr
    assert len(downstream.messages) == sent


def test_independent_parsers_read_every_report_and_find_our_counts(mx, downstream):
    import parsedmarc  # the test extra (pyproject.toml): a missing parser fails, not skips
    from dmarc_report import parser as dmarc_parser
    now = time.time()
    mail_in(mx)
    mx.stop()
    assert run_report(mx, period_begin(now) + DAY + 3600).returncode == 0
    reports = reports_by_domain(downstream)
    assert len(reports) == 2
    expected = {"sender.test": {("sender.test", "pass"): 3},
                "spoof.test": {("spoof.test", "reject"): 2, ("spoof.test", "none"): 1}}
    for domain, (m,) in reports.items():
        # parsedmarc reads the whole report mail, as a mailbox watcher would.
        parsed = parsedmarc.parse_report_email(m.content, offline=True, always_use_local_files=True)
        assert parsed["report_type"] == "aggregate"
        report = parsed["report"]
        assert report["policy_published"]["domain"] == domain
        assert report["xml_namespace"] == NS["d"]
        got: dict[tuple[str, str], int] = {}
        for rec in report["records"]:
            k = (rec["identifiers"]["header_from"], rec["policy_evaluated"]["disposition"])
            got[k] = got.get(k, 0) + rec["count"]
        assert got == expected[domain]
        # dmarc-report reads the attachment (gzip) and knows the RFC 9990 format.
        _, _, xml = report_part(m.content)
        parsed2 = dmarc_parser.DMARCParser.parse_bytes(gzip.compress(xml))
        assert parsed2.format.value == "rfc_9990" and parsed2.warnings == []
        got2: dict[tuple[str, str], int] = {}
        for rec in parsed2.records:
            k = (rec.identifiers.header_from, rec.policy_evaluated.disposition.value)
            got2[k] = got2.get(k, 0) + rec.count
        assert got2 == expected[domain]


def test_a_run_killed_between_send_and_mark_resumes_and_sends_each_report_once_more_at_most(
        mx, downstream):
    """The crash: the downstream has taken the first report's DATA, and the report
    process is killed (SIGKILL) before the 250 reaches it, so before it can mark the
    report sent.  The next run after --stale sends that report again, with the same
    Report-ID, Message-ID and attachment (RFC 9990 "Handling of Duplicates"), and
    the other report once; a third run sends nothing."""
    now = time.time()
    mail_in(mx)
    mx.stop()
    handler = downstream.handler
    original = handler.handle_DATA
    arrived = threading.Event()

    async def take_then_hang(server, session, envelope):
        await original(server, session, envelope)  # recorded: the downstream has it
        arrived.set()
        await asyncio.sleep(30)  # the 250 never comes before the kill
        return "250 2.0.0 late"

    handler.handle_DATA = take_then_hang
    later = period_begin(now) + DAY + 3600
    proc = run_report(mx, later, wait=False)
    try:
        assert arrived.wait(60), "the report never reached the downstream"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    handler.handle_DATA = original
    counts = lambda: {d: len(ms) for d, ms in reports_by_domain(downstream).items()}  # noqa: E731
    (crashed,) = counts()  # one report reached the downstream, unmarked
    other = ({"sender.test", "spoof.test"} - {crashed}).pop()

    # Within --stale the claimed report is left alone (its run may still be sending);
    # the other report, never claimed, goes out once.
    done = run_report(mx, later + 60, "--stale", "3600")
    assert done.returncode == 0, done.stderr
    assert counts() == {crashed: 1, other: 1}
    # After --stale the abandoned claim is taken over: that report is sent once more.
    done = run_report(mx, later + 7200, "--stale", "3600")
    assert done.returncode == 0, done.stderr
    assert counts() == {crashed: 2, other: 1}
    a, b = (report_part(m.content) for m in reports_by_domain(downstream)[crashed])
    # The same Report-ID, Message-ID, file name and report: recognisably one report.
    assert a[0]["Message-ID"] == b[0]["Message-ID"] and a[1] == b[1] and a[2] == b[2]
    assert run_report(mx, later + 20000).returncode == 0
    assert counts() == {crashed: 2, other: 1}


def test_a_report_that_cannot_go_out_for_dns_waits_for_the_next_run_not_for_stale(mx, downstream):
    """RFC 9990 "Report Delivery": the receiver "MAY cache that data and try again
    later".  With DNS down the run exits 1 and sends nothing; the reports are given
    back, so the next run (well within --stale) sends each once."""
    now = time.time()
    mail_in(mx)
    mx.stop()
    mx.dns.stop()
    later = period_begin(now) + DAY + 3600
    done = run_report(mx, later)
    assert done.returncode == 1, done.stderr
    assert reports_by_domain(downstream) == {}
    mx.dns.start()
    done = run_report(mx, later + 60)
    assert done.returncode == 0, done.stderr
    assert {d: len(ms) for d, ms in reports_by_domain(downstream).items()} == \
        {"sender.test": 1, "spoof.test": 1}


@pytest.mark.parametrize("sender, problem", [
    ("dmarc@nokey.test", "no active DKIM key for nokey.test"),
    ("not-an-address", "is not an address"),
])
def test_operator_errors_are_one_line_and_exit_2(tmp_path, downstream, cert_files, password_hash,
                                                 sender, problem):
    gw = GatewayUnderTest(tmp_path, inbound_url=downstream.url, outbound_url=downstream.url,
                          policies=customer_policies(password_hash), cert=cert_files)
    cmd = [sys.executable, "-m", "gateway.cli", "dmarc", "-c", str(gw.config_path), "report",
           "--from", sender, "--org-name", "ISP Test"]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert problem in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
