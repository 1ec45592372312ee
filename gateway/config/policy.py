"""A customer's policy file: who they are, which domains they own, their accounts.

One YAML file per customer in the policy directory.  Later sections (quotas,
DKIM signing, inbound rules) are added here as their features land; unknown keys
are errors so a section that does nothing yet cannot be written by mistake.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.config.content import CustomerContent
from gateway.config.dkim import DkimPolicy
from gateway.config.inbound import InboundPolicy
from gateway.config.password_hashes import is_supported_hash
from gateway.config.quota import CustomerQuotas, QuotaLimits
from gateway.values.domains import DomainNames, normalise_domain


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# What str.isspace() calls white space (re's \s in a str pattern is the same set).
_WHITE_SPACE = re.compile(r"\s")
# A local part in a sender pattern is plain: none of these (or a lone "*").
_NOT_IN_LOCAL_PART = re.compile(r'[* "<>()\[\]\\,;:@]')

# One shared default: pydantic deep-copies a model default for every file that
# omits the section; the models are frozen, so one object serves them all.
_DEFAULT_DKIM = DkimPolicy()


def normalise_sender_pattern(pattern: str) -> str:
    """``Alice@Example.com`` → ``alice@example.com``; ``*@Example.com.`` → ``*@example.com``."""
    local, at, domain = pattern.strip().rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{pattern!r} is not an address or *@domain pattern")
    if local != "*" and _NOT_IN_LOCAL_PART.search(local):
        raise ValueError(f"{pattern!r}: only plain local parts or a lone * are allowed")
    return f"{local.lower()}@{normalise_domain(domain)}"


class Account(Strict):
    login: Annotated[str, Field(min_length=1, max_length=320)]
    # A hash made by `portcullis passwd` ($argon2id$...) or imported from Dovecot/LDAP
    # ({ARGON2ID}, {BLF-CRYPT}, {SHA512-CRYPT}, $2b$..., $6$...).  Never plaintext.
    password: str
    # Addresses this account may use as envelope sender and in From:/Sender:.
    # Exact addresses or *@domain; the login itself is allowed when it is an address.
    senders: tuple[str, ...] = ()
    # Overrides the customer's quotas field by field (docs/quotas.md, "Inheritance").
    quotas: QuotaLimits | None = None

    @field_validator("login")
    @classmethod
    def _login(cls, value: str) -> str:
        if _WHITE_SPACE.search(value):
            raise ValueError("a login cannot contain white space")
        return value.lower()

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        if not is_supported_hash(value):
            raise ValueError(
                "not a supported password hash (make one with `portcullis passwd`); "
                "plaintext passwords are not accepted"
            )
        return value

    @field_validator("senders", mode="before")
    @classmethod
    def _senders(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return tuple(normalise_sender_pattern(str(v)) for v in value)
        return value


class CustomerPolicy(Strict):
    customer: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")]
    domains: DomainNames
    accounts: tuple[Account, ...] = ()
    # Shared addresses and the logins allowed to send as them:
    #   aliases: {"info@acme.example": ["alice@acme.example", "bob@acme.example"]}
    aliases: dict[str, tuple[str, ...]] = {}
    # Which of its domains are DKIM-signed, and what happens without a key (docs/dkim.md).
    # Default: every domain signed, mail deferred (451 4.7.0) when no key is active.
    dkim: DkimPolicy = Field(default_factory=lambda: _DEFAULT_DKIM)
    # Content-scanning thresholds and actions per direction (docs/content.md).
    content: CustomerContent | None = None
    # What to do with inbound mail failing SPF/DMARC, per recipient domain (docs/inbound.md).
    inbound: InboundPolicy | None = None
    # Defaults for this customer's accounts, and a `customer:` aggregate over all of them.
    quotas: CustomerQuotas | None = None
    # Shadow mode: limits are evaluated and logged, never enforced (a manual
    # suspension still applies).
    shadow: bool = False

    @cached_property
    def domain_set(self) -> frozenset[str]:
        """The domains as a set: asked per message (may this From: domain be signed?),
        and a hosting customer may own 100,000 of them."""
        return frozenset(self.domains)

    @field_validator("aliases", mode="before")
    @classmethod
    def _aliases(cls, value: object) -> object:
        if isinstance(value, dict):
            return {
                normalise_sender_pattern(str(k)): tuple(str(x).lower() for x in (v or ()))
                for k, v in value.items()
            }
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CustomerPolicy:
        if not self.domains:
            raise ValueError("domains: a customer owns at least one domain")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError("domains: a domain is listed twice")
        owned = set(self.domains)
        logins: set[str] = set()
        for i, account in enumerate(self.accounts):
            if account.login in logins:
                raise ValueError(f"accounts[{i}].login: {account.login} is listed twice")
            logins.add(account.login)
            for j, sender in enumerate(account.senders):
                if sender.rpartition("@")[2] not in owned:
                    raise ValueError(
                        f"accounts[{i}].senders[{j}]: {sender} is not in this customer's domains"
                    )
        if self.inbound is not None:
            for domain in self.inbound.domains:
                if domain not in owned:
                    raise ValueError(f"inbound.domains: {domain} is not in this customer's domains")
        for alias, members in self.aliases.items():
            if alias.rpartition("@")[2] not in owned:
                raise ValueError(f"aliases: {alias} is not in this customer's domains")
            for member in members:
                if member not in logins:
                    raise ValueError(f"aliases: {alias}: {member} is not an account of this customer")
        return self
