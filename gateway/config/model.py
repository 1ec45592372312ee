"""The gateway configuration as typed, frozen objects.

The YAML files are validated into these models once, at load time (or reload);
nothing reads raw dicts after that.  Unknown keys are errors (``extra="forbid"``)
so a misspelt option never silently does nothing.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator

from gateway.config.abuse import AbuseSettings
from gateway.config.accounts import AccountsConfig
from gateway.config.admin import AdminSettings
from gateway.config.base import Port, Seconds, Strict, TLSFiles
from gateway.config.checks import DnsSettings, normalise_authserv_id
from gateway.config.content import HoldSettings, NotifySettings, ScannerSettings
from gateway.config.default_policy import DefaultPolicy
from gateway.config.dkim import ArcSealing, DkimSettings
from gateway.config.ops import HTTP
from gateway.config.publish import PublishSettings
from gateway.config.quota import (
    CompromiseSettings,
    LockoutSettings,
    QuotaLimits,
    SQLiteStoreSettings,
    StoreSettings,
)
from gateway.config.reload import ReloadSettings
from gateway.config.screening import ScreeningSettings
from gateway.values.domains import normalise_domain

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyProtocol(Strict):
    """Who may speak the PROXY protocol (v1 or v2, HAProxy and cloud balancers).

    A PROXY header names the client, and every check, limit and log then trusts
    that name: only the balancers' own networks may send one.  On such a listener
    a connection from any other peer is refused at the greeting and logged, since
    the balancer is the only way in."""

    # `from` is a Python keyword: the field is from_, the YAML key `from`.
    from_: Annotated[tuple[IPNetwork, ...], Field(alias="from", min_length=1)]

    @field_validator("from_", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ValueError("a list of the balancers' networks, as in [10.0.0.0/8, 2001:db8::/32]")
        networks = []
        for item in value:
            try:
                # strict: 10.0.0.1/8 is a typo for 10.0.0.0/8 or 10.0.0.1/32, not a guess.
                networks.append(ipaddress.ip_network(str(item), strict=True))
            except ValueError as exc:
                raise ValueError(f"{item!r}: {exc}") from None
        return tuple(networks)

    def trusts(self, peer: str) -> bool:
        """Is ``peer`` (a socket peer address) one of the balancers?"""
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a v4 peer on a dual-stack socket
        return any(address in network for network in self.from_)


class Listener(Strict):
    # One address or several, IPv4 and IPv6 (`[0.0.0.0, "::"]` for both families):
    # each gets its own socket, IPv6 ones IPv6-only so the two families never clash.
    address: tuple[str, ...] = ("127.0.0.1",)
    port: Port
    # Without tls on a submission listener, `serve` makes a self-signed development
    # certificate and says so in the log: fine for trying it out, not for customers.
    tls: TLSFiles | None = None
    # Refuse new connections past this many at once (aiosmtpd has no cap: #282).
    max_connections: Annotated[int, Field(ge=1)] = 1000
    # Expect a PROXY protocol header before SMTP from the balancers in `from`:
    # every check, limit and log then uses the client address it carries.
    proxy_protocol: ProxyProtocol | None = None

    @field_validator("address", mode="before")
    @classmethod
    def _addresses(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not value:
            raise ValueError("an IP address or a list of them, as in [0.0.0.0, '::']")
        found: list[str] = []
        for item in value:
            try:
                # An IP literal, not a name: a name may resolve to several addresses,
                # or to others after a restart.
                host = str(ipaddress.ip_address(str(item)))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address (list each address a "
                                 "name has)") from None
            if host in found:
                raise ValueError(f"{host} is listed twice")
            found.append(host)
        return tuple(found)

    @field_validator("proxy_protocol", mode="before")
    @classmethod
    def _no_blanket_trust(cls, value: object) -> object:
        # The old boolean: `false` still means off; `true` trusted any peer to name
        # any client (spoofing SPF, limits and lockouts), so it is an error now.
        if value is False:
            return None
        if value is True:
            raise ValueError("true would trust any peer to name the client; list the balancers' "
                             "networks instead: proxy_protocol: {from: [10.0.0.0/8]}")
        return value


class Listeners(Strict):
    inbound: Listener | None = None
    submission: Listener | None = None
    submissions: Listener | None = None

    @model_validator(mode="after")
    def _need_one(self) -> Listeners:
        if not (self.inbound or self.submission or self.submissions):
            raise ValueError("listeners: at least one of inbound, submission, submissions is required")
        if self.submissions is not None and self.submissions.proxy_protocol is not None:
            # The TLS handshake would come before the PROXY header (aiosmtpd reads it
            # after): terminate 465 at the balancer, or use 587 behind it.
            raise ValueError("listeners.submissions.proxy_protocol: not possible with TLS from "
                             "the first byte; terminate TLS at the balancer or use submission (587)")
        return self


class Downstream(Strict):
    """Where accepted mail goes: ``smtp://``, ``smtp+starttls://``, ``smtps://`` or ``maildir:``."""

    url: str
    # Idle connections kept open per process for reuse between messages.
    pool_size: Annotated[int, Field(ge=0, le=100)] = 4
    # Our own deadline for every downstream step; shorter than the client's, so the
    # client hears 451 from us before it gives up (and later retries a duplicate).
    timeout: Seconds = 30.0
    # Verify the downstream's certificate for smtps / smtp+starttls.
    tls_verify: bool = True

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme == "maildir":
            if not (parts.path or parts.netloc):
                raise ValueError("maildir: needs a path, as in maildir:/var/mail/inbound")
            return url
        if parts.scheme not in ("smtp", "smtp+starttls", "smtps"):
            raise ValueError(
                f"scheme {parts.scheme!r} is not one of smtp, smtp+starttls, smtps, maildir"
            )
        if not parts.hostname:
            raise ValueError("needs a host, as in smtp://127.0.0.1:10025")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return url

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (465 if parts.scheme == "smtps" else 25)

    @property
    def username(self) -> str | None:
        user = urlsplit(self.url).username
        return unquote(user) if user else None

    @property
    def password(self) -> str | None:
        pw = urlsplit(self.url).password
        return unquote(pw) if pw else None

    @property
    def maildir_path(self) -> str:
        parts = urlsplit(self.url)
        return parts.netloc + parts.path

    def redacted(self) -> str:
        """The URL without its password, for logs and summaries."""
        parts = urlsplit(self.url)
        if parts.password:
            return self.url.replace(f":{parts.password}@", ":***@", 1)
        return self.url


