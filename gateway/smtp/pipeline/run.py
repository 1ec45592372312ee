"""The loop over a listener's pipeline."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.smtp.pipeline.step import Action, Step, StepResult
from gateway.smtp.state import Transaction


class PipelineError(RuntimeError):
    """A pipeline that is not well made: a bug, answered 451 by the protocol."""


async def run_pipeline(steps: Sequence[Step], tx: Transaction) -> StepResult:
    """Run ``steps`` in order until one refuses or holds the message.

    Once a step has delivered it, the rest still run (they settle quotas, read
    an abuse report) but can no longer change the answer: the downstream has
    the message.  The result is the one that decided the client's reply."""
    done: StepResult | None = None
    trail = tx.record.trail
    for i, step in enumerate(steps):
        mark = len(trail)
        result = await step.run(tx) if step.waits else step.run(tx)  # type: ignore[misc]
        action = result.action
        if action is Action.CONTINUE:
            continue
        if done is not None:
            raise PipelineError(f"step {step.name!r} answered {action.value} after delivery")
        if action is Action.DELIVERED:
            done = result
            continue
        # Refused or held: the trail says which steps it passed first, and which
        # step decided (``portcullis explain``).  Accepted mail pays nothing for it.
        tx.record.steps_passed([s.name for s in steps[:i]], step.name, at=mark)
        return result
    if done is None:
        raise PipelineError("the pipeline ended without delivering or refusing the message")
    return done
