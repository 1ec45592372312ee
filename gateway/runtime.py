"""What a running gateway works with: the loaded configuration and the objects
built from it once at start-up (account source, downstreams), passed to the
handlers.  A reload builds a new Runtime (new config and directory, the same
long-lived objects) and makes it current in one assignment (``reloaded``); a
transaction captures ``current()`` at MAIL and keeps it until it ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from gateway.accounts.source import AccountSource
from gateway.checks.dns import Resolver
from gateway.checks.rspamd import RspamdClient
from gateway.config.directory import Directory
from gateway.config.model import Config
from gateway.dkim.keystore import KeyStore
from gateway.dkim.publication import KeyVerdicts
from gateway.downstream.base import Downstream
from gateway.metering import Metering
from gateway.ops.held_page import HeldLinks
from gateway.ops.metrics import Metrics
from gateway.ops.notify import Notifier
from gateway.stamps.sender_id import SenderIds
from gateway.store.dmarc_tally import DmarcTally
from gateway.store.held import HeldMail
from gateway.store.journal import Journal


@dataclass(frozen=True)
class Runtime:
    config: Config
    directory: Directory
    accounts: AccountSource
    inbound: Downstream | None
    outbound: Downstream | None
    # rspamd, the hold store and the notifier (None when not configured).
    scanner: RspamdClient | None = None
    held: HeldMail | None = None
    # Signs and opens the account holder's link to their held mail (ops/held_page.py).
    held_links: HeldLinks | None = None
    notifier: Notifier | None = None
    # Prometheus counters of this worker (gateway/ops/metrics.py).
    metrics: Metrics | None = None
    # The DKIM key store (None without a submission listener).
    keystore: KeyStore | None = None
    # Which selectors are seen published in DNS, read while dkim.check_published is
    # on; kept across reloads, refreshed by gateway/dkim/publication_watch.py.
    key_verdicts: KeyVerdicts | None = None
    # The one asynchronous resolver for the inbound checks (None without an MX listener).
    resolver: Resolver | None = None
    # Quotas, lockout and suspension over the shared store (None: quotas off).
    metering: Metering | None = None
    # Refusals, holds and suspensions, in the same store (None: no store).
    journal: Journal | None = None
    # Makes and opens the X-Portcullis-Sender-Id tokens (docs/abuse.md).
    sender_ids: SenderIds | None = None
    # Seconds since the epoch; every quota decision takes `now` from here, so a
    # test can move time to slide the windows.
    clock: Callable[[], float] = time.time
    # Counts for DMARC aggregate reports, written to the store in batches (None: no store).
    dmarc_tally: DmarcTally | None = None
    # Shared by every Runtime of this process: points at the newest one.
    live: Live = field(default_factory=lambda: Live(), compare=False, repr=False)

    def current(self) -> Runtime:
        """The runtime new transactions start with (the newest after a reload)."""
        return self.live.runtime or self

    def reloaded(self, **changes: object) -> Runtime:
        """A new Runtime with ``changes``, made the current one in one assignment;
        transactions that captured this one keep it until they end."""
        new = replace(self, **changes)
        self.live.runtime = new
        return new


class Live:
    """The one mutable cell: which Runtime is in force now."""

    __slots__ = ("runtime",)

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
