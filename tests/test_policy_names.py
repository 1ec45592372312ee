"""Domains, sender patterns and logins in policy files are accepted, refused and
normalised exactly as before their fast paths (gateway/values/domains.py,
gateway/config/policy.py): each is compared with the previous code, kept here."""

from __future__ import annotations

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.config.policy import Account, CustomerPolicy, normalise_sender_pattern
from gateway.values.domains import normalise_domain


def normalise_domain_before(domain: str) -> str:
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        # Issue 19 moved non-ASCII names from IDNA 2003 (Python's codec) to IDNA 2008
        # on purpose (tests/test_smtputf8.py); the fast path must still agree with this.
        try:
            name = idna.encode(name, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise ValueError(f"not a valid domain name: {domain!r}") from exc
    if not name or len(name) > 253:
        raise ValueError(f"not a valid domain name: {domain!r}")
    for label in name.split("."):
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-"):
            raise ValueError(f"not a valid domain name: {domain!r}")
        if not all(c.isalnum() or c in "-_" for c in label):
            raise ValueError(f"not a valid domain name: {domain!r}")
    return name


def sender_pattern_before(pattern: str) -> str:
    local, at, domain = pattern.strip().rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{pattern!r} is not an address or *@domain pattern")
    if local != "*" and ("*" in local or any(c in local for c in ' "<>()[]\\,;:@')):
        raise ValueError(f"{pattern!r}: only plain local parts or a lone * are allowed")
    return f"{local.lower()}@{normalise_domain_before(domain)}"


def outcome(fn, value):
    try:
        return "ok", fn(value)
    except ValueError as exc:
        return "error", str(exc)


DOMAINS = [
    "example.com", "Example.COM.", " mail.example.net ", "a.b", "a", "_dmarc.example", "x-y.example",
    "-x.example", "x-.example", "x..example", ".example", "example..", "", ".", " ", "a" * 63 + ".example",
    "a" * 64 + ".example", ".".join(["a" * 62] * 4), ".".join(["a" * 63] * 4), "exa mple.com",
    "exa*mple.com", "ex@mple.com", "bücher.example", "BÜCHER.example", "xn--bcher-kva.example",
    "\u212a.example",  # KELVIN SIGN: lower() makes it ASCII "k"
    "例え.テスト", "a\u200db.example", "١٢٣.example", "a_b.example", "a--b.example", "0.0.0.0",
    "example.com\n", "exa\tmple.com", "ex\u00a0ample.com", "-", "_", "a.-", "a._",
]


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_domain_is_normalised_or_refused_as_before(domain):
    assert outcome(normalise_domain, domain) == outcome(normalise_domain_before, domain)


SENDERS = [
    "alice@example.com", "*@Example.COM.", "Alice@Example.com", "*a@example.com", "a*@example.com",
    "a b@example.com", '"a"@example.com', "a<b@example.com", "a(b)@example.com", "a[b]@example.com",
    "a\\b@example.com", "a,b@example.com", "a;b@example.com", "a:b@example.com", "a@b@example.com",
    "@example.com", "alice@", "alice", "*@", "*@-bad.example", " alice@example.com ", "**@example.com",
    "a.b+tag@example.com", "ünï@example.com",
]


@pytest.mark.parametrize("pattern", SENDERS)
def test_a_sender_pattern_is_normalised_or_refused_as_before(pattern):
    assert outcome(normalise_sender_pattern, pattern) == outcome(sender_pattern_before, pattern)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="aZ09-_.* @\"<>()[]\\,;:\tü\u212aß\u00a0", max_size=24))
def test_random_names_get_the_same_answer_as_before(text):
    assert outcome(normalise_domain, text) == outcome(normalise_domain_before, text)
    assert outcome(normalise_sender_pattern, text) == outcome(sender_pattern_before, text)


HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


@pytest.mark.parametrize("login", ["a b@x.example", "a\tb", "a\u00a0b", "a\u2003b", "\u3000", "a\nb",
                                   "a\x1cb", "a\x85b"])
def test_a_login_with_any_kind_of_white_space_is_refused(login):
    assert any(c.isspace() for c in login)  # what the check was written as before
    with pytest.raises(ValidationError, match="a login cannot contain white space"):
        Account.model_validate({"login": login, "password": HASH})


@pytest.mark.parametrize("login", ["Alice@X.example", "a\u200bb", "a_b", "ü@x.example"])
def test_a_login_without_white_space_is_accepted_lower_cased(login):
    assert not any(c.isspace() for c in login)
    assert Account.model_validate({"login": login, "password": HASH}).login == login.lower()


def test_policies_without_a_dkim_section_share_one_default_that_equals_a_fresh_one():
    a = CustomerPolicy.model_validate({"customer": "a", "domains": ["a.example"]})
    b = CustomerPolicy.model_validate({"customer": "b", "domains": ["b.example"]})
    assert a.dkim is b.dkim
    assert a.dkim == type(a.dkim)()
    assert "dkim" not in a.model_fields_set
    c = CustomerPolicy.model_validate({"customer": "c", "domains": ["c.example"],
                                       "dkim": {"sign": ["c.example"]}})
    assert c.dkim.sign == ("c.example",) and a.dkim.sign == "all"
