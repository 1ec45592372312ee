"""One step of a pipeline and what it can say: continue, refuse, hold, delivered.

A step reads the transaction (gateway/smtp/state.py), puts what it found on it
(the message it changed, the fields it adds, its summary on the record) and
returns a :class:`StepResult` (a plain function, or a coroutine function when
it waits for something).  It never writes to the connection: the runner
(run.py) and the handler turn results into the reply.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from gateway.replies import Reply
from gateway.smtp.state import Transaction


class Action(Enum):
    CONTINUE = "continue"  # on to the next step
    REFUSE = "refuse"  # a Reply of ours (4xx/5xx), the rule that decided, its facts
    HOLD = "hold"  # kept for review instead of forwarded; the reply is the client's 250
    DELIVERED = "delivered"  # the downstream answered; steps after it only settle


Facts = Iterable[tuple[str, object]] | Mapping[str, object]


@dataclass(frozen=True, slots=True)
class StepResult:
    action: Action
    reply: Reply | None = None
    rule: str = ""
    facts: Facts = ()


# Most steps, most of the time: one shared value, nothing allocated per message.
CONTINUE = StepResult(Action.CONTINUE)


def refuse(reply: Reply, rule: str, facts: Facts = ()) -> StepResult:
    return StepResult(Action.REFUSE, reply, rule, facts)


def hold(reply: Reply, rule: str, facts: Facts = ()) -> StepResult:
    return StepResult(Action.HOLD, reply, rule, facts)


def delivered(reply: Reply) -> StepResult:
    return StepResult(Action.DELIVERED, reply, "downstream")


@dataclass(frozen=True, slots=True)
class Step:
    """A named step: ``name`` is what docs/flow.md and the logs call it.

    ``run`` is a coroutine function when the step waits for something (DNS, the
    scanner, the downstream, the store), else a plain function: the runner calls
    it without making and awaiting a coroutine per message.

    ``needed``, for a step after ``forward``: whether it has anything to do for
    this transaction.  The steps after the reply run as a task of the connection
    (gateway/smtp/protocol.py); a message none of them needs makes none."""

    name: str
    run: Callable[[Transaction], Awaitable[StepResult]] | Callable[[Transaction], StepResult]
    needed: Callable[[Transaction], bool] | None = None
    waits: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "waits", inspect.iscoroutinefunction(self.run))
