"""What a running gateway works with: the loaded configuration and the objects
built from it once at start-up (account source, downstreams), passed to the
handlers.  A reload builds a new Runtime's config and swaps it in one assignment;
sessions keep the one they started with."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.accounts.source import AccountSource
from gateway.checks.dns import Resolver
from gateway.config.directory import Directory
from gateway.config.model import Config
from gateway.downstream.base import Downstream


@dataclass(frozen=True)
class Runtime:
    config: Config
    directory: Directory
    accounts: AccountSource
    inbound: Downstream | None
    outbound: Downstream | None
    # The one asynchronous resolver for the inbound checks (None without an MX listener).
    resolver: Resolver | None = None
