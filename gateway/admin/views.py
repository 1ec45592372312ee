"""Plain JSON-ready views of what the actions return, for the API and the console."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.admin import preview
from gateway.metering import AccountStatus
from gateway.store.base import Event, JournalEntry, Suspension
from gateway.store.held import ExpiryDecision, HeldMessage, ReleaseResult

FEED_KINDS = ("suspended", "unsuspended")


def suspension(s: Suspension | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"login": s.login, "since": s.since, "reason": s.reason, "evidence": dict(s.evidence)}


def status(s: AccountStatus) -> dict[str, Any]:
    return {
        "login": s.login, "customer": s.customer, "shadow": s.shadow,
        "suspension": suspension(s.suspension), "connections": s.connections,
        # Every limit, the customer's aggregate ones only where set (Metering.status).
        "usage": [{"name": u.name, "used": u.used, "limit": u.limit} for u in s.usage],
    }


def event(e: Event) -> dict[str, Any]:
    return {"ts": e.ts, "kind": e.kind, "subject": e.subject, "details": dict(e.data)}


def held(h: HeldMessage) -> dict[str, Any]:
    return h.record() | {"state": h.state}


def held_detail(h: HeldMessage, message: bytes) -> dict[str, Any]:
    return held(h) | {"headers": [{"name": n, "value": v} for n, v in preview.headers(message)],
                      "preview": preview.text_preview(message)}


def release(r: ReleaseResult) -> dict[str, Any]:
    return {"id": r.id, "delivered": list(r.delivered),
            "deferred": [{"recipient": a, "reply": b} for a, b in r.deferred],
            "refused": [{"recipient": a, "reply": b} for a, b in r.refused],
            "data_reply": r.data_reply, "removed": r.removed}


def expiry(d: ExpiryDecision) -> dict[str, Any]:
    return {"id": d.id, "age": d.age, "action": d.action, "detail": d.detail}


def entry(e: JournalEntry) -> dict[str, Any]:
    return {"id": e.id, "cid": e.cid, "ts": e.ts, "kind": e.kind, "record": dict(e.record)}


def _key(item: dict[str, Any]) -> str:
    return f"{item['ts']:020.6f}|{item['kind']}|{item['subject']}"


def feed(events: Sequence[Event], held_mail: Sequence[HeldMessage], since: str,
         limit: int) -> dict[str, Any]:
    """Suspensions, unsuspensions and holds after the cursor ``since``, oldest first.

    The cursor is opaque to the caller: pass back ``next`` to get what came after.
    (It orders by time, then kind and subject, so two items in one second are both seen.)"""
    items = [{"ts": e.ts, "kind": e.kind, "subject": e.subject, "details": dict(e.data)}
             for e in events if e.kind in FEED_KINDS]
    items += [{"ts": h.held_at, "kind": "held", "subject": h.id,
               "details": {"login": h.login, "reason": h.reason, "direction": h.direction,
                           "sender": h.sender, "recipients": list(h.recipients)}}
              for h in held_mail]
    items = sorted((i for i in items if _key(i) > since), key=_key)[:limit]
    return {"items": items, "next": _key(items[-1]) if items else since}
