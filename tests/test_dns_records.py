"""`portcullis dns records` / `dns check`: the records a customer domain needs, and
the proof that what `records` prints, served by a real DNS server, passes `check`."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
import yaml
from pydantic import ValidationError

from gateway.accounts.passwords import hash_password
from gateway.checks.dmarc import organisational_domain
from gateway.config.publish import PublishSettings
from gateway.dkim.keystore import KeyStore, generate_selector
from gateway.ops.dns_commands import cmd_check, cmd_records
from gateway.ops.dns_records import (
    DkimKey,
    DomainFacts,
    Found,
    Mailbox,
    Record,
    dmarc_report_notes,
    judge,
    required_records,
    table_text,
    zone_text,
)

pytest_plugins = ("tests.support.authdns",)

DOMAIN = "customer.example"
LONG_KEY = "v=DKIM1; k=rsa; p=" + "A" * 392  # the length of a 2048-bit key's p=


def facts(**changes) -> DomainFacts:
    base = dict(
        domain=DOMAIN, mx_host="mx.isp.example", mx_priority=10, spf="v=spf1 mx ~all",
        dmarc="v=DMARC1; p=none", dkim=(DkimKey("s1", "v=DKIM1; k=ed25519; p=abc=", "active"),),
        submission_host="smtp.isp.example", submissions_port=465, submission_port=587,
    )
    return DomainFacts(**{**base, **changes})


def names(records: list[Record]) -> list[tuple[str, str, str]]:
    return [(r.name, r.type, r.value) for r in records]


# --- the record set ------------------------------------------------------------------
BASE = [
    (DOMAIN, "MX", "10 mx.isp.example."),
    (DOMAIN, "TXT", "v=spf1 mx ~all"),
    (f"s1._domainkey.{DOMAIN}", "TXT", "v=DKIM1; k=ed25519; p=abc="),
    (f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=none"),
    (f"_submissions._tcp.{DOMAIN}", "SRV", "0 1 465 smtp.isp.example."),
    (f"_submission._tcp.{DOMAIN}", "SRV", "10 1 587 smtp.isp.example."),
]
AUTOCONFIG = [
    (f"autoconfig.{DOMAIN}", "CNAME", "autoconfig.isp.example."),
    (f"autodiscover.{DOMAIN}", "CNAME", "autoconfig.isp.example."),
    (f"_autodiscover._tcp.{DOMAIN}", "SRV", "0 0 443 autoconfig.isp.example."),
]


@pytest.mark.parametrize(("changes", "expected"), [
    pytest.param({}, BASE, id="mx-spf-dkim-dmarc-and-both-submission-srv"),
    pytest.param({"submission_port": None}, BASE[:5], id="only-465-offered"),
    pytest.param({"submissions_port": None}, BASE[:4] + BASE[5:], id="only-587-offered"),
    pytest.param({"dkim": ()}, BASE[:2] + BASE[3:], id="no-key-no-dkim-record"),
    pytest.param(
        {"dkim": (DkimKey("old", "v=DKIM1; p=AA", "retiring"),
                  DkimKey("new", "v=DKIM1; p=BB", "pending"))},
        [BASE[0], BASE[1], (f"old._domainkey.{DOMAIN}", "TXT", "v=DKIM1; p=AA"),
         (f"new._domainkey.{DOMAIN}", "TXT", "v=DKIM1; p=BB"), *BASE[3:]],
        id="every-published-selector"),
    pytest.param({"autoconfig_host": "Autoconfig.ISP.example."}, BASE + AUTOCONFIG,
                 id="autoconfig-names-when-served"),
    pytest.param({"mx_host": None}, BASE[1:], id="no-mx-when-mail-is-not-received-here"),
    pytest.param({"mx_host": "MX2.isp.example", "mx_priority": 5},
                 [(DOMAIN, "MX", "5 mx2.isp.example."), *BASE[1:]], id="mx-host-and-priority"),
    pytest.param({"imap": Mailbox("imap.isp.example", 993, "tls")},
                 BASE + [(f"_imaps._tcp.{DOMAIN}", "SRV", "0 1 993 imap.isp.example."),
                         (f"_imap._tcp.{DOMAIN}", "SRV", "0 0 0 .")],
                 id="imaps-offered-cleartext-imap-declared-absent"),
    pytest.param({"imap": Mailbox("imap.isp.example", 143, "starttls"),
                  "pop3": Mailbox("pop.isp.example", 995, "tls")},
                 BASE + [(f"_imap._tcp.{DOMAIN}", "SRV", "0 1 143 imap.isp.example."),
                         (f"_pop3s._tcp.{DOMAIN}", "SRV", "0 1 995 pop.isp.example."),
                         (f"_pop3._tcp.{DOMAIN}", "SRV", "0 0 0 .")],
                 id="imap-starttls-and-pop3s"),
])
def test_required_records_for_each_configuration(changes, expected):
    assert names(required_records(facts(**changes))) == expected


def test_every_record_says_what_it_is_for():
    records = required_records(facts(autoconfig_host="autoconfig.isp.example",
                                     imap=Mailbox("imap.isp.example", 993, "tls")))
    assert all(r.purpose for r in records)
    assert len({r.purpose for r in records}) == len(records)


def test_submissions_srv_is_preferred_over_submission():
    # RFC 8314 §5.1: implicit TLS first, so 465 gets the lower SRV priority.
    srv = {r.name.split(".")[0]: int(r.value.split()[0]) for r in required_records(facts())
           if r.type == "SRV"}
    assert srv["_submissions"] < srv["_submission"]


def test_zone_text_parses_as_a_zone_and_every_value_round_trips():
    records = required_records(facts(dkim=(DkimKey("big", LONG_KEY, "active"),),
                                     autoconfig_host="autoconfig.isp.example",
                                     imap=Mailbox("imap.isp.example", 993, "tls")))
    text = zone_text(records, ["a note; with a semicolon"])
    zone = dns.zone.from_text("$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\n"
                              + text, origin=DOMAIN, relativize=False, check_origin=False)
    for r in records:
        rdataset = zone.find_rdataset(r.name + ".", r.type)
        if r.type == "TXT":
            values = [b"".join(rd.strings).decode() for rd in rdataset]
            # RFC 1035 §3.3.14: no string longer than 255 octets.
            assert all(len(s) <= 255 for rd in rdataset for s in rd.strings)
        else:
            values = [rd.to_text() for rd in rdataset]
        assert r.value in values, r


def test_table_has_one_row_per_record_with_the_value_last():
    records = required_records(facts())
    lines = table_text(records).splitlines()
    assert len(lines) == len(records) + 1
    assert lines[0].split() == ["NAME", "TYPE", "PURPOSE", "VALUE"]
    assert all(line.endswith(r.value) for line, r in zip(lines[1:], records, strict=True))


# --- the publish: section ----------------------------------------------------------
@pytest.mark.parametrize(("settings", "spf"), [
    ({}, "v=spf1 mx ~all"),
    ({"spf_include": "_SPF.isp.example."}, "v=spf1 include:_spf.isp.example -all"),
    ({"spf": "v=spf1  ip4:192.0.2.0/24 -all"}, "v=spf1 ip4:192.0.2.0/24 -all"),
])
def test_spf_record_from_the_publish_section(settings, spf):
    assert PublishSettings.model_validate(settings).spf_record() == spf


@pytest.mark.parametrize(("settings", "field"), [
    ({"spf": "v=spf1 mx -all", "spf_include": "_spf.isp.example"}, "spf"),
    ({"spf": "v=spf1mx -all"}, "spf"),
    ({"spf": "spf1 mx -all"}, "spf"),
    ({"spf": 'v=spf1 "mx" -all'}, "spf"),
    ({"dmarc": "p=reject; v=DMARC1"}, "dmarc"),
    ({"dmarc": "v=DMARC1; rua=mailto:a@b.example; p=reject"}, "dmarc"),
    ({"dmarc": "v=DMARC1; p=always"}, "dmarc"),
    ({"mx_priority": 70000}, "mx_priority"),
    ({"mx_host": "bad..name"}, "mx_host"),
    ({"spf_includes": "_spf.isp.example"}, "spf_includes"),
])
def test_bad_publish_settings_are_refused_naming_the_field(settings, field):
    with pytest.raises(ValidationError) as exc:
        PublishSettings.model_validate(settings)
    assert field in str(exc.value)


def test_dmarc_reports_to_another_organisation_need_its_authorisation_record():
    dmarc = "v=DMARC1; p=none; rua=mailto:reports@isp.example,mailto:me@customer.example"
    notes = dmarc_report_notes(DOMAIN, dmarc, organisational_domain)
    assert notes == ['rua goes to isp.example: it must publish '
                     'customer.example._report._dmarc.isp.example. IN TXT "v=DMARC1" (RFC 7489 §7.1)']
    assert dmarc_report_notes("shop.customer.example",
                              "v=DMARC1; p=none; rua=mailto:d@customer.example",
                              organisational_domain) == []


# --- judging what DNS holds --------------------------------------------------------
MX = Record(DOMAIN, "MX", "10 mx.isp.example.", "", "mx")
SPF = Record(DOMAIN, "TXT", "v=spf1 include:_spf.isp.example -all", "", "spf")
DMARC = Record(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=quarantine; rua=mailto:r@isp.example", "",
               "dmarc")
DKIM = Record(f"s1._domainkey.{DOMAIN}", "TXT", "v=DKIM1; k=rsa; p=MIIBgood", "", "dkim")
SRV = Record(f"_submissions._tcp.{DOMAIN}", "SRV", "0 1 465 smtp.isp.example.", "", "srv")
CNAME = Record(f"autoconfig.{DOMAIN}", "CNAME", "autoconfig.isp.example.", "", "cname")


@pytest.mark.parametrize(("record", "found", "status", "says"), [
    (MX, Found(("10 mx.isp.example.",)), "ok", "published"),
    (MX, Found(("10 MX.ISP.Example.",)), "ok", "published"),
    (MX, Found(("10 mx.isp.example.", "20 backup.example.")), "different", "backup.example"),
    (MX, Found(("10 other.example.",)), "different", "not the one"),
    (MX, Found(("20 mx.isp.example.",)), "different", "not the one"),
    (MX, Found(), "missing", "no MX record"),
    (MX, Found(nxdomain=True), "missing", "no such name"),
    (MX, Found(error="LifetimeTimeout"), "failed", "LifetimeTimeout"),
    (SPF, Found(("v=spf1 include:_spf.isp.example -all", "google-site-verification=x")), "ok",
     "published"),
    (SPF, Found(("v=spf1 a include:_spf.isp.example -all",)), "ok", "additions: a"),
    (SPF, Found(("V=SPF1 include:_SPF.isp.example -all",)), "ok", "published"),
    (SPF, Found(("v=spf1 include:_spf.isp.example ~all",)), "different", "~all"),
    (SPF, Found(("v=spf1 a -all",)), "different", "lacks include:_spf.isp.example"),
    (SPF, Found(("v=spf1 -all", "v=spf1 include:_spf.isp.example -all")), "different",
     "permerror"),
    (SPF, Found(("google-site-verification=x",)), "missing", "no SPF record"),
    (SPF, Found(("v=spf10 include:_spf.isp.example -all",)), "missing", "no SPF record"),
    (DMARC, Found(("v=DMARC1; p=quarantine; rua=mailto:r@isp.example",)), "ok", "published"),
    (DMARC, Found(("v=DMARC1;p=quarantine;rua=mailto:r@isp.example;ruf=mailto:f@x.example",)),
     "ok", "published"),
    (DMARC, Found(("v=DMARC1; p=none; rua=mailto:r@isp.example",)), "different",
     "p=none, not p=quarantine"),
    (DMARC, Found(("v=DMARC1; p=quarantine",)), "different", "rua=(absent)"),
    (DMARC, Found(("v=DMARC1; p=quarantine", "v=DMARC1; p=reject")), "different", "keep one"),
    (DMARC, Found(("p=quarantine; v=DMARC1",)), "missing", "no DMARC record"),
    (DKIM, Found(("v=DKIM1; k=rsa; p=MIIBgood",)), "ok", "published"),
    (DKIM, Found(("v=DKIM1; k=rsa; t=s; p=MIIB good",)), "ok", "published"),
    (DKIM, Found(("k=rsa; p=MIIBgood",)), "ok", "published"),
    (DKIM, Found(("v=DKIM1; k=rsa; p=MIIBother",)), "different", "not the one in the key store"),
    (DKIM, Found(("v=DKIM1; k=ed25519; p=MIIBgood",)), "different", "k=ed25519"),
    (DKIM, Found(("v=DKIM1; k=rsa; p=",)), "different", "revoked"),
    (DKIM, Found(("v=DKIM1; k=rsa; p=MIIBgood", "v=DKIM1; p=x")), "different", "exactly one"),
    (DKIM, Found(nxdomain=True), "missing", "no such name"),
    (SRV, Found(("0 1 465 smtp.isp.example.",)), "ok", "published"),
    (SRV, Found(("0 1 2465 smtp.isp.example.",)), "different", "not the one"),
    (SRV, Found(), "missing", "no SRV record"),
    (CNAME, Found(("autoconfig.isp.example.",)), "ok", "published"),
    (CNAME, Found(("www.isp.example.",)), "different", "not the one"),
])
def test_judge_published_records(record, found, status, says):
    finding = judge(record, found)
    assert (finding.status, finding.ok) == (status, status == "ok")
    assert says in finding.detail


# --- end to end: records -> a real DNS server -> check -------------------------------
ISP_ZONE = "isp.example"


def write_config(tmp: Path, extra: dict | None = None) -> Path:
    policy_dir = tmp / "policy"
    policy_dir.mkdir()
    password = hash_password("a password nobody types")
    for name, domains in (("acme", [DOMAIN]), ("globex", ["globex.example"])):
        (policy_dir / f"{name}.yaml").write_text(yaml.safe_dump({
            "customer": name, "domains": domains,
            # Signing policy is not what these tests are about: keys are optional here.
            "dkim": {"sign": domains, "missing_key": "send-unsigned"},
            "accounts": [{"login": f"user@{domains[0]}", "password": password}],
        }))
    config = {
        "hostname": "mx.isp.example",
        "listeners": {"inbound": {"port": 2525}, "submission": {"port": 587},
                      "submissions": {"port": 465}},
        "downstream": {"inbound": "smtp://127.0.0.1:10025", "outbound": "smtp://127.0.0.1:10026"},
        "policy_dir": "policy",
        **(extra or {}),
    }
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(command, config: Path, domain: str = DOMAIN, now: float | None = None, **options):
    args = argparse.Namespace(config=str(config), keys_dir=None, domain=domain,
                              dns_command=command.__name__.removeprefix("cmd_"),
                              format="zone", nameserver=None, port=53, timeout=2.0)
    for key, value in options.items():
        setattr(args, key, value)
    out, err = io.StringIO(), io.StringIO()
    code = command(args, out, err, now=now)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory) -> Path:
    keys = tmp_path_factory.mktemp("gw") / "keys"
    now = datetime.now(UTC)
    generate_selector(keys, DOMAIN, "rsa1", "rsa-sha256", 2048)
    generate_selector(keys, DOMAIN, "ed1", "ed25519-sha256")
    generate_selector(keys, DOMAIN, "next", "ed25519-sha256", not_before=now + timedelta(days=5))
    # Past not_after but within the 7-day publish grace: retiring, still published.
    generate_selector(keys, DOMAIN, "old", "ed25519-sha256",
                      not_before=now - timedelta(days=400), not_after=now - timedelta(days=2))
    generate_selector(keys, DOMAIN, "gone", "ed25519-sha256",
                      not_before=now - timedelta(days=400), not_after=now - timedelta(days=100))
    return keys


@pytest.fixture
def config(tmp_path, keys_dir) -> Path:
    (tmp_path / "keys").symlink_to(keys_dir)  # keys/ next to the gateway file: the default
    return write_config(tmp_path)


def status_lines(report: str) -> dict[str, str]:
    """name -> status, from the check report's record lines."""
    out = {}
    for line in report.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("ok", "missing", "different", "failed"):
            out[f"{parts[2].rstrip(':')} {parts[1]}"] = parts[0]
    return out


