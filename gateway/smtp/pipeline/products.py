"""The two products a listener can be, chosen once when the listener is built:
what each asks at MAIL and RCPT, where its mail goes and which pipeline runs at
the end of DATA.  The handler (gateway/smtp/handler.py) asks its product and
never which product it is.

=============  ==========================================  ===================
               MAIL                                        RCPT
=============  ==========================================  ===================
Inbound (MX)   anyone may send                             our customers'
                                                           domains (policy files,
                                                           default_policy.domains,
                                                           the account source),
                                                           abuse@ and
                                                           postmaster@ (ours)
Submission     the account may use the sender              any domain; the
               (rules/senders.py); SIZE=?                  account's rate and
                                                           recipient limits, held
                                                           (the first: suspended?)
=============  ==========================================  ===================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.accounts.source import Identity
from gateway.addresses import Mailbox
from gateway.downstream.base import Downstream
from gateway.replies import Reply, Verdict
from gateway.rules.abuse import is_role_recipient
from gateway.rules.quota import AccountQuota, QuotaDecision, decide_size, quota_for_login
from gateway.rules.relay import decide_inbound_recipient, decide_outbound_recipient
from gateway.rules.senders import decide_envelope_sender
from gateway.runtime import Runtime
from gateway.smtp.pipeline.hosted_domains import hosted_by_source
from gateway.smtp.pipeline.pipelines import INBOUND, SUBMISSION
from gateway.smtp.pipeline.quota_refusal import quota_refusal
from gateway.smtp.pipeline.sender_grants import customer_policy, sender_grants
from gateway.smtp.pipeline.step import Step
from gateway.smtp.records import TransactionRecord
from gateway.smtp.state import Containment, Session


class Product(Protocol):
    direction: str  # inbound | outbound: the name in metrics, holds and notices
    pipeline: Sequence[Step]
    meters_accounts: bool  # logins are metered: lockout, session slots, quotas
    screens_clients: bool  # MX screening applies (docs/screening.md)

    def downstream(self, rt: Runtime) -> Downstream: ...

    async def check_sender(self, session: Session, rt: Runtime, record: TransactionRecord,
                           sender: str, mail_options: list[str]
                           ) -> tuple[Reply | None, AccountQuota | None]:
        """At MAIL: a refusal (its rule on ``record``), or None and the account whose
        quota holds the transaction takes (None: not metered)."""
        ...

    async def check_recipient(self, rt: Runtime, address: str) -> tuple[Verdict, Mailbox | None, bool]:
        """At RCPT: the verdict, the mailbox to relay, and whether it is a role
        mailbox of ours (abuse@, postmaster@)."""
        ...


class Inbound:
    direction = "inbound"
    pipeline = INBOUND
    meters_accounts = False
    screens_clients = True

    def downstream(self, rt: Runtime) -> Downstream:
        assert rt.inbound is not None
        return rt.inbound

    async def check_sender(self, session: Session, rt: Runtime, record: TransactionRecord,
                           sender: str, mail_options: list[str]
                           ) -> tuple[Reply | None, AccountQuota | None]:
        return None, None  # anyone may send to our customers: the checks come at DATA

    async def check_recipient(self, rt: Runtime, address: str) -> tuple[Verdict, Mailbox | None, bool]:
        hosted: bool | None = False
        if address.lower() == "postmaster":
            # RFC 5321 §4.5.1: the unqualified <Postmaster> is the ISP's own postmaster.
            domains = rt.config.abuse.domains
            address = f"postmaster@{domains[0] if domains else rt.config.hostname}"
            role = True
        else:
            # RFC 2142 / RFC 5321 §4.5.1: abuse@ and postmaster@ of every domain we
            # serve are ours, the ISP's own domains included.
            role = is_role_recipient(address, lambda d: _serves(rt, d))
            if not role:  # the source is asked only for a domain nothing here claims
                hosted_domain, hosted = await hosted_by_source(rt, address)
                role = hosted is True and is_role_recipient(address, lambda d: d == hosted_domain)
        if role:
            verdict, mailbox = decide_inbound_recipient(address, lambda d: "role mailbox")
        else:
            verdict, mailbox = decide_inbound_recipient(
                address, rt.directory.customer_for_domain, hosted)
        return verdict, mailbox, role


class Submission:
    direction = "outbound"
    pipeline = SUBMISSION
    meters_accounts = True
    screens_clients = False

    def downstream(self, rt: Runtime) -> Downstream:
        assert rt.outbound is not None
        return rt.outbound

    async def check_sender(self, session: Session, rt: Runtime, record: TransactionRecord,
                           sender: str, mail_options: list[str]
                           ) -> tuple[Reply | None, AccountQuota | None]:
        identity = session.identity
        assert identity is not None  # AUTH is required before MAIL here
        widened, aliases, _ = sender_grants(rt, identity)
        verdict = decide_envelope_sender(widened, aliases, sender)
        if not verdict.accept:
            record.decide(verdict.rule, verdict.facts)
            return verdict.reply, None
        if rt.metering is None:
            return None, None
        acct = account_quota(rt, identity)
        # No store call here: whether the account is suspended comes back with the
        # first RCPT's check-and-charge (gateway/metering.py).
        decision = decide_size(acct, _declared_size(mail_options))
        if quota_refusal(record, decision, rt, identity.login) is not None:
            return decision.verdict.reply, None
        return None, acct

    async def check_recipient(self, rt: Runtime, address: str) -> tuple[Verdict, Mailbox | None, bool]:
        verdict, mailbox = decide_outbound_recipient(address)
        return verdict, mailbox, False


# The listener's direction (gateway/listeners.py) → its product.
PRODUCTS: dict[str, Product] = {"inbound": Inbound(), "outbound": Submission()}


def account_quota(rt: Runtime, identity: Identity) -> AccountQuota:
    found = rt.directory.account(identity.login)
    return quota_for_login(identity.login, identity.customer, rt.config.quotas,
                           customer_policy(rt, identity),
                           found[1] if found is not None and found[0].customer == identity.customer
                           else None)


def contained_by(decision: QuotaDecision, login: str) -> Containment:
    """A quota decision whose action is ``hold``, as the transaction's containment."""
    assert decision.held is not None
    reason = "suspended" if decision.limit == "suspended" else "quota"
    return Containment(reason, "quota." + decision.limit.replace(" ", "."), decision.held,
                       (("login", login), ("limit", decision.limit),
                        ("would_answer", str(decision.held))))


def _declared_size(mail_options: list[str]) -> int | None:
    """RFC 1870 §3: MAIL FROM:<...> SIZE=n."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def _serves(rt: Runtime, domain: str) -> bool:
    """A domain whose role mailboxes we accept: a customer's, our own host name, or
    one the ISP listed under abuse.domains."""
    return (domain in rt.directory.domains or domain == rt.config.hostname
            or domain in rt.config.abuse.domains)
