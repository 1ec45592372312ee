"""The admin JSON API: /api/... on the admin listener (openapi.py documents it).

Every request but /api/openapi.json carries ``Authorization: Bearer NAME.SECRET``.
A read-only token reads; an operator token also changes.  Every change, and every
refused attempt at one, goes to the audit journal; every refusal is logged and
counted, and an address with too many gets 429 for the rest of the minute.
Tokens are accepted in that header only: never in a URL, where logs and browser
histories keep them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.admin import actions, views
from gateway.admin.desk import Desk, Unavailable
from gateway.admin.openapi import document
from gateway.admin.tokens import Caller
from gateway.store.base import StoreUnavailable
from gateway.store.held import HeldBusy, HeldNotFound

Handler = Callable[[Desk, web.Request, Caller], Awaitable[Any]]
MAX_LIST = 1000


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    # Our own fixed sentences (and validated identifiers): the request is never echoed raw.
    return web.json_response({"error": message}, status=status, headers=headers)


def _login(request: web.Request) -> str:
    login = actions.valid_login(request.match_info["login"])
    if login is None:
        raise web.HTTPBadRequest(text=json.dumps({"error": "not a login"}),
                                 content_type="application/json")
    return login


async def _reason(request: web.Request) -> str:
    if not request.can_read_body:
        return ""
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body is not JSON"}),
                                 content_type="application/json") from None
    reason = body.get("reason", "") if isinstance(body, dict) else None
    if not isinstance(reason, str):
        raise web.HTTPBadRequest(text=json.dumps({"error": "reason must be a string"}),
                                 content_type="application/json")
    return reason


async def authorised(desk: Desk, request: web.Request, change: str) -> Caller | web.Response:
    """The caller, or the refusal to send (401, 403, 429)."""
    wait = desk.blocked_for(request)
    if wait:
        await desk.refused(request, "rate-limited")
        return error(429, "too many refused requests from this address",
                     {"Retry-After": str(int(wait) + 1)})
    if any(k.lower() in ("token", "access_token", "key", "secret") for k in request.query):
        await desk.refused(request, "a secret in the URL")
        return error(400, "tokens go in the Authorization header, never in a URL")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        await desk.refused(request, "no token", action=change)
        return error(401, "a token is required (Authorization: Bearer NAME.SECRET)",
                     {"WWW-Authenticate": 'Bearer realm="portcullis-admin"'})
    caller = await desk.check_token(token.strip())
    if caller is None:
        await desk.refused(request, "wrong token", action=change)
        return error(401, "the token is not valid", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if change and not caller.may_change:
        await desk.refused(request, "read-only token", caller, action=change)
        return error(403, "this token is read-only")
    return caller


def route(desk: Desk, handler: Handler, change: str = "") -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Authorise, run, and turn the known failures into JSON answers."""

    async def serve(request: web.Request) -> web.StreamResponse:
        caller = await authorised(desk, request, change)
        if isinstance(caller, web.Response):
            return caller
        try:
            result = await handler(desk, request, caller)
        except HeldNotFound:
            return error(404, "no held message with this id")
        except HeldBusy:
            return error(409, "this message is being released (or a release was interrupted)")
        except actions.NoDownstream as exc:
            return error(409, f"no downstream.{exc} in the config to release to")
        except Unavailable as exc:
            return error(503, str(exc))
        except StoreUnavailable:
            return error(503, "the store cannot be reached")
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result)

    return serve


# --- accounts ----------------------------------------------------------------------

async def list_accounts(desk: Desk, request: web.Request, caller: Caller) -> Any:
    metering = desk.metering
    suspended = {s.login: s for s in await metering.store.suspensions()}
    only_suspended = request.query.get("suspended") in ("1", "true", "yes")
    logins = sorted(suspended) if only_suspended else await actions.known_logins(
        metering, desk.runtime.directory)
    directory = desk.runtime.directory
    return {"accounts": [{"login": login,
                          "customer": actions.account_for(
                              directory, metering.settings, login, desk.runtime.config.default_policy,
                              desk.runtime.config.accounts.default_customer).customer,
                          "suspension": views.suspension(suspended.get(login))}
                         for login in logins[:MAX_LIST]]}


