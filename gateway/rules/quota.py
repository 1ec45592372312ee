"""Quotas: which limits apply to an account, what to charge, and what to answer.

Pure functions over plain data: no store, no clock.  The store does the atomic
counting (gateway/store); these functions say which counters a MAIL or RCPT
touches and turn the store's answer into a reply.

Inheritance, per field: DEFAULT_QUOTAS ← gateway ``quotas:`` ← customer ``quotas:``
← account ``quotas:``.  A field not written inherits; ``null`` means no limit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

from gateway import replies
from gateway.config.default_policy import DefaultPolicy, customer_of_login, policy_for
from gateway.config.directory import Directory
from gateway.config.policy import Account, CustomerPolicy
from gateway.config.quota import DEFAULT_QUOTAS, AggregateLimits, CustomerQuotas, QuotaLimits
from gateway.replies import Reply, Verdict
from gateway.values.charges import Charge, ChargeResult, Suspension

HOUR = 3600.0
DAY = 86400.0

# Counters charged at RCPT: name → (window, what a unit is).
RATE_LIMITS: dict[str, tuple[float, str]] = {
    "messages_per_hour": (HOUR, "messages per hour"),
    "messages_per_day": (DAY, "messages per day"),
    "recipients_per_hour": (HOUR, "recipients per hour"),
    "recipients_per_day": (DAY, "recipients per day"),
    "recipient_domains_per_hour": (HOUR, "distinct recipient domains per hour"),
}


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force for one account (None: no limit)."""

    messages_per_hour: int | None = None
    messages_per_day: int | None = None
    recipients_per_hour: int | None = None
    recipients_per_day: int | None = None
    recipients_per_message: int | None = None
    max_message_size: int | None = None
    concurrent_connections: int | None = None
    recipient_domains_per_hour: int | None = None
    at_limit: str = "defer"  # defer | hold | reject (config/quota.py LimitAction)
    when_suspended: str = "reject"


@dataclass(frozen=True, slots=True)
class Aggregate:
    """A customer's limits over all its accounts together."""

    messages_per_hour: int | None = None
    messages_per_day: int | None = None
    recipients_per_hour: int | None = None
    recipients_per_day: int | None = None


@dataclass(frozen=True, slots=True)
class AccountQuota:
    """Everything the quota rules need to know about one logged-in account."""

    login: str
    customer: str
    limits: Limits
    aggregate: Aggregate = Aggregate()
    # Shadow mode: evaluate and log, never refuse.
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """What to answer, and in shadow mode the refusal that was not sent.

    ``held``: the limit was reached and the account's action is ``hold``: the
    client is answered as accepted, the refusal it would have had is kept here,
    and the message is to be held for review, uncharged (pipeline/hold.py)."""

    verdict: Verdict
    would_refuse: Reply | None = None
    limit: str = ""
    held: Reply | None = None
    # This refusal crossed a compromise threshold and suspended the account (RCPT).
    suspension: Suspension | None = None

    @property
    def accept(self) -> bool:
        return self.verdict.accept

    def log_text(self) -> str:
        if self.would_refuse is not None:
            return f"shadow: would refuse {self.limit}: {self.would_refuse.code} {self.would_refuse.enhanced}"
        if not self.verdict.accept:
            return f"refused {self.limit}: {self.verdict.reply.code} {self.verdict.reply.enhanced}"
        return ""


def _layer(values: dict[str, int | None], layer: QuotaLimits | AggregateLimits | None) -> None:
    if layer is None:
        return
    # Only the fields written in this file override; `null` written means "no limit".
    for name in layer.model_fields_set & values.keys():
        values[name] = getattr(layer, name)


def effective_limits(gateway: QuotaLimits | None, customer: CustomerQuotas | None,
                     account: QuotaLimits | None) -> Limits:
    values = {f.name: getattr(DEFAULT_QUOTAS, f.name) for f in fields(Limits)}
    for layer in (gateway, customer, account):
        _layer(values, layer)
    return Limits(**values)


