"""Typed, frozen settings for quotas, the shared store, brute-force lockout and
compromised-account suspension.

Gateway file sections: ``quotas:`` (defaults for every account), ``store:``,
``lockout:`` and ``compromise:``.  Policy files: ``quotas:`` on a customer (its
accounts' defaults, plus a ``customer:`` aggregate over all its accounts),
``quotas:`` on an account, and ``shadow: true`` on a customer.

Inheritance is per field: gateway defaults ← customer ← account.  A field left
out inherits; a field written as ``null`` means "no limit" at that level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

Count = Annotated[int, Field(ge=1)]
# What happens to mail at a limit or from a suspended account (docs/abuse.md, "A
# choice at every limit"): 451 (the client retries: a spam bot only waits), keep it
# for the abuse desk's review (the client hears 250, nothing leaves), or 550.
LimitAction = Literal["defer", "hold", "reject"]
Seconds = Annotated[float, Field(gt=0, le=30 * 86400)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuotaLimits(Strict):
    """Per-account limits.  ``None`` is "no limit"; a field not written inherits."""

    messages_per_hour: Count | None = None
    messages_per_day: Count | None = None
    recipients_per_hour: Count | None = None
    recipients_per_day: Count | None = None
    # RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients per message
    # unless it has a policy reason not to; a quota is such a reason.
    recipients_per_message: Count | None = None
    max_message_size: Annotated[int, Field(ge=1024)] | None = None
    concurrent_connections: Count | None = None
    recipient_domains_per_hour: Count | None = None
    # A rate limit reached (messages/recipients per hour or day, domains per hour,
    # the customer's aggregate): defer, hold or reject.  Inherited like the limits.
    at_limit: LimitAction = "defer"
    # Mail from a suspended account: reject (550 5.7.1, as before), defer or hold.
    when_suspended: LimitAction = "reject"


# The root of inheritance: what a gateway enforces for a field no file sets: generous for
# a person or a small office, far below what a hijacked account would try.
DEFAULT_QUOTAS = QuotaLimits(
    messages_per_hour=200,
    messages_per_day=1000,
    recipients_per_hour=500,
    recipients_per_day=2000,
    recipients_per_message=100,
    max_message_size=26_214_400,
    concurrent_connections=10,
    recipient_domains_per_hour=100,
)


class AggregateLimits(Strict):
    """A ceiling over all of one customer's accounts together."""

    messages_per_hour: Count | None = None
    messages_per_day: Count | None = None
    recipients_per_hour: Count | None = None
    recipients_per_day: Count | None = None


class CustomerQuotas(QuotaLimits):
    """A policy file's ``quotas:``: defaults for its accounts, and an aggregate."""

    customer: AggregateLimits | None = None


class JournalSettings(Strict):
    """The decision journal: refusals, holds and suspensions, for ``portcullis explain``
    (docs/operations.md, "Explaining a decision").  Each write drops what is past
    either bound."""

    max_entries: Count = 100_000
    max_age: Seconds = 14 * 86400


class SQLiteStoreSettings(Strict):
    backend: Literal["sqlite"] = "sqlite"
    # Relative to the gateway file's folder.  Every process on this host that
    # opens the same file shares exact limits.
    path: Path = Path("portcullis-state.db")
    # How long a writer waits for another process's transaction (SQLite busy_timeout).
    busy_timeout: Seconds = 5.0
    journal: JournalSettings = JournalSettings()


class RedisStoreSettings(Strict):
    backend: Literal["redis"]
    # redis://[:password@]host:port/db, rediss:// for TLS, unix:///path/redis.sock
    url: str
    # Every key starts with this, so one Redis can serve several gateway clusters.
    prefix: str = "portcullis:"
    # A store slower than this is "unreachable": the client gets 451 4.3.0.
    timeout: Seconds = 2.0
    journal: JournalSettings = JournalSettings()

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return url


StoreSettings = Annotated[SQLiteStoreSettings | RedisStoreSettings, Field(discriminator="backend")]


class LockoutSettings(Strict):
    """Failed AUTH attempts, counted in a sliding window per client IP and per login."""

    window: Seconds = 900.0
    # Per IP is higher than per login: many users can share one NAT address.
    ip_failures: Count = 20
    login_failures: Count = 10
    # How long the IP or login is refused (454 4.7.0) once past its threshold.
    duration: Seconds = 900.0
    # Wait before answering a failed attempt (successful logins are never delayed).
    failure_delay: Annotated[float, Field(ge=0, le=30)] = 1.0


class CompromiseSettings(Strict):
    """When an account is suspended automatically.  Each signal can be switched off with null."""

    enabled: bool = True
    # Recipients attempted in one hour (accepted or refused by quota): a hard ceiling.
    ceiling_recipients_per_hour: Count | None = 2000
    # Spike: recipients in the last hour above `spike_factor` × the account's average
    # hourly volume over the previous `baseline_days`, and at least `spike_minimum`.
    spike_factor: Annotated[float, Field(gt=1)] | None = 20.0
    spike_minimum: Count = 300
    baseline_days: Annotated[int, Field(ge=1, le=30)] = 7
    # Share of recipients refused by the downstream in the last hour, once at least
    # `refusal_minimum` recipients were tried there.
    refusal_share: Annotated[float, Field(gt=0, le=1)] | None = 0.5
    refusal_minimum: Count = 50
    # Complaints (abuse reports matched to the account) per message sent over
    # `complaint_days`, once at least `complaint_minimum` complaints arrived.
    complaint_rate: Annotated[float, Field(gt=0, le=1)] | None = 0.003
    complaint_minimum: Count = 5
    complaint_days: Annotated[int, Field(ge=1, le=30)] = 7


class QuotaSettings(Strict):
    """The gateway file's four sections together, as the metering code takes them."""

    # Overrides DEFAULT_QUOTAS field by field (null: no limit).
    quotas: QuotaLimits = QuotaLimits()
    store: StoreSettings = SQLiteStoreSettings()
    lockout: LockoutSettings = LockoutSettings()
    compromise: CompromiseSettings = CompromiseSettings()