def test_records_refuses_a_domain_no_customer_owns(config):
    code, out, err = run(cmd_records, config, domain="stranger.example")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "stranger.example is not a domain of any customer" in err


def test_check_refuses_a_domain_no_customer_owns_without_asking_dns(config, stopped_dns_port):
    code, out, err = run(cmd_check, config, domain="stranger.example",
                         nameserver="127.0.0.1", port=stopped_dns_port)
    assert (code, out) == (2, "")
    assert "not a domain of any customer" in err


def test_records_publish_pending_active_and_retiring_keys_but_not_expired(config):
    code, out, _ = run(cmd_records, config)
    assert code == 0
    for selector, state in (("rsa1", "active"), ("ed1", "active"), ("next", "pending"),
                            ("old", "retiring")):
        assert f"; DKIM public key of selector {selector}, {state} " in out
        assert f"\n{selector}._domainkey.{DOMAIN}. IN TXT" in out
    assert "gone._domainkey" not in out
    # Six days on, "old" is past its grace too, and "next" has become active.
    code, out, _ = run(cmd_records, config, now=(datetime.now(UTC) + timedelta(days=6)).timestamp())
    assert "old._domainkey" not in out
    assert "selector next, active" in out


def test_no_mx_record_without_an_inbound_listener(tmp_path):
    config = write_config(tmp_path, {
        "listeners": {"submissions": {"port": 465}},
        "downstream": {"outbound": "smtp://127.0.0.1:10026"}})
    code, out, _ = run(cmd_records, config)
    assert code == 0
    assert " IN MX " not in out and "; no inbound listener and no publish.mx_host" in out
    assert f"\n_submissions._tcp.{DOMAIN}. IN SRV 0 1 465 mx.isp.example.\n" in out
    assert "_submission._tcp" not in out


