"""The gateway file's ``http:`` section: metrics, health and mail-client autoconfig.

    http:
      address: 0.0.0.0
      port: 8080
      autoconfig:
        hostname: smtp.isp.example      # what mail clients are told to connect to
        submissions_port: 465           # as clients see it (a NAT or container may map it)
        submission_port: 587
        display_name: Example ISP Mail
        login: address                  # clients log in with the full address
        imap: {hostname: imap.isp.example, port: 993}
        pop3: {hostname: pop.isp.example, port: 995}

The IMAP and POP servers are not ours: they are only advertised, and left out
of every document when not configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from gateway.config.base import Port, Strict, TLSFiles
from gateway.values.domains import normalise_domain


class MailboxServer(Strict):
    """An IMAP or POP3 server run by someone else, advertised to mail clients."""

    hostname: str
    port: Port
    # RFC 8314 §3.3: implicit TLS (993, 995) is preferred over STARTTLS.
    security: Literal["tls", "starttls"] = "tls"

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        return normalise_domain(value)


class Autoconfig(Strict):
    # Defaults to the gateway's own `hostname`.
    hostname: str | None = None
    # Defaults to the port of the submissions (465) / submission (587) listener.
    submissions_port: Port | None = None
    submission_port: Port | None = None
    display_name: Annotated[str, Field(min_length=1, max_length=100)] = "Mail"
    # What clients log in with: the whole address or the part before the @.
    login: Literal["address", "local_part"] = "address"
    imap: MailboxServer | None = None
    pop3: MailboxServer | None = None

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        return normalise_domain(value) if value is not None else None

    @field_validator("display_name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be printable text on one line")
        return value


class HTTP(Strict):
    """One small HTTP server: /metrics, /healthz, /readyz and the autoconfig documents."""

    # Loopback by default: metrics are for the operator's Prometheus, not the world.
    # Set 0.0.0.0 (behind a reverse proxy for autoconfig) to serve customers too.
    address: str = "127.0.0.1"
    port: Port = 8080
    # HTTPS on this port (Outlook asks Autodiscover only over HTTPS).  The certificate
    # must name autoconfig.DOMAIN / autodiscover.DOMAIN of every customer domain, so a
    # TLS-terminating reverse proxy is often simpler; see docs/operations.md.
    tls: TLSFiles | None = None
    # `autoconfig: null` turns the autoconfig documents off (they answer 404).
    autoconfig: Autoconfig | None = Autoconfig()
    # Seconds the readiness probe may take before /readyz says 503.
    readiness_timeout: Annotated[float, Field(gt=0, le=60)] = 5.0
    # With several workers, where they share their metric files (emptied at start).
    # Default: a fresh temporary directory.  A tmpfs (/dev/shm/...) is best.
    metrics_dir: Path | None = None
