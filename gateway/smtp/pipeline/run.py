"""The loop over a listener's pipeline.

Once a step has delivered the message, the downstream's answer is the client's
and nothing after it can change that answer (before-queue: the 250 is the
downstream's).  So the steps after it (settle quotas, abuse reports) are not run
here: they are left on the transaction (``tx.after_reply``) and the protocol
runs them once the reply is written (gateway/smtp/protocol.py), instead of
keeping the client waiting for a store round trip it does not need.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from gateway.smtp.pipeline.step import Action, Step, StepResult
from gateway.smtp.state import Transaction


class PipelineError(RuntimeError):
    """A pipeline that is not well made: a bug, answered 451 by the protocol (or,
    after the reply, logged with the connection id)."""


async def run_pipeline(steps: Sequence[Step], tx: Transaction) -> StepResult:
    """Run ``steps`` in order until one refuses, holds or delivers the message.

    The result is the one that decided the client's reply.  After a delivery,
    the steps left are put on ``tx.after_reply`` (see :func:`run_after_reply`)."""
    trail = tx.record.trail
    for i, step in enumerate(steps):
        mark = len(trail)
        result = await step.run(tx) if step.waits else step.run(tx)  # type: ignore[misc]
        action = result.action
        if action is Action.CONTINUE:
            continue
        if action is Action.DELIVERED:
            rest = [s for s in steps[i + 1:] if s.needed is None or s.needed(tx)]
            if rest:
                tx.after_reply = partial(run_after_reply, rest, tx)
            return result
        # Refused or held: the trail says which steps it passed first, and which
        # step decided (``portcullis explain``).  Accepted mail pays nothing for it.
        tx.record.steps_passed([s.name for s in steps[:i]], step.name, at=mark)
        return result
    raise PipelineError("the pipeline ended without delivering or refusing the message")


async def run_after_reply(steps: Sequence[Step], tx: Transaction) -> None:
    """The steps after delivery, in order: they settle what it leaves behind, and
    may only continue (the client has heard the downstream's answer)."""
    for step in steps:
        result = await step.run(tx) if step.waits else step.run(tx)  # type: ignore[misc]
        if result.action is not Action.CONTINUE:
            raise PipelineError(
                f"step {step.name!r} answered {result.action.value} after delivery")