class Downstreams(Strict):
    inbound: Downstream | None = None
    outbound: Downstream | None = None

    @field_validator("inbound", "outbound", mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        # `inbound: smtp://host:port` is short for `inbound: {url: smtp://host:port}`.
        return {"url": value} if isinstance(value, str) else value


class Limits(Strict):
    # RFC 5321 §4.5.3.1.7 says at least 64 KB; 25 MiB is what mailbox providers take.
    max_message_size: Annotated[int, Field(ge=1024)] = 26_214_400
    # RFC 5321 §4.5.3.1.8: servers must take at least 100 recipients.
    max_recipients: Annotated[int, Field(ge=1)] = 100
    # RFC 5321 §4.5.3.1.6: a line is at most 1000 octets with its CRLF.
    max_line_length: Annotated[int, Field(ge=1000, le=1_000_000)] = 1000
    command_timeout: Seconds = 300.0
    data_timeout: Seconds = 600.0
    # 5xx replies a client may collect before we say 421 and hang up.
    max_errors: Annotated[int, Field(ge=1)] = 10
    # On SIGTERM: time given to transactions in flight before we close them.
    shutdown_grace: Seconds = 30.0
    # Log lines that may wait for a log reader that fell behind (gateway/log_output.py);
    # more are dropped and counted (portcullis_log_lines_dropped_total).
    log_backlog: Annotated[int, Field(ge=1)] = 10_000


class Config(Strict):
    """The whole gateway configuration, including the customers' policies."""

    hostname: str
    listeners: Listeners
    downstream: Downstreams
    policy_dir: Path
    limits: Limits = Limits()
    # Per-account sending limits, the shared store, brute-force lockout and automatic
    # suspension (gateway/config/quota.py, docs/quotas.md).
    quotas: QuotaLimits = QuotaLimits()
    store: StoreSettings = SQLiteStoreSettings()
    lockout: LockoutSettings = LockoutSettings()
    compromise: CompromiseSettings = CompromiseSettings()
    # abuse@/postmaster@ and the sender identifier on outgoing mail (docs/abuse.md).
    abuse: AbuseSettings = AbuseSettings()
    # Who may log in: the customers' YAML files, or the ISP's Dovecot, SQL or LDAP
    # (gateway/config/accounts.py, docs/accounts.md).
    accounts: AccountsConfig = AccountsConfig()
    # The policy of every account the source knows and no policy file claims
    # (gateway/config/default_policy.py, docs/accounts.md).
    default_policy: DefaultPolicy = DefaultPolicy()
    # The DKIM key store (docs/dkim.md); which domains are signed is per customer.
    dkim: DkimSettings = DkimSettings()
    # ARC sealing of inbound mail after our checks (docs/inbound.md).  Off when absent.
    arc_seal: ArcSealing | None = None
    # Content scanning with rspamd (docs/content.md): off unless configured.
    scanner: ScannerSettings | None = None
    # Where mail held for review waits, and what happens to it at max_age.
    hold: HoldSettings = HoldSettings()
    # Notices to the account holder and the abuse desk (off unless configured).
    notify: NotifySettings | None = None
    # The operations HTTP port: /metrics, /healthz, /readyz, mail-client autoconfig
    # (docs/operations.md).  Off when absent.
    http: HTTP | None = None
    # The admin API and the abuse desk's console, on a listener of their own
    # (gateway/config/admin.py, docs/console.md).  Off when absent.
    admin: AdminSettings | None = None
    # What `portcullis dns records` tells customers to publish (docs/dns.md).
    publish: PublishSettings = PublishSettings()
    # SPF, DKIM, DMARC and ARC on the MX listener; off only where the downstream
    # already does them (or to measure the plain path).
    inbound_checks: bool = True
    # MX screening before the expensive checks: DNS lists, the ISP's dynamic ranges,
    # per-client limits, early talkers, FCrDNS (docs/screening.md).  Off when absent.
    screening: ScreeningSettings | None = None
    # The resolver every inbound check uses (SPF, DKIM, DMARC, ARC).
    dns: DnsSettings = DnsSettings()
    # RFC 8601 authserv-id of our Authentication-Results header; default: hostname.
    authserv_id: str | None = None
    # SIGHUP: the share of customers a reload may drop, and its time bound.
    reload: ReloadSettings = ReloadSettings()
    # Where the config file lives: relative paths in it are relative to this.
    base_dir: Path = Path(".")

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        return normalise_domain(value)

    @field_validator("authserv_id")
    @classmethod
    def _authserv_id(cls, value: str | None) -> str | None:
        return normalise_authserv_id(value) if value is not None else None

    @property
    def our_authserv_id(self) -> str:
        return self.authserv_id or self.hostname

    @model_validator(mode="after")
    def _downstream_per_direction(self) -> Config:
        if self.listeners.inbound and not self.downstream.inbound:
            raise ValueError("downstream.inbound: is required when listeners.inbound is set")
        if (self.listeners.submission or self.listeners.submissions) and not self.downstream.outbound:
            raise ValueError("downstream.outbound: is required when a submission listener is set")
        if self.arc_seal is not None and not (self.listeners.inbound and self.inbound_checks):
            # The seal's cv= is our verdict on the chain: no MX or no checks, no verdict.
            raise ValueError("arc_seal: needs listeners.inbound and inbound_checks: true")
        return self


Direction = Literal["inbound", "outbound"]