def account_quota(login: str, customer_id: str, gateway: QuotaLimits | None,
                  customer: CustomerQuotas | None, account: QuotaLimits | None,
                  shadow: bool = False) -> AccountQuota:
    aggregate: dict[str, int | None] = {f.name: None for f in fields(Aggregate)}
    _layer(aggregate, customer.customer if customer is not None else None)
    return AccountQuota(login.lower(), customer_id, effective_limits(gateway, customer, account),
                        Aggregate(**aggregate), shadow)


# --- decisions ------------------------------------------------------------------
def _decide(acct: AccountQuota, reply: Reply | None, limit: str, ok: Reply = replies.OK) -> QuotaDecision:
    if reply is None:
        return QuotaDecision(Verdict.ok(ok))
    if acct.shadow:
        return QuotaDecision(Verdict.ok(ok), would_refuse=reply, limit=limit)
    return QuotaDecision(Verdict.refuse(reply), limit=limit)


def _contain(action: str, reply: Reply, limit: str, ok: Reply,
             rejected: Reply) -> QuotaDecision:
    """A limit reached, answered as the account's action says: ``reply`` (defer),
    ``rejected`` with the same sentence (reject), or accepted to be held."""
    if action == "hold":
        return QuotaDecision(Verdict.ok(ok), limit=limit, held=reply)
    if action == "reject":
        return QuotaDecision(Verdict.refuse(rejected.with_text(reply.text)), limit=limit)
    return QuotaDecision(Verdict.refuse(reply), limit=limit)


def decide_suspended(suspension: Suspension | None, action: str = "reject") -> QuotaDecision:
    """A suspended account may log in but not send (checked at a transaction's first
    RCPT, in every mode, shadow included): its mail is rejected, deferred or held as
    ``action`` says."""
    if suspension is None:
        return QuotaDecision(Verdict.ok(replies.RECIPIENT_OK))
    return _contain(action, replies.ACCOUNT_SUSPENDED_DEFERRED if action == "defer"
                    else replies.ACCOUNT_SUSPENDED, "suspended", replies.RECIPIENT_OK,
                    replies.ACCOUNT_SUSPENDED)


def decide_size(acct: AccountQuota, size: int | None) -> QuotaDecision:
    """At MAIL with SIZE= (RFC 1870 §6.2: refuse at MAIL what will not fit), and
    again on the real size after DATA."""
    limit = acct.limits.max_message_size
    if size is None or limit is None or size <= limit:
        return _decide(acct, None, "")
    return _decide(acct, replies.MESSAGE_TOO_BIG.with_text(
        f"Message size {size} exceeds this account's limit of {limit} octets"), "max_message_size")


def decide_recipient_count(acct: AccountQuota, accepted_so_far: int) -> QuotaDecision:
    """RFC 5321 §4.5.3.1.10: 452 for too many recipients, so the client sends the
    rest in another transaction."""
    limit = acct.limits.recipients_per_message
    if limit is None or accepted_so_far < limit:
        return _decide(acct, None, "", replies.RECIPIENT_OK)
    return _decide(acct, replies.TOO_MANY_RECIPIENTS.with_text(
        f"Too many recipients: at most {limit} per message for this account; "
        "send the rest in another message"), "recipients_per_message", replies.RECIPIENT_OK)


def rate_counters(acct: AccountQuota) -> tuple[Charge, ...]:
    """Every rate counter the account's mail is charged to, unheld, one per limit.

    An account's unlimited counters count too: they feed status and the compromise
    signals.  A customer's aggregate counters count only where the customer sets
    that limit: nothing else reads them, and each is a row (a Redis entry) more per
    recipient (issue 16).  So an aggregate limit set later counts from then on
    (docs/quotas.md)."""
    return tuple(c for c, _ in _counters(acct))


# Whom a counter counts at RCPT (recipient_charges).
_MESSAGE, _RECIPIENT, _DOMAIN = range(3)