def test_records_print_a_note_when_the_domain_has_no_key(tmp_path):
    config = write_config(tmp_path)
    code, out, _ = run(cmd_records, config, domain="globex.example")
    assert code == 0
    assert "; no DKIM key for globex.example" in out
    assert "_domainkey" not in out.replace("; no DKIM key", "")


def test_records_output_served_by_a_real_dns_server_checks_all_ok(config, authdns_factory):
    code, zone, _ = run(cmd_records, config)
    assert code == 0
    server = authdns_factory({DOMAIN: zone})
    code, report, err = run(cmd_check, config, nameserver=server.host, port=server.port)
    statuses = status_lines(report)
    assert code == 0, report + err
    assert set(statuses.values()) == {"ok"}
    # MX, SPF, four DKIM selectors, DMARC, two submission SRV.
    assert len(statuses) == 9
    assert "9 of 9 records ok" in report


def test_check_reports_exactly_the_one_changed_record(config, keys_dir, authdns_factory, tmp_path):
    code, zone, _ = run(cmd_records, config)
    assert code == 0
    other = generate_selector(tmp_path / "other", DOMAIN, "ed1", "ed25519-sha256")
    ours = next(line for line in zone.splitlines() if line.startswith(f"ed1._domainkey.{DOMAIN}."))
    swapped_key = zone.replace(ours, f'ed1._domainkey.{DOMAIN}. IN TXT "{other.dns_value()}"')
    no_587 = "\n".join(line for line in zone.splitlines()
                       if not line.startswith(f"_submission._tcp.{DOMAIN}."))
    server = authdns_factory({DOMAIN: swapped_key})

    code, report, _ = run(cmd_check, config, nameserver=server.host, port=server.port)
    statuses = status_lines(report)
    assert code == 1
    assert {n: s for n, s in statuses.items() if s != "ok"} == {
        f"ed1._domainkey.{DOMAIN} TXT": "different"}
    ed1 = next(s for s in KeyStore.load(keys_dir).selectors(DOMAIN) if s.selector == "ed1")
    assert f"expected: {ed1.dns_value()}" in report
    assert f"found:    {other.dns_value()}" in report

    server.reload({DOMAIN: no_587})
    code, report, _ = run(cmd_check, config, nameserver=server.host, port=server.port)
    statuses = status_lines(report)
    assert code == 1
    assert {n: s for n, s in statuses.items() if s != "ok"} == {
        f"_submission._tcp.{DOMAIN} SRV": "missing"}
    assert "expected: 10 1 587 mx.isp.example." in report


