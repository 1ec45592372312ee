"""The index built from all customer policy files: one dictionary hit per look-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.config.policy import Account, CustomerPolicy


@dataclass(frozen=True)
class Directory:
    customers: Mapping[str, CustomerPolicy] = field(default_factory=dict)
    # domain (normalised) → customer id
    domains: Mapping[str, str] = field(default_factory=dict)
    # login (lower-case) → (customer id, account)
    accounts: Mapping[str, tuple[str, Account]] = field(default_factory=dict)
    # customer id → the policy file it came from (for error messages)
    files: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, policies: list[CustomerPolicy], files: Mapping[str, str] | None = None
              ) -> Directory:
        """Index policies that the loader has already checked for clashes."""
        customers = {p.customer: p for p in policies}
        domains = {d: p.customer for p in policies for d in p.domains}
        accounts = {a.login: (p.customer, a) for p in policies for a in p.accounts}
        return cls(
            MappingProxyType(customers), MappingProxyType(domains), MappingProxyType(accounts),
            MappingProxyType(dict(files or {})),
        )

    @classmethod
    def from_index(cls, customers: dict[str, CustomerPolicy], domains: dict[str, str],
                   accounts: dict[str, tuple[str, Account]], files: dict[str, str]) -> Directory:
        """Wrap dictionaries the loader built (and checked for clashes) as they are:
        the same result as :meth:`build`, without a second pass over every policy.
        The dictionaries must not be changed afterwards."""
        return cls(MappingProxyType(customers), MappingProxyType(domains),
                   MappingProxyType(accounts), MappingProxyType(files))

    def customer_for_domain(self, domain: str) -> str | None:
        return self.domains.get(domain)

    def account(self, login: str) -> tuple[CustomerPolicy, Account] | None:
        found = self.accounts.get(login.lower())
        if found is None:
            return None
        return self.customers[found[0]], found[1]