@functools.lru_cache(maxsize=4096)
def _counters(acct: AccountQuota) -> tuple[tuple[Charge, int], ...]:
    """rate_counters, each with whom it counts: one account's are the same at every
    RCPT, so they are built once per account (AccountQuota is a frozen value; a
    reload makes new ones), not five objects a recipient (issue 16)."""
    out: list[tuple[Charge, int]] = []
    for prefix, limits, label in ((f"acct:{acct.login}", acct.limits, ""),
                                  (f"cust:{acct.customer}", acct.aggregate, "customer ")):
        for name, (window, _unit) in RATE_LIMITS.items():
            if not hasattr(limits, name):
                continue
            limit = getattr(limits, name)
            if limit is None and limits is acct.aggregate:
                continue
            domains = name == "recipient_domains_per_hour"
            out.append((Charge(f"{prefix}:{name}", window, limit, member="" if domains else None,
                               name=label + name),
                        _DOMAIN if domains else _MESSAGE if name.startswith("messages") else _RECIPIENT))
    return tuple(out)


def recipient_charges(acct: AccountQuota, domain: str, first_in_message: bool,
                      message_hold: str, recipient_hold: str) -> list[Charge]:
    """The counters one RCPT touches (rate_counters).  Message counters are charged
    with the first recipient (under the message's hold), recipient counters with
    every recipient (under its own hold, so a recipient refused downstream can be
    released alone)."""
    out: list[Charge] = []
    for c, counts in _counters(acct):
        if counts == _MESSAGE:
            if first_in_message:
                out.append(Charge(c.key, c.window, c.limit, c.amount, None, message_hold, c.name))
        else:
            out.append(Charge(c.key, c.window, c.limit, c.amount,
                              domain.lower() if counts == _DOMAIN else None, recipient_hold, c.name))
    return out


def describe_wait(seconds: float | None) -> str:
    if seconds is None:
        return "this message can never fit; send it to fewer recipients"
    if seconds < 90:
        return f"try again in {max(1, math.ceil(seconds))} seconds"
    if seconds < 5400:
        return f"try again in {math.ceil(seconds / 60)} minutes"
    return f"try again in {math.ceil(seconds / 3600)} hours"


def decide_charge(acct: AccountQuota, result: ChargeResult) -> QuotaDecision:
    """The store's answer to a RCPT's charges, as a reply (451 4.7.1 with when to retry)."""
    if result.accepted or result.refused is None:
        return _decide(acct, None, "", replies.RECIPIENT_OK)
    c = result.refused
    name = c.name.removeprefix("customer ")
    unit = RATE_LIMITS.get(name, (0.0, name.replace("_", " ")))[1]
    whose = f"all of {acct.customer}'s accounts together" if c.name.startswith("customer ") else "this account"
    action = acct.limits.at_limit
    then = ("this message was refused by your provider's policy" if action == "reject"
            else describe_wait(result.retry_after))
    text = f"Sending limit reached: at most {c.limit} {unit} for {whose}; {then}"
    if acct.shadow:
        return _decide(acct, replies.RATE_LIMITED.with_text(text), c.name, replies.RECIPIENT_OK)
    return _contain(action, replies.RATE_LIMITED.with_text(text), c.name, replies.RECIPIENT_OK,
                    replies.RATE_LIMIT_REFUSED)


def quota_for_login(login: str, customer_id: str, gateway: QuotaLimits | None,
                    customer_policy: CustomerPolicy | None, account: Account | None) -> AccountQuota:
    """From the loaded config objects: CustomerPolicy.quotas / .shadow and Account.quotas.

    An account known only to an external source (Dovecot, LDAP) has no Account
    entry: it gets its customer's quotas, or the gateway's when the customer is unknown.
    """
    return account_quota(
        login, customer_id, gateway,
        customer_policy.quotas if customer_policy is not None else None,
        account.quotas if account is not None else None,
        customer_policy.shadow if customer_policy is not None else False)


def quota_for_known_login(directory: Directory, gateway: QuotaLimits | None, login: str,
                          default: DefaultPolicy, default_customer: str) -> AccountQuota:
    """The limits of ``login`` where its account source cannot be asked (``accounts
    status``, the console, a complaint about mail sent days ago): its policy-file
    account; else its domain's customer (config/default_policy.customer_of_login),
    with that customer's policy file or ``default_policy`` (quotas, shadow mode)."""
    found = directory.account(login)
    if found is not None:
        policy, account = found
        return quota_for_login(login, policy.customer, gateway, policy, account)
    customer = customer_of_login(directory, login, default_customer)
    return quota_for_login(login, customer, gateway, policy_for(directory, default, customer), None)
