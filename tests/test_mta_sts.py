"""MTA-STS (RFC 8461) and TLS-RPT (RFC 8460): `dns records` prints the records and the
policy file, the ops HTTP server serves the policy for a TLS-terminating front end,
and `dns check` verifies both against a real DNS server (NSD) and a real HTTPS fetch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import trustme

from gateway.ops.dns_commands import cmd_check, cmd_records
from gateway.ops.dns_records import Found, Record, judge
from gateway.ops.http import MtaStsSite, OpsHTTPServer
from gateway.ops.metrics import Metrics
from gateway.ops.mta_sts import judge_policy, parse_policy, policy_for
from gateway.tls import server_context
from tests.test_dns_records import DOMAIN, run, status_lines, write_config

pytest_plugins = ("tests.support.authdns",)

POLICY = policy_for("testing", ["mx.isp.example", "*.mx2.isp.example"], 604800)
PUBLISH = {"mta_sts": {"mode": "testing", "mx": ["*.mx2.isp.example"],
                       "host": "sts.isp.example"},
           "tls_rpt": "mailto:tlsrpt@isp.example"}


# --- the policy and its id -------------------------------------------------------------
def test_policy_text_is_the_rfc_8461_section_3_2_format():
    assert POLICY.text() == ("version: STSv1\nmode: testing\nmx: mx.isp.example\n"
                             "mx: *.mx2.isp.example\nmax_age: 604800\n")


def test_policy_id_is_alphanumeric_and_changes_exactly_when_the_policy_does():
    # RFC 8461 §3.1: 1*32 ALPHA/DIGIT, and a new id for a new policy.
    same = policy_for("testing", ["MX.isp.example.", "*.mx2.isp.example"], 604800)
    assert POLICY.policy_id() == same.policy_id()
    assert POLICY.policy_id().isalnum() and 1 <= len(POLICY.policy_id()) <= 32
    for other in (policy_for("enforce", POLICY.mx, 604800), policy_for("testing", POLICY.mx, 86400),
                  policy_for("testing", ["mx.isp.example"], 604800)):
        assert other.policy_id() != POLICY.policy_id()
    assert POLICY.sts_record() == f"v=STSv1; id={POLICY.policy_id()}"


@pytest.mark.parametrize("text, why", [
    ("version: STSv1\nmode: testing\nmax_age: 10\n", "no mx line"),
    ("version: STSv2\nmode: testing\nmx: a.example\nmax_age: 10\n", "no 'version: STSv1'"),
    ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 10\n", "mode 'strict'"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", "max_age"),
    ("version: STSv1\nmode enforce\n", "is not 'key: value'"),
])
def test_malformed_policies_say_why(text, why):
    policy, reason = parse_policy(text)
    assert policy is None and why in reason


def test_crlf_policy_parses_like_lf():
    policy, _ = parse_policy(POLICY.text().replace("\n", "\r\n"))
    assert policy == POLICY


@pytest.mark.parametrize("status, ctype, body, ok, says", [
    (200, "text/plain", POLICY.text().encode(), True, "served, mode testing"),
    (301, "text/plain", b"", False, "redirects are not followed"),
    (200, "text/html", POLICY.text().encode(), False, "not text/plain"),
    (200, "text/plain", POLICY.text().replace("testing", "enforce").encode(), False,
     "mode enforce, not testing"),
    (200, "text/plain", POLICY.text().replace("mx: *.mx2.isp.example\n", "").encode(), False,
     "mx mx.isp.example, not"),
])
def test_judge_served_policy(status, ctype, body, ok, says):
    got_ok, detail = judge_policy(POLICY, status, ctype, body)
    assert got_ok is ok and says in detail


@pytest.mark.parametrize("kind, value, found, status", [
    ("mta-sts", "v=STSv1; id=abc", ("v=STSv1; id=abc",), "ok"),
    ("mta-sts", "v=STSv1; id=abc", ("v=STSv1; id=old",), "different"),
    # RFC 8461 §3.1: two STS records mean no policy at all.
    ("mta-sts", "v=STSv1; id=abc", ("v=STSv1; id=abc", "v=STSv1; id=x"), "different"),
    ("mta-sts", "v=STSv1; id=abc", ("v=spf1 -all",), "missing"),
    ("tls-rpt", "v=TLSRPTv1; rua=mailto:t@isp.example",
     ("v=TLSRPTv1;rua=mailto:t@isp.example",), "ok"),
    ("tls-rpt", "v=TLSRPTv1; rua=mailto:t@isp.example",
     ("v=TLSRPTv1; rua=mailto:other@isp.example",), "different"),
])
def test_judge_sts_and_tls_rpt_records(kind, value, found, status):
    record = Record("_x." + DOMAIN, "TXT", value, "", kind)
    assert judge(record, Found(found)).status == status


# --- dns records ------------------------------------------------------------------------
def test_no_mta_sts_records_unless_the_publish_section_asks(tmp_path):
    code, zone, _ = run(cmd_records, write_config(tmp_path))
    assert code == 0 and "_mta-sts" not in zone and "_smtp._tls" not in zone


def test_records_print_sts_tls_rpt_and_the_policy_file(tmp_path):
    config = write_config(tmp_path, {"publish": PUBLISH})
    code, zone, _ = run(cmd_records, config)
    assert code == 0
    for line in (f'_mta-sts.{DOMAIN}. IN TXT "v=STSv1; id={POLICY.policy_id()}"',
                 f"mta-sts.{DOMAIN}. IN CNAME sts.isp.example.",
                 f'_smtp._tls.{DOMAIN}. IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@isp.example"',
                 "; mode: testing", "; mx: mx.isp.example", "; mx: *.mx2.isp.example"):
        assert f"\n{line}\n" in zone, line
    code, policy, _ = run(cmd_records, config, format="mta-sts-policy")
    assert (code, policy) == (0, POLICY.text())


def test_a_bad_tls_rpt_address_is_one_line_naming_the_field(tmp_path):
    config = write_config(tmp_path, {"publish": {"tls_rpt": "tlsrpt@isp.example"}})
    code, out, err = run(cmd_records, config)
    assert (code, out) == (2, "")
    assert err.startswith(f"{config}: publish.tls_rpt: ") and err.count("\n") == 1


# --- served over HTTPS, checked end to end ------------------------------------------------
@pytest.fixture
def sts_tls(tmp_path) -> tuple[Path, object]:
    """A CA file and a server context whose certificate names mta-sts.customer.example."""
    ca = trustme.CA()
    cert = ca.issue_cert(f"mta-sts.{DOMAIN}")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return tmp_path / "ca.pem", server_context(tmp_path / "cert.pem", tmp_path / "key.pem")


async def start_policy_server(policy, ssl_context=None) -> OpsHTTPServer:
    async def ready() -> list[str]:
        return []
    server = OpsHTTPServer("127.0.0.1", 0, registry=Metrics().registry, readiness=ready,
                           ssl_context=ssl_context,
                           mta_sts_site=MtaStsSite(policy, lambda d: d == DOMAIN))
    await server.start()
    return server


@pytest.mark.asyncio
async def test_policy_is_served_only_for_customer_domains_as_text_plain():
    server = await start_policy_server(POLICY)
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{server.bound_port}/.well-known/mta-sts.txt"
            async with http.get(url, headers={"Host": f"mta-sts.{DOMAIN}"}) as r:
                assert r.status == 200 and r.content_type == "text/plain"
                assert await r.text() == POLICY.text()
            for host in ("mta-sts.stranger.example", DOMAIN, "127.0.0.1"):
                async with http.get(url, headers={"Host": host}) as r:
                    assert r.status == 404, host
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_check_fetches_the_served_policy_and_every_record_is_ok(
        tmp_path, sts_tls, authdns_factory):
    cafile, context = sts_tls
    config = write_config(tmp_path, {"publish": PUBLISH})
    code, zone, _ = run(cmd_records, config)
    assert code == 0
    # mta-sts.DOMAIN is a CNAME into the ISP's zone, as the operator publishes it.
    server = authdns_factory({DOMAIN: zone, "isp.example": "sts A 127.0.0.1"})
    good = await start_policy_server(POLICY, context)

    def check(port: int) -> tuple[int, str, str]:
        return run(cmd_check, config, nameserver=server.host, port=server.port,
                   https_port=port, cafile=str(cafile))

    good_port = good.bound_port
    try:
        code, report, err = await asyncio.to_thread(check, good_port)
        statuses = status_lines(report)
        assert code == 0, report + err
        assert statuses[f"mta-sts.{DOMAIN} HTTPS"] == "ok"
        assert statuses[f"_mta-sts.{DOMAIN} TXT"] == "ok"
        assert statuses[f"_smtp._tls.{DOMAIN} TXT"] == "ok"
    finally:
        await good.stop()

    # The front end serves a policy other than the one our id announces.
    other = await start_policy_server(policy_for("enforce", POLICY.mx, 604800), context)
    try:
        code, report, _ = await asyncio.to_thread(check, other.bound_port)
        assert code == 1
        assert {n: s for n, s in status_lines(report).items() if s != "ok"} == {
            f"mta-sts.{DOMAIN} HTTPS": "different"}
        assert "mode enforce, not testing" in report
    finally:
        await other.stop()

    # Nothing serves it: failed, the other records unaffected.
    code, report, _ = await asyncio.to_thread(check, good_port)
    assert code == 1
    assert {n: s for n, s in status_lines(report).items() if s != "ok"} == {
        f"mta-sts.{DOMAIN} HTTPS": "failed"}


@pytest.mark.asyncio
async def test_check_refuses_a_certificate_not_valid_for_the_mta_sts_name(
        tmp_path, cert_files, authdns_factory, sts_tls):
    # RFC 8461 §3.3: the policy host's certificate must be valid for mta-sts.DOMAIN.
    cafile, _ = sts_tls
    config = write_config(tmp_path, {"publish": PUBLISH})
    _, zone, _ = run(cmd_records, config)
    server = authdns_factory({DOMAIN: zone, "isp.example": "sts A 127.0.0.1"})
    wrong = await start_policy_server(POLICY, server_context(*cert_files))  # mx.gateway.test
    try:
        code, report, _ = await asyncio.to_thread(
            run, cmd_check, config, nameserver=server.host, port=server.port,
            https_port=wrong.bound_port, cafile=str(cafile))
    finally:
        await wrong.stop()
    assert code == 1
    assert status_lines(report)[f"mta-sts.{DOMAIN} HTTPS"] == "failed"
    assert "Certificate" in report or "certificate" in report
