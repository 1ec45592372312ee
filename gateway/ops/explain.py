"""``portcullis explain ID``: why a transaction or a connection was refused, held or
suspended its account, from the decision journal in the shared store.

The id is the one our replies end with (``(id K3M2Q7ZP4XAB.1)``), the one in our
Received header (``id K3M2Q7ZP4XAB.1``), or a connection id (``K3M2Q7ZP4XAB``: the
connection, then each of its journalled transactions).  Any gateway sharing the
store answers for every other.  Accepted mail is not journalled (it costs no store
write): for it, the transaction's log line is the record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.store.base import JournalEntry, Store

# A connection id, or a transaction id (connection id, dot, number), as we write them:
# after "id " in a reply or a Received header, or on its own.
_ID = r"([A-Za-z2-7]{12}(?:\.\d+)?)"
_QUOTED_ID = re.compile(r"\bid\s+" + _ID + r"\b", re.IGNORECASE)
_BARE_ID = re.compile(r"\s*" + _ID + r"\s*")
_OUTCOMES = {"refused": "refused", "held": "held for review", "suspended": "suspended the account",
             "passed": "passed the pipeline's first steps"}


def parse_id(text: str) -> str | None:
    """``(id K3M2Q7ZP4XAB.1)``, ``id k3m2q7zp4xab.1;`` or the bare id → the id."""
    m = _QUOTED_ID.search(text) or _BARE_ID.fullmatch(text)
    return m.group(1).upper() if m else None


def missing_store(settings: Any, base_dir: Path) -> str | None:
    """An SQLite state file that does not exist: say so rather than create an empty one."""
    if settings.backend != "sqlite":
        return None
    path = settings.path if settings.path.is_absolute() else base_dir / settings.path
    return None if path.exists() else f"no journal: the store file {path} does not exist"


async def find(store: Store, id: str) -> list[JournalEntry]:
    return await store.journal_find(id)


def as_json(entries: Sequence[JournalEntry]) -> str:
    return json.dumps([{"id": e.id, "cid": e.cid, "ts": e.ts, "kind": e.kind, "record": dict(e.record)}
                       for e in entries], indent=2, sort_keys=True)


def write_text(entries: Sequence[JournalEntry], out: TextIO) -> None:
    for n, entry in enumerate(entries):
        if n:
            out.write("\n")
        if entry.kind == "connection":
            out.write(_connection(entry))
        elif entry.kind == "held":
            out.write(_held_decision(entry))
        else:
            out.write(_transaction(entry))


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _facts(facts: Mapping[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, list):
            v = ",".join(str(x) for x in v)
        text = str(v)
        return repr(text) if not text or re.search(r"[\s\"'=]", text) else text

    return " ".join(f"{k}={value(v)}" for k, v in facts.items())


def _held_decision(entry: JournalEntry) -> str:
    """A decision on a held message (admin/actions.py): what, by whom, when."""
    r = entry.record
    return (f"held message {r.get('held_id', '?')} of transaction {entry.id}: "
            f"{r.get('decision', '?')} by {r.get('by', '?')}, {_when(entry.ts)}\n"
            f"  held for {r.get('reason', '?')}, login {r.get('login') or '-'}"
            + (f"; {r['detail']}" if r.get("detail") else "") + "\n")


def _transaction(entry: JournalEntry) -> str:
    r = entry.record
    sender = r.get("from", "-")
    lines = [f"transaction {entry.id} on {r.get('listener', '?')}, {_when(entry.ts)}",
             f"  client {r.get('client', '-')}, login {r.get('login', '-')}, "
             f"from {'<' + sender + '>' if sender != '-' else '-'}"]
    steps = r.get("steps") or []
    lines += _headline(r, steps)
    if r.get("status"):
        lines.append(f"  reply sent: {r['status']}")
    lines.append(f"  recipients: {r.get('rcpts', 0)} accepted, {r.get('refused_rcpts', 0)} refused; "
                 f"size {r.get('size', 0)}; ended: {r.get('ended', '-')} after {r.get('ms', 0)} ms")
    if r.get("checks"):
        lines.append(f"  checks: {r['checks']}")
    if steps:
        lines.append("  steps:")
        for i, s in enumerate(steps, 1):
            head = f"    {i}. {s.get('stage', '?')}"
            if s.get("recipient"):
                head += f" {s['recipient']}"
            head += f": {_OUTCOMES.get(s.get('outcome', ''), s.get('outcome', ''))}"
            if s.get("rule"):
                head += f", rule {s['rule']}"
            lines.append(head)
            if s.get("facts"):
                lines.append(f"       facts: {_facts(s['facts'])}")
            if s.get("reply"):
                lines.append(f"       reply: {s['reply']}")
    return "\n".join(lines) + "\n"


def _headline(r: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> list[str]:
    """What ended the transaction: the refusal, else a hold, else the suspension it
    caused, else its result (a recipient refused on the way is in the steps)."""
    status, rule = r.get("status", ""), r.get("rule", "")
    if status[:1] in ("4", "5"):
        # The step that decided it, when one did (a goodbye 421 is nobody's step).
        step = next((s for s in reversed(steps) if s.get("rule") == rule), None)
        stage = (step or r).get("stage", "?")
        out = [f"  refused at {stage.upper()} by rule {rule or '-'}"]
        return out + ([f"  facts: {_facts(r['facts'])}"] if r.get("facts") else [])
    for outcome in ("held", "suspended"):
        step = next((s for s in reversed(steps) if s.get("outcome") == outcome), None)
        if step is not None:
            facts = r.get("facts") if outcome == "held" else step.get("facts")
            out = [f"  {_OUTCOMES[outcome]} at {step.get('stage', '?').upper()} "
                   f"by rule {step.get('rule') or '-'}"]
            return out + ([f"  facts: {_facts(facts)}"] if facts else [])
    return [f"  ended with {r.get('result', '-')}"]


def _connection(entry: JournalEntry) -> str:
    r = entry.record
    lines = [f"connection {entry.id} on {r.get('listener', '?')}, {_when(entry.ts)}",
             f"  client {r.get('client', '-')}, tls {r.get('tls', '-')}, login {r.get('login', '-')}",
             f"  ended: {r.get('ended', '-')} after {r.get('ms', 0)} ms; "
             f"{r.get('transactions', 0)} transactions, {r.get('errors', 0)} 5xx and "
             f"{r.get('tempfails', 0)} 4xx replies, {r.get('auth_failures', 0)} failed AUTH"]
    if r.get("auth_rule"):
        lines.append(f"  AUTH refused by rule {r['auth_rule']}")
    return "\n".join(lines) + "\n"
