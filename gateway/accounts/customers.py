"""Which customer an account from an external source belongs to, and what it may send as.

Every account belongs to a customer (docs/accounts.md, "Mapping to policy"):

1. the customer the source names (an SQL column, an LDAP attribute, a Dovecot
   passdb extra field), when the operator configured one and it is not empty;
2. otherwise the customer whose policy file lists the login's domain;
3. otherwise the login's domain itself, as a customer without a policy file
   (it gets the gateway's defaults), or ``default_customer`` for a login
   without ``@domain``.

Senders: the addresses the source lists, plus the login when it is an address;
gateway/rules/senders.py (``granted``) adds what the customer's YAML grants.
"""

from __future__ import annotations

import logging
import re

from gateway.accounts.source import Identity
from gateway.config.directory import Directory
from gateway.config.policy import normalise_sender_pattern
from gateway.values.domains import normalise_domain

log = logging.getLogger(__name__)

_CUSTOMER_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def split_senders(value: object) -> list[str]:
    """A list from the source: an SQL array, an LDAP multi-value, or ``a, b c``."""
    if value is None:
        return []
    if isinstance(value, str | bytes):
        text = value.decode() if isinstance(value, bytes) else value
        return [part for part in re.split(r"[\s,]+", text) if part]
    out: list[str] = []
    for item in value:  # type: ignore[attr-defined]
        out.extend(split_senders(item))
    return out


class CustomerMap:
    """Turns (login, what the source said) into an :class:`Identity`.

    Holds the current policy index; hot reload swaps it with :meth:`replace_directory`.
    """

    def __init__(self, directory: Directory, default_customer: str = "default"):
        self._directory = directory
        self._default = default_customer

    @property
    def directory(self) -> Directory:
        return self._directory

    def replace_directory(self, directory: Directory) -> None:
        self._directory = directory

    def customer_for(self, login: str, named: str | None) -> str:
        if named:
            named = named.strip()
            if _CUSTOMER_ID.match(named):
                return named
            log.warning("account source named an unusable customer id %r for a login; "
                        "using the login's domain instead", named)
        _, at, domain = login.rpartition("@")
        if not at or not domain:
            return self._default
        try:
            domain = normalise_domain(domain)
        except ValueError:
            return self._default
        owner = self._directory.customer_for_domain(domain)
        return owner if owner is not None else domain

    def identity(self, login: str, customer: str | None, senders: object) -> Identity:
        login = login.strip().lower()
        allowed: set[str] = set()
        for raw in split_senders(senders):
            try:
                allowed.add(normalise_sender_pattern(raw))
            except ValueError:
                # One bad row in the ISP's database must not lock the account out;
                # the bad value is dropped (and never logged with the password).
                log.warning("account source gave a sender that is not an address or "
                            "*@domain: %r (ignored)", raw)
        if "@" in login:
            try:
                allowed.add(normalise_sender_pattern(login))
            except ValueError:
                pass
        return Identity(login, self.customer_for(login, customer), frozenset(allowed))
