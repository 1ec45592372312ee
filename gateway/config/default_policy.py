"""The gateway file's ``default_policy:``: the customer policy of every account the
account source (Dovecot, SQL, LDAP) knows and no policy file claims.

An ISP with a million accounts in its database writes no YAML file per customer.
Such an account's customer is the one its source names, else the owner of its
domain, else the domain itself (gateway/accounts/customers.py); when no policy
file has that customer, this section is its policy: DKIM signing, quotas (with a
``customer:`` aggregate per customer id), content actions and shadow mode.

    default_policy:
      dkim: {missing_key: send-unsigned}   # default: sign, and defer (451) without a key
      quotas: {messages_per_hour: 200}     # on top of the gateway's quotas:
      content: {outbound: {actions: {reject: hold}}}
      shadow: false

Left out, it is what a policy file with only ``customer:`` and ``domains:`` gets.
"""

from __future__ import annotations

from collections.abc import Collection

from pydantic import Field

from gateway.config.base import Strict
from gateway.config.content import CustomerContent
from gateway.config.directory import Directory
from gateway.config.dkim import DkimPolicy
from gateway.config.policy import CustomerPolicy
from gateway.config.quota import CustomerQuotas


class DefaultPolicy(Strict):
    # Which domains are signed (`all`: every domain the account is granted) and
    # what happens without a key: docs/dkim.md.
    dkim: DkimPolicy = Field(default_factory=DkimPolicy)
    content: CustomerContent | None = None
    quotas: CustomerQuotas | None = None
    shadow: bool = False

    def for_customer(self, customer: str) -> CustomerPolicy:
        """This default as the policy of ``customer``, which owns no domain here (the
        account source vouches for its senders: rules/senders.signing_domains)."""
        # Not validated again: a policy file must own a domain, this one cannot.
        return CustomerPolicy.model_construct(
            customer=customer, domains=(), accounts=(), aliases={}, dkim=self.dkim,
            content=self.content, inbound=None, quotas=self.quotas, shadow=self.shadow)


def policy_for(directory: Directory, default: DefaultPolicy, customer: str) -> CustomerPolicy:
    """The policy file of ``customer``, or the default for it."""
    found = directory.customers.get(customer)
    return found if found is not None else default.for_customer(customer)


def customer_of_login(directory: Directory, login: str, default_customer: str) -> str:
    """The customer of ``login`` when the account source cannot be asked (offline
    commands, a complaint about mail sent days ago): its policy-file account, else
    the owner of its domain, else the domain (as gateway/accounts/customers.py
    without a customer named by the source)."""
    found = directory.accounts.get(login.lower())
    if found is not None:
        return found[0]
    _, at, domain = login.lower().rpartition("@")
    if not at or not domain:
        return default_customer
    domain = domain.rstrip(".")
    owner = directory.customer_for_domain(domain)
    return owner if owner is not None else domain


def describe_default(default: DefaultPolicy, directory: Directory, source: str,
                     key_domains: Collection[str], probe_login: str | None) -> list[str]:
    """What check-config says the default will do (one line each).  ``key_domains``:
    the domains with a key active now.  (Policy-file domains signed without a key
    are reported as errors by the key store's own check.)"""
    dkim = default.dkim
    without_key = ("deferred (451 4.7.0) until a key is active" if dkim.missing_key == "tempfail"
                   else "sent unsigned")
    signed = "every granted domain" if dkim.sign == "all" else ", ".join(dkim.sign) or "no domain"
    unclaimed = sorted(d for d in key_domains if directory.customer_for_domain(d) is None)
    lines = [
        f"default_policy: {source} accounts whose customer has no policy file: DKIM signs "
        f"{signed}; mail from a domain without a key is {without_key}"
        + ("; shadow mode (limits logged, not enforced)" if default.shadow else ""),
        "default_policy: keys in the key store for domains no policy file claims: "
        + (", ".join(unclaimed) if unclaimed else "none (so only send-unsigned lets such mail out)"),
    ]
    if probe_login:
        customer = customer_of_login(directory, probe_login, "default")
        domain = probe_login.rpartition("@")[2].lower()
        if customer in directory.customers:
            lines.append(f"default_policy: probe_login {probe_login}: customer {customer} "
                         "(policy file), not the default")
        else:
            fate = "signed" if domain in key_domains else without_key
            lines.append(f"default_policy: probe_login {probe_login}: customer {customer} "
                         f"(default policy); its mail from {domain} is {fate}")
    return lines
