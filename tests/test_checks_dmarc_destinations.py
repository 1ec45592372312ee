"""Where a report may go: RFC 9990 "Verifying External Destinations", against a real NSD."""

from __future__ import annotations

import asyncio

import pytest

from gateway.checks.dmarc_destinations import mailto_address, report_destinations
from gateway.checks.dns import Resolver

pytest_plugins = ("tests.support.authdns",)

ZONES = {
    "example.org": """
        _dmarc  TXT "v=DMARC1; p=reject"
    """,
    "agreed.example": """
        example.org._report._dmarc  TXT "v=DMARC1"
    """,
    "wild.example": """
        *._report._dmarc  TXT "v=DMARC1;"
    """,
    "moves.example": """
        example.org._report._dmarc  TXT "v=DMARC1; rua=mailto:inbox@moves.example"
    """,
    "away.example": """
        example.org._report._dmarc  TXT "v=DMARC1; rua=mailto:x@elsewhere.example"
    """,
    "notdmarc.example": """
        example.org._report._dmarc  TXT "hello"
    """,
}


@pytest.fixture(scope="module")
def resolver_port(authdns_module_factory):
    return authdns_module_factory(ZONES).port


def destinations(port: int, *rua: str):
    async def main():
        return await report_destinations(Resolver(["127.0.0.1"], port=port, timeout=2),
                                         "example.org", rua, "example.org")
    return asyncio.run(main())


def test_same_organizational_domain_needs_no_check(resolver_port):
    got = destinations(resolver_port, "mailto:dmarc@example.org", "mailto:r@reports.example.org")
    assert got.addresses == ("dmarc@example.org", "r@reports.example.org")


def test_external_destination_that_agreed_is_kept_step_8(resolver_port):
    assert destinations(resolver_port, "mailto:a@agreed.example").addresses == ("a@agreed.example",)


def test_a_wildcard_agreement_counts(resolver_port):
    assert destinations(resolver_port, "mailto:a@wild.example").addresses == ("a@wild.example",)


def test_external_destination_without_a_record_is_ignored_step_7(resolver_port):
    got = destinations(resolver_port, "mailto:a@victim.example", "mailto:d@example.org")
    assert got.addresses == ("d@example.org",)
    assert "has not agreed" in got.dropped[0]


def test_a_record_that_is_not_dmarc_is_discarded_step_6(resolver_port):
    assert destinations(resolver_port, "mailto:a@notdmarc.example").addresses == ()


def test_an_override_on_the_same_host_replaces_the_address_step_9(resolver_port):
    assert destinations(resolver_port, "mailto:a@moves.example").addresses == ("inbox@moves.example",)


def test_an_override_to_another_host_sends_to_neither(resolver_port):
    got = destinations(resolver_port, "mailto:a@away.example")
    assert got.addresses == () and "no report to either" in got.dropped[0]


def test_only_mailto_uris_are_used():
    assert mailto_address("https://example.org/report") is None
    assert mailto_address("mailto:dmarc%2Bagg@Example.ORG?subject=x") == "dmarc+agg@example.org"
