"""Typed settings for the abuse loop: role mailboxes and the sender identifier.

Gateway file section ``abuse:`` (docs/abuse.md)::

    abuse:
      secret_file: /etc/portcullis/sender-id.key   # the same file on every gateway
      domains: [isp.example]                       # besides the customers' domains
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.values.domains import DomainNames

# RFC 2142 §2 and RFC 5321 §4.5.1: mailboxes every domain must accept mail for.
ROLE_MAILBOXES = ("abuse", "postmaster")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AbuseSettings(Strict):
    # The key behind the X-Portcullis-Sender-Id header.  Gateways that must read each
    # other's identifiers (a cluster) need the same secret.  `secret` inline, or
    # `secret_file` (relative to the gateway file); with neither, `serve` creates
    # `portcullis-sender-id.key` next to the gateway file on first start.
    secret: Annotated[str, Field(min_length=32)] | None = None
    secret_file: Path | None = None
    # Secrets used before a rotation: identifiers made with them are still read.
    previous_secrets: tuple[Annotated[str, Field(min_length=32)], ...] = ()
    # Domains whose abuse@/postmaster@ are accepted besides every customer domain and
    # the gateway's own hostname (the ISP's own domains).
    domains: DomainNames = ()
    # Parse reports sent to abuse@ (ARF or forwarded messages) and count complaints.
    attribute_reports: bool = True

    @model_validator(mode="after")
    def _one_secret(self) -> AbuseSettings:
        if self.secret is not None and self.secret_file is not None:
            raise ValueError("give secret or secret_file, not both")
        return self


DEFAULT_SECRET_FILE = Path("portcullis-sender-id.key")