async def get_account(desk: Desk, request: web.Request, caller: Caller) -> Any:
    login = _login(request)
    status = await actions.account_status(desk.metering, desk.runtime.directory, login, desk.clock(),
                                          desk.runtime.config.default_policy,
                                          desk.runtime.config.accounts.default_customer)
    events = await actions.recent_events(desk.metering.store, login)
    return views.status(status) | {"events": [views.event(e) for e in events]}


async def suspend(desk: Desk, request: web.Request, caller: Caller) -> Any:
    login, reason = _login(request), await _reason(request)
    done = await actions.suspend_account(desk.metering, login, desk.clock(),
                                         reason or "suspended by an operator",
                                         by=desk.who(request, caller),
                                         notifier=desk.runtime.notifier,
                                         directory=desk.runtime.directory)
    await desk.changed(request, caller, "suspend", login, "done" if done else "unchanged",
                       actions.clean_reason(reason))
    return {"login": login, "suspended": True, "changed": done}


async def unsuspend(desk: Desk, request: web.Request, caller: Caller) -> Any:
    login, reason = _login(request), await _reason(request)
    who = desk.who(request, caller)
    done = await actions.unsuspend_account(desk.metering, login, desk.clock(), by=who, reason=reason)
    await desk.changed(request, caller, "unsuspend", login, "done" if done else "unchanged",
                       actions.clean_reason(reason))
    answer: dict[str, Any] = {"login": login, "suspended": False, "changed": done}
    if request.query.get("release_held") == "1":
        # The desk's one step: lift it and let its held mail go (each charged, journaled).
        rt = desk.runtime
        released = await actions.release_account(desk.held, login, desk.downstreams(), rt.metering,
                                                 rt.directory, desk.clock(), by=who)
        answer["released"] = [
            {"id": h.id, "kept": r} if isinstance(r, str) else
            {"id": h.id, "delivered": list(r.delivered), "removed": r.removed}
            for h, r in released]
        await desk.changed(request, caller, "release", login, "done",
                           f"{len(released)} held messages")
    return answer


# --- held mail -----------------------------------------------------------------------

def held_filter(query: Any) -> actions.HeldFilter:
    older = query.get("older_than")
    try:
        older_than = float(older) if older else None
    except ValueError:
        older_than = -1.0
    if older_than is not None and older_than < 0:
        raise web.HTTPBadRequest(text=json.dumps({"error": "older_than is seconds, 0 or more"}),
                                 content_type="application/json")
    return actions.HeldFilter(login=query.get("login") or None, customer=query.get("customer") or None,
                              reason=query.get("reason") or None, older_than=older_than)


async def list_held(desk: Desk, request: web.Request, caller: Caller) -> Any:
    found = await actions.list_held(desk.held, desk.runtime.directory, held_filter(request.query),
                                    desk.clock())
    return {"held": [views.held(h) for h in found[:MAX_LIST]], "total": len(found)}


async def show_held(desk: Desk, request: web.Request, caller: Caller) -> Any:
    h, message = await actions.show_held(desk.held, request.match_info["id"])
    return views.held_detail(h, message)


async def release_held(desk: Desk, request: web.Request, caller: Caller) -> Any:
    held_id = request.match_info["id"]
    try:
        result = await actions.release_held(desk.held, held_id, desk.downstreams(),
                                                 metering=desk.runtime.metering,
                                                 directory=desk.runtime.directory, now=desk.clock(),
                                                 by=desk.who(request, caller))
    except (HeldNotFound, HeldBusy, actions.NoDownstream) as exc:
        await desk.changed(request, caller, "release", held_id, "failed", type(exc).__name__)
        raise
    await desk.changed(request, caller, "release", held_id,
                       "done" if result.ok else "failed",
                       f"delivered {len(result.delivered)}, deferred {len(result.deferred)}, "
                       f"refused {len(result.refused)}")
    return web.json_response(views.release(result), status=200 if result.ok else 502)


