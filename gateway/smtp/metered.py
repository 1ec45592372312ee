"""Quota state tied to a connection and a transaction's life cycle.

The protocol object (gateway/smtp/protocol.py) aborts the downstream transaction
it finds on the open Transaction (``tx.downstream``, gateway/smtp/state.py) on
RSET, a new EHLO, a local refusal after DATA and at disconnect.  Wrapping that transaction is how a quota hold is
released at exactly those moments, without the protocol knowing about quotas.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.downstream.base import Transaction
from gateway.metering import MeteredTransaction, Metering
from gateway.replies import Reply
from gateway.rules.quota import AccountQuota
from gateway.store.base import Suspension

log = logging.getLogger("portcullis.quota")


class MeteredDownstream:
    """A downstream transaction whose abort also releases the transaction's quota holds."""

    def __init__(self, inner: Transaction, metering: Metering, acct: AccountQuota,
                 tx: MeteredTransaction, clock: Callable[[], float]):
        self.inner = inner
        self.metering = metering
        self.acct = acct
        self.tx = tx
        self.clock = clock
        # Told of a suspension this transaction's teardown triggers (a dead-address run).
        self.on_suspended: Callable[[Suspension], None] | None = None

    async def rcpt(self, recipient: str, options: list[str]) -> Reply:
        return await self.inner.rcpt(recipient, options)

    async def data(self, message: Any) -> Reply:  # bytes or parts (downstream/base.py)
        return await self.inner.data(message)

    async def abort(self) -> None:
        try:
            if self.tx.refused_downstream and not self.tx.finished:
                # Recipients the downstream refused feed the compromise signal even
                # when the client never gets to DATA (a run at dead addresses):
                # settle as "nothing delivered", which releases every hold.
                self.tx.accepted = 0
                suspension = await self.metering.finish(self.acct, self.tx, False, self.clock())
                if suspension is not None and self.on_suspended is not None:
                    self.on_suspended(suspension)
            else:
                await self.metering.abort(self.tx, self.clock())
        finally:
            await self.inner.abort()


def on_disconnect(server: Any, release: Callable[[], Awaitable[None]]) -> None:
    """Run ``release()`` when the connection closes, as one of the connection's
    clean-up tasks: shutdown waits for it before it closes the store."""
    server.add_close_callback(lambda _conn: release())
