"""default_policy: the customer policy of accounts only the ISP's database knows."""

from __future__ import annotations

import pytest

from gateway.config.default_policy import (
    DefaultPolicy,
    customer_of_login,
    describe_default,
    policy_for,
)
from gateway.config.directory import Directory
from gateway.config.policy import CustomerPolicy
from gateway.rules.quota import quota_for_known_login

ACME = CustomerPolicy.model_validate({
    "customer": "acme", "domains": ["acme.example"], "shadow": True,
    "quotas": {"messages_per_hour": 9},
    "accounts": [{"login": "yaml@acme.example", "password": "$2b$04$" + "a" * 53,
                  "quotas": {"messages_per_hour": 3}}]})
DIRECTORY = Directory.build([ACME])
DEFAULT = DefaultPolicy.model_validate({"quotas": {"messages_per_hour": 7},
                                        "dkim": {"missing_key": "send-unsigned"}})


@pytest.mark.parametrize(("login", "customer"), [
    ("yaml@acme.example", "acme"),          # its policy-file account
    ("db@acme.example", "acme"),            # the owner of its domain
    ("db@Other.Example.", "other.example"),  # nobody's domain: the domain itself
    ("bare-login", "default"),              # no domain: accounts.default_customer
])
def test_the_customer_of_a_login_offline(login, customer):
    assert customer_of_login(DIRECTORY, login, "default") == customer


@pytest.mark.parametrize(("login", "customer", "per_hour", "shadow"), [
    ("yaml@acme.example", "acme", 3, True),
    ("db@acme.example", "acme", 9, True),          # a shadow customer's database account
    ("db@other.example", "other.example", 7, False),  # default_policy's quotas
])
def test_limits_of_a_login_as_status_and_complaints_see_them(login, customer, per_hour, shadow):
    acct = quota_for_known_login(DIRECTORY, None, login, DEFAULT, "default")
    assert (acct.customer, acct.limits.messages_per_hour, acct.shadow) == (customer, per_hour, shadow)


def test_the_default_stands_in_for_customers_without_a_policy_file():
    assert policy_for(DIRECTORY, DEFAULT, "acme") is ACME
    made = policy_for(DIRECTORY, DEFAULT, "other.example")
    assert made.customer == "other.example" and made.domain_set == frozenset()
    assert made.dkim.missing_key == "send-unsigned" and made.quotas.messages_per_hour == 7


def test_describe_default_names_the_fate_of_unkeyed_domains():
    lines = describe_default(DefaultPolicy(), DIRECTORY, "ldap", ["acme.example", "db.example"],
                             "x@nokey.example")
    assert lines == [
        "default_policy: ldap accounts whose customer has no policy file: DKIM signs every "
        "granted domain; mail from a domain without a key is deferred (451 4.7.0) until a key "
        "is active",
        "default_policy: keys in the key store for domains no policy file claims: db.example",
        "default_policy: probe_login x@nokey.example: customer nokey.example (default policy); "
        "its mail from nokey.example is deferred (451 4.7.0) until a key is active",
    ]


def test_describe_inbound_without_a_domain_list_says_only_policy_files_are_accepted():
    from gateway.config.default_policy import describe_inbound

    assert describe_inbound(DefaultPolicy(), DIRECTORY, None) == [
        "default_policy: inbound: the MX accepts mail only for policy-file domains (no "
        "default_policy.domains, no domain look-up in the account source); any other domain "
        "is refused as relay (550 5.7.1)"]


def test_describe_inbound_names_the_domains_the_lookup_and_the_policy():
    from gateway.config.default_policy import describe_inbound

    default = DefaultPolicy.model_validate({
        "domains": ["acme.example", "a.example", "b.example"],
        "inbound": {"default": {"spf_fail": "quarantine"}}})
    assert describe_inbound(default, DIRECTORY, "accounts.ldap.domain_filter") == [
        "default_policy: inbound: the MX also accepts mail for domains no policy file claims "
        "that are listed under default_policy.domains (a.example, b.example) or found by "
        "accounts.ldap.domain_filter (if it cannot answer: deferred, 451 4.4.3); their inbound "
        "policy: dmarc_reject=reject, dmarc_quarantine=tag, spf_fail=quarantine, temperror=tag",
        "default_policy: domains also in a policy file (that file's policy applies): acme.example",
    ]
    assert default.lists_domain("b.example") and not default.lists_domain("c.example")
