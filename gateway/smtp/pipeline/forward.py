"""Hand the message to the downstream; its answer is the client's (before-queue:
nothing gets a 250 that the downstream did not take)."""

from __future__ import annotations

import asyncio
import time

from gateway import replies
from gateway.replies import Reply
from gateway.runtime import Runtime
from gateway.smtp.pipeline.step import Step, StepResult, delivered
from gateway.smtp.state import Transaction


async def run(tx: Transaction) -> StepResult:
    downstream = tx.downstream
    assert downstream is not None, "forwarded twice"
    tx.downstream = None  # handed over: not to be aborted when the transaction ends
    started = time.monotonic()
    try:
        reply = await downstream.data(tx.outgoing())
    except asyncio.CancelledError:
        # Cut off (the client left, a timeout, shutdown): abort all the same, as
        # the connection's task, since this one may be cancelled again.
        tx.session.background(downstream.abort())
        raise
    except Exception:
        await downstream.abort()
        raise
    _count(tx.runtime, tx.direction, time.monotonic() - started, reply)
    tx.reply = reply
    tx.record.size = len(tx.message.data)
    return delivered(reply)


def _count(rt: Runtime, name: str, seconds: float, reply: Reply) -> None:
    if rt.metrics is None:
        return
    rt.metrics.downstream_took(name, seconds)
    if reply == replies.DOWNSTREAM_TIMEOUT:
        rt.metrics.downstream_error(name, "timeout")
    elif reply == replies.DOWNSTREAM_UNAVAILABLE:
        rt.metrics.downstream_error(name, "connect")
    elif reply.is_temporary:
        rt.metrics.downstream_error(name, "tempfail")
    elif not reply.is_success:
        rt.metrics.downstream_error(name, "refused")


STEP = Step("forward", run)
