"""Typed, frozen settings for content scanning, held mail and notifications.

Gateway file sections (the lead adds them to ``Config``)::

    scanner:                        # rspamd's normal worker (not the controller)
      url: http://127.0.0.1:11333
      timeout: 10                   # our own deadline per scan, shorter than the client's
      outbound:                     # defaults for every customer's outbound mail
        by: action                  # or: score
        actions: {reject: hold}     # merged onto the defaults below
        unreachable: tempfail       # pass | hold | tempfail | reject
      inbound:
        enabled: true               # off by default
    hold:
      path: held                    # relative to the gateway file; shared dir for several gateways
      max_age: 7d  (seconds: 604800)
      at_max_age: release           # or: delete
    notify:
      abuse_address: abuse@isp.example
      webhook_url: https://abuse-desk.isp.example/hooks/portcullis
      interval: 3600
      sender: postmaster@isp.example

Policy files: ``content:`` on a customer, with ``outbound:`` and/or ``inbound:``,
each a :class:`ContentRules` whose written fields replace the gateway's (``actions``
and ``score`` are merged key by key), see :func:`effective_rules`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Seconds = Annotated[float, Field(gt=0, le=365 * 86400)]

# What we do with a message (gateway/rules/content.py).
ContentAction = Literal["pass", "tag", "hold", "tempfail", "reject"]
# Ordered from mild to severe: the score table picks the most severe that applies.
SEVERITY: tuple[ContentAction, ...] = ("pass", "tag", "hold", "tempfail", "reject")
# rspamd's recommended actions (https://rspamd.com/doc/configuration/metrics.html).
RspamdAction = Literal["no action", "greylist", "add header", "rewrite subject", "soft reject", "reject"]
RSPAMD_ACTIONS: tuple[str, ...] = (
    "no action", "greylist", "add header", "rewrite subject", "soft reject", "reject",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# rspamd's action → ours.  No subject rewriting anywhere: "rewrite subject" only tags
# (changing the Subject of outbound mail would break the customer's DKIM signature
# and surprise the recipient).  "greylist" means nothing for mail we relay; an MTA
# greylists at its own door, so it passes.
DEFAULT_OUTBOUND_ACTIONS: dict[str, ContentAction] = {
    "no action": "pass",
    "greylist": "pass",
    "add header": "tag",
    "rewrite subject": "tag",
    # rspamd's own rate limits (ratelimit module) answer "soft reject": let the client retry.
    "soft reject": "tempfail",
    "reject": "reject",
}
DEFAULT_INBOUND_ACTIONS: dict[str, ContentAction] = dict(DEFAULT_OUTBOUND_ACTIONS)


class ContentRules(Strict):
    """What to do with one direction's mail, by rspamd's verdict."""

    enabled: bool = True
    # "action": follow rspamd's recommended action through ``actions``.
    # "score": compare rspamd's score with ``score`` (the customer's own thresholds).
    by: Literal["action", "score"] = "action"
    actions: dict[RspamdAction, ContentAction] = Field(default_factory=lambda: dict(DEFAULT_OUTBOUND_ACTIONS))
    # Our action → the lowest score that triggers it; the most severe triggered wins.
    # Example: {tag: 5, hold: 10, reject: 20}.
    score: dict[Literal["tag", "hold", "tempfail", "reject"], float] = Field(default_factory=dict)
    # rspamd refused the connection, timed out or answered 5xx.  Postfix's milter
    # default (milter_default_action = tempfail) is the safe default.
    # (No "tag": there is no score to tag with.)
    unreachable: Literal["pass", "hold", "tempfail", "reject"] = "tempfail"
    # Sent to rspamd as Settings-Id (a settings block in rspamd's config), e.g. to
    # apply its outbound rules; None sends none.
    settings_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None

    @model_validator(mode="after")
    def _score_table(self) -> ContentRules:
        if self.by == "score" and not self.score:
            raise ValueError("score: by: score needs at least one threshold, as in {tag: 5, reject: 15}")
        return self


class ScannerSettings(Strict):
    """The gateway file's ``scanner:`` section."""

    # rspamd's normal worker: POST /checkv2 (the controller port is for learning/stats).
    url: str = "http://127.0.0.1:11333"
    timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    # Simultaneous HTTP connections to rspamd per gateway process.
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 64
    # Larger messages are not scanned (logged, passed on); rspamd's own default limit is 50 MB.
    max_message_size: Annotated[int, Field(ge=1024)] = 20 * 1024 * 1024
    outbound: ContentRules = ContentRules()
    # Inbound scanning is opt-in (``inbound: {enabled: true}``): MX traffic is many
    # times submission's, and its rspamd needs its network checks (RBLs, SPF, DKIM).
    inbound: ContentRules = ContentRules(enabled=False, actions=dict(DEFAULT_INBOUND_ACTIONS))

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("needs an http:// or https:// URL, as in http://127.0.0.1:11333")
        return url.rstrip("/")


