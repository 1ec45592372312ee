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
      inbound: {default: {spf_fail: quarantine}}   # as a policy file's inbound:
      domains: [isp-customer.example]  # hosted domains the MX accepts mail for, with
                                       # any source (Dovecot cannot list them)
      domains_file: hosted-domains     # more of them, one a line (# comments), as
                                       # Postfix's relay_domains; read at load and reload

The MX accepts mail for a domain no policy file claims when it is listed under
``domains`` here or the source says it hosts it (``accounts.sql.domain_query``,
``accounts.ldap.domain_filter``); ``inbound`` is then the domain's inbound policy.

Left out, it is what a policy file with only ``customer:`` and ``domains:`` gets.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from pydantic import Field, PrivateAttr

from gateway.config.base import Strict
from gateway.config.content import CustomerContent
from gateway.config.directory import Directory
from gateway.config.dkim import DkimPolicy
from gateway.config.inbound import InboundDomainPolicy, InboundPolicy
from gateway.config.policy import CustomerPolicy
from gateway.config.quota import CustomerQuotas
from gateway.values.domains import DomainNames, normalise_domain


class DefaultPolicy(Strict):
    # Which domains are signed (`all`: every domain the account is granted) and
    # what happens without a key: docs/dkim.md.
    dkim: DkimPolicy = Field(default_factory=DkimPolicy)
    content: CustomerContent | None = None
    quotas: CustomerQuotas | None = None
    shadow: bool = False
    # The inbound policy of every domain the MX accepts without a policy file.
    inbound: InboundPolicy | None = None
    # Domains the ISP hosts, whatever the source (like Postfix's relay_domains).
    domains: DomainNames = ()
    # Relative to the gateway file; its domains are added to ``domains`` by the loader.
    domains_file: Path | None = None
    _listed: frozenset[str] = PrivateAttr(default=frozenset())

    def model_post_init(self, context: object) -> None:
        self._listed = frozenset(self.domains)  # asked at every RCPT: a set, not a scan

    def lists_domain(self, domain: str) -> bool:
        """``domain`` (normalised) is under ``domains:``."""
        return domain in self._listed

    def for_customer(self, customer: str) -> CustomerPolicy:
        """This default as the policy of ``customer``, which owns no domain here (the
        account source vouches for its senders: rules/senders.signing_domains)."""
        # Not validated again: a policy file must own a domain, this one cannot.
        return CustomerPolicy.model_construct(
            customer=customer, domains=(), accounts=(), aliases={}, dkim=self.dkim,
            content=self.content, inbound=self.inbound, quotas=self.quotas, shadow=self.shadow)


def read_domains_file(path: Path, max_bytes: int = 64 * 1024 * 1024) -> tuple[str, ...]:
    """One domain a line; blank lines and ``#`` comments skipped.  Raises ValueError
    naming the line of the first bad name."""
    try:
        if path.stat().st_size > max_bytes:
            raise ValueError(f"{path} is larger than {max_bytes} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    names = []
    for number, line in enumerate(text.splitlines(), 1):
        name = line.partition("#")[0].strip()
        if name:
            try:
                names.append(normalise_domain(name))
            except ValueError as exc:
                raise ValueError(f"{path} line {number}: {exc}") from None
    return tuple(names)


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


def describe_inbound(default: DefaultPolicy, directory: Directory,
                     domain_lookup: str | None) -> list[str]:
    """What check-config says the MX does for domains no policy file claims.
    ``domain_lookup``: the source's domain look-up in force (its field name), or None."""
    claimed = [d for d in default.domains if directory.customer_for_domain(d) is not None]
    listed = [d for d in default.domains if d not in claimed]
    where = []
    if listed:
        shown = ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")
        where.append(f"listed under default_policy.domains ({shown})")
    if domain_lookup:
        where.append(f"found by {domain_lookup} (if it cannot answer: deferred, 451 4.4.3)")
    if not where:
        return ["default_policy: inbound: the MX accepts mail only for policy-file domains "
                "(no default_policy.domains, no domain look-up in the account source); "
                "any other domain is refused as relay (550 5.7.1)"]
    policy = (default.inbound.default if default.inbound is not None else InboundDomainPolicy())
    actions = ", ".join(f"{name}={getattr(policy, name).value}" for name in
                        ("dmarc_reject", "dmarc_quarantine", "spf_fail", "temperror"))
    lines = [f"default_policy: inbound: the MX also accepts mail for domains no policy file "
             f"claims that are {' or '.join(where)}; their inbound policy: {actions}"
             + ("" if default.inbound is not None else " (built-in defaults)")]
    if claimed:
        lines.append("default_policy: domains also in a policy file (that file's policy "
                     "applies): " + ", ".join(claimed))
    return lines


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