def test_check_says_failed_when_dns_does_not_answer(config, silent_dns):
    code, report, _ = run(cmd_check, config, nameserver=silent_dns.host, port=silent_dns.port,
                          timeout=0.5)
    assert code == 1
    assert set(status_lines(report).values()) == {"failed"}


# --- the publish: and http: sections of the gateway file ---------------------------
PUBLISH = {
    "spf_include": "_spf.isp.example",
    "dmarc": "v=DMARC1; p=quarantine; rua=mailto:dmarc@isp.example",
    "submission_host": "smtp.isp.example",
    "autoconfig_host": "autoconfig.isp.example",
}
# Inside a container the listeners are on high ports; clients see 465/587.
CONTAINER_LISTENERS = {"inbound": {"port": 2525}, "submission": {"port": 2587},
                       "submissions": {"port": 2465}}
HTTP_SECTION = {"autoconfig": {"submissions_port": 465, "submission_port": 587,
                               "imap": {"hostname": "imap.isp.example", "port": 993}}}


def test_publish_and_http_sections_shape_the_records_and_they_check_ok(
        tmp_path, keys_dir, authdns_factory):
    (tmp_path / "keys").symlink_to(keys_dir)
    config = write_config(tmp_path, {"publish": PUBLISH, "http": HTTP_SECTION,
                                     "listeners": CONTAINER_LISTENERS})
    code, zone, _ = run(cmd_records, config)
    assert code == 0
    for line in (
        f'{DOMAIN}. IN TXT "v=spf1 include:_spf.isp.example -all"',
        f'_dmarc.{DOMAIN}. IN TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@isp.example"',
        f"_submissions._tcp.{DOMAIN}. IN SRV 0 1 465 smtp.isp.example.",
        f"_submission._tcp.{DOMAIN}. IN SRV 10 1 587 smtp.isp.example.",
        f"_imaps._tcp.{DOMAIN}. IN SRV 0 1 993 imap.isp.example.",
        f"_imap._tcp.{DOMAIN}. IN SRV 0 0 0 .",
        f"autoconfig.{DOMAIN}. IN CNAME autoconfig.isp.example.",
        f"autodiscover.{DOMAIN}. IN CNAME autoconfig.isp.example.",
        f"_autodiscover._tcp.{DOMAIN}. IN SRV 0 0 443 autoconfig.isp.example.",
    ):
        assert f"\n{line}\n" in zone, line
    # The report address is in another organisation: say what it must publish.
    assert f"; rua goes to isp.example: it must publish {DOMAIN}._report._dmarc.isp.example." in zone
    assert "SPF is the default" not in zone

    server = authdns_factory({DOMAIN: zone})
    code, report, err = run(cmd_check, config, nameserver=server.host, port=server.port)
    assert code == 0, report + err
    # MX, SPF, four DKIM, DMARC, two submission SRV, two IMAP SRV, two CNAMEs, one SRV.
    assert "14 of 14 records ok" in report


def test_autoconfig_names_default_to_the_gateway_hostname_when_http_serves_them(
        tmp_path):
    config = write_config(tmp_path, {"http": {}})
    code, zone, _ = run(cmd_records, config)
    assert code == 0
    assert f"\nautoconfig.{DOMAIN}. IN CNAME mx.isp.example.\n" in zone
    assert "set publish.autoconfig_host" in zone


def test_no_autoconfig_names_when_autoconfig_is_off(tmp_path):
    config = write_config(tmp_path, {"http": {"autoconfig": None}})
    code, zone, _ = run(cmd_records, config)
    assert code == 0
    assert "autoconfig." not in zone and "autodiscover" not in zone


def test_a_bad_publish_section_is_one_line_naming_file_and_field(tmp_path):
    config = write_config(tmp_path, {"publish": {"spf": "v=spf1 mx -all",
                                                 "spf_include": "_spf.isp.example"}})
    code, out, err = run(cmd_records, config)
    assert (code, out) == (2, "")
    assert err == f"{config}: publish: give either spf (the whole record) or spf_include, not both\n"