async def delete_held(desk: Desk, request: web.Request, caller: Caller) -> Any:
    held_id = request.match_info["id"]
    try:
        h = await actions.delete_held(desk.held, held_id, by=desk.who(request, caller),
                                      metering=desk.runtime.metering, now=desk.clock())
    except (HeldNotFound, HeldBusy) as exc:
        await desk.changed(request, caller, "delete", held_id, "failed", type(exc).__name__)
        raise
    await desk.changed(request, caller, "delete", held_id, "done", f"from <{h.sender}>")
    return {"id": h.id, "deleted": True}


async def expire_held(desk: Desk, request: web.Request, caller: Caller) -> Any:
    decisions = await actions.expire_held(desk.held, desk.runtime.config.hold, desk.downstreams(),
                                          desk.clock(), desk.runtime.metering,
                                          desk.runtime.directory)
    await desk.changed(request, caller, "expire", "held", "done",
                       f"{len(decisions)} past max_age")
    return {"decisions": [views.expiry(d) for d in decisions]}


# --- decisions, feed, audit, reload, health ----------------------------------------------

async def decision(desk: Desk, request: web.Request, caller: Caller) -> Any:
    wanted, entries = await actions.decision_trail(desk.metering.store, request.match_info["id"])
    if wanted is None:
        return error(400, "not a transaction or connection id (like K3M2Q7ZP4XAB.1)")
    if not entries:
        return error(404, "not in the journal (it keeps refusals, holds and suspensions)")
    return {"id": wanted, "entries": [views.entry(e) for e in entries]}


async def feed(desk: Desk, request: web.Request, caller: Caller) -> Any:
    try:
        limit = max(1, min(int(request.query.get("limit", "100")), MAX_LIST))
    except ValueError:
        return error(400, "limit is a number")
    events = await desk.metering.store.events(None, MAX_LIST)
    held = await actions.list_held(desk.held)
    return views.feed(events, held, request.query.get("since", ""), limit)


async def audit(desk: Desk, request: web.Request, caller: Caller) -> Any:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return error(400, "limit is a number")
    return {"entries": await desk.audit.recent(limit)}


async def reload(desk: Desk, request: web.Request, caller: Caller) -> Any:
    outcome = await desk.reload()
    await desk.changed(request, caller, "reload", "config", outcome)
    return web.json_response({"outcome": outcome}, status=200 if outcome != "refused" else 409)


async def health(desk: Desk, request: web.Request, caller: Caller) -> Any:
    report = await desk.health()
    return web.json_response(report, status=200 if report["ok"] else 503)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


def add_routes(app: web.Application, desk: Desk) -> None:
    r = app.router
    r.add_get("/api/openapi.json", openapi)
    r.add_get("/api/health", route(desk, health))
    r.add_get("/api/accounts", route(desk, list_accounts))
    r.add_get("/api/accounts/{login}", route(desk, get_account))
    r.add_post("/api/accounts/{login}/suspend", route(desk, suspend, "suspend"))
    r.add_post("/api/accounts/{login}/unsuspend", route(desk, unsuspend, "unsuspend"))
    r.add_get("/api/held", route(desk, list_held))
    r.add_post("/api/held/expire", route(desk, expire_held, "expire"))
    r.add_get("/api/held/{id}", route(desk, show_held))
    r.add_post("/api/held/{id}/release", route(desk, release_held, "release"))
    r.add_post("/api/held/{id}/delete", route(desk, delete_held, "delete"))
    r.add_get("/api/decisions/{id}", route(desk, decision))
    r.add_get("/api/feed", route(desk, feed))
    r.add_get("/api/audit", route(desk, audit))
    r.add_post("/api/reload", route(desk, reload, "reload"))
