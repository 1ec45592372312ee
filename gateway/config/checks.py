"""Gateway-wide settings of the inbound checks: the DNS resolver and our authserv-id.

The lead adds these to the gateway file as ``dns:`` and ``authserv_id:``::

    dns:
      nameservers: [127.0.0.1]   # a local validating recursive resolver
      port: 53
      timeout: 3
      cache_size: 10000
    authserv_id: mx.isp.example  # default: the gateway hostname
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.values.domains import normalise_domain


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DnsSettings(Strict):
    # Addresses of recursive resolvers (IP literals: resolving a resolver's name would
    # need a resolver).  Tests point this at their own NSD.
    nameservers: Annotated[tuple[str, ...], Field(min_length=1)] = ("127.0.0.1",)
    port: Annotated[int, Field(ge=1, le=65535)] = 53
    # Per look-up deadline, all servers and retries included.  RFC 7208 §4.6.4 caps a
    # whole SPF evaluation at 20 s; a few seconds per look-up keeps DATA well inside it.
    timeout: Annotated[float, Field(gt=0, le=30)] = 3.0
    # Answers kept (positive and negative); least recently used go first.
    cache_size: Annotated[int, Field(ge=0, le=10_000_000)] = 10000

    @field_validator("nameservers")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for server in value:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise ValueError(f"{server!r} is not an IP address") from None
        return value


def normalise_authserv_id(value: str) -> str:
    """RFC 8601 §2.5: the authserv-id names the ADMD; a host name is the usual choice."""
    return normalise_domain(value)