class CustomerContent(Strict):
    """A policy file's ``content:`` section: overrides per direction."""

    outbound: ContentRules | None = None
    inbound: ContentRules | None = None


def effective_rules(default: ContentRules, override: ContentRules | None) -> ContentRules:
    """The customer's rules on top of the gateway's: fields the customer wrote win;
    ``actions`` and ``score`` merge key by key, so ``actions: {reject: hold}`` changes
    only what happens to rspamd's reject."""
    if override is None:
        return default
    written = override.model_fields_set
    update: dict[str, object] = {name: getattr(override, name) for name in written}
    if "actions" in written:
        update["actions"] = {**default.actions, **override.actions}
    if "score" in written:
        update["score"] = {**default.score, **override.score}
    return ContentRules.model_validate({**default.model_dump(), **update})


class HoldSettings(Strict):
    """The gateway file's ``hold:`` section: where held mail waits, and for how long."""

    # One directory per gateway, or one shared by every gateway (NFS or similar: the
    # store relies only on atomic rename within the directory).  Relative paths are
    # relative to the gateway file.
    path: Path = Path("held")
    # Or in PostgreSQL (postgresql://user:password@host/db), reached by every gateway:
    # for several gateways without a shared directory (gateway/store/held_postgres.py).
    postgres: str | None = None
    # Held mail never expires silently: at this age it is released or deleted, and logged.
    max_age: Seconds = 7 * 86400.0
    at_max_age: Literal["release", "delete"] = "release"


    @field_validator("postgres")
    @classmethod
    def _postgres(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ValueError("needs a postgresql:// URL, as in postgresql://portcullis:PASSWORD@db/mail")
        return value


class NotifySettings(Strict):
    """The gateway file's ``notify:`` section."""

    # Tell the account holder (a message to the login, when it is an address).
    notify_account: bool = True
    # The ISP's abuse desk; None sends no mail there.
    abuse_address: str | None = None
    # Receives each incident as JSON (HTTP POST); None posts nothing.
    webhook_url: str | None = None
    webhook_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    # At most one notice per account and kind of incident per interval.
    interval: Seconds = 3600.0
    # Envelope sender and From: of notices; None means postmaster@<gateway hostname>.
    sender: str | None = None
    # The ops HTTP port as account holders reach it (https://mail.isp.example:8443):
    # notices then carry a signed link to the list of their held mail, valid this long.
    held_page_url: str | None = None
    held_page_days: Annotated[float, Field(gt=0, le=30)] = 7.0
    # Which incidents are notified.
    events: tuple[Literal["suspended", "held", "rejected"], ...] = ("suspended", "held", "rejected")

    @field_validator("abuse_address", "sender")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        local, at, domain = value.strip().rpartition("@")
        if not at or not local or not domain or any(c.isspace() or c in "<>" for c in value.strip()):
            raise ValueError(f"{value!r} is not an address, as in abuse@isp.example")
        return value.strip()

    @field_validator("held_page_url")
    @classmethod
    def _page(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("needs an http:// or https:// URL, as in https://mail.isp.example:8443")
        return value.rstrip("/")

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("needs an http:// or https:// URL")
        return value
