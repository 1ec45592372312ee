"""The abuse desk's console: server-rendered HTML over the same actions as the API.

Login with a token makes a session: an HttpOnly, Secure, SameSite=Strict cookie with
the ``__Host-`` prefix (so no other host or path can set it).  Every form that
changes something carries the session's CSRF token, and a change is refused
without it, or when the browser says it came from another site (Sec-Fetch-Site).
Everything shown is escaped; held mail is shown as text (preview.py).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from html import escape
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from gateway.admin import actions, views
from gateway.admin.desk import Desk, Unavailable
from gateway.admin.guard import Session
from gateway.ops.explain import write_text
from gateway.store.base import StoreUnavailable
from gateway.store.held import HeldBusy, HeldNotFound

COOKIE = "__Host-portcullis-session"
STATIC = Path(__file__).parent / "static"
# Flash messages after a change: fixed sentences picked by key, nothing echoed.
DONE = {
    "unsuspended": "The account was unsuspended: it may send again from its next message.",
    "not-suspended": "The account was not suspended.",
    "suspended": "The account was suspended on every gateway sharing the store.",
    "released": "The message was released to the downstream.",
    "not-released": "The downstream did not take the message: it is still held.",
    "deleted": "The message was deleted.",
    "gone": "No such held message (released or deleted meanwhile).",
    "busy": "This message is being released by someone else.",
    "no-downstream": "No downstream for this message's direction in the config.",
    "logged-out": "You are logged out.",
    "expired": "Your session has ended: log in again.",
}
Page = Callable[[Desk, web.Request, Session], Awaitable[web.StreamResponse]]


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _csrf(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'


def layout(title: str, body: str, session: Session | None, request: web.Request,
           status: int = 200) -> web.Response:
    done = DONE.get(request.query.get("done", ""))
    notice = f'<p class="notice" role="status">{_e(done)}</p>' if done else ""
    top = ""
    if session is not None:
        top = (
            '<nav aria-label="Console"><a href="/console/">Suspended accounts</a>'
            '<a href="/console/held">Held mail</a><a href="/console/audit">Audit</a></nav>'
            '<form method="get" action="/console/explain" role="search">'
            '<label for="q" class="visually-hidden">Transaction or connection id</label>'
            '<input type="search" id="q" name="id" placeholder="id from a bounce, e.g. K3M2Q7ZP4XAB.1">'
            '<button type="submit">Look up</button></form>'
            f'<form method="post" action="/console/logout">{_csrf(session)}'
            f'<button type="submit">Log out {_e(session.caller.name)}</button></form>')
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)} · Portcullis</title>'
        '<link rel="stylesheet" href="/console/static/console.css">'
        '<script src="/console/static/console.js" defer></script></head>'
        f'<body><header><strong>Portcullis</strong>{top}</header>'
        f'<main id="main"><h1>{_e(title)}</h1>{notice}{body}</main></body></html>')
    return web.Response(text=html, content_type="text/html", charset="utf-8", status=status)


def _see(path: str, done: str | None = None) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(path + (f"?{urlencode({'done': done})}" if done else ""))


# --- login, logout, sessions ----------------------------------------------------------

async def login_form(desk: Desk, request: web.Request, problem: str = "",
                     status: int = 200) -> web.Response:
    warn = f'<p class="problem" role="alert">{_e(problem)}</p>' if problem else ""
    body = (f'{warn}<form method="post" action="/console/login">'
            '<p><label for="token">Admin token</label><br>'
            '<input type="password" id="token" name="token" autocomplete="current-password" required>'
            '</p><p><button type="submit">Log in</button></p></form>'
            '<p class="muted">A token is made with <code>portcullis admin-token NAME</code>.</p>')
    return layout("Log in", body, None, request, status)


async def login(desk: Desk, request: web.Request) -> web.StreamResponse:
    wait = desk.blocked_for(request)
    if wait:
        await desk.refused(request, "rate-limited login")
        response = await login_form(desk, request, "Too many refused attempts from this address: "
                                    "wait a minute.", 429)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    form = await request.post()
    token = str(form.get("token", "")).strip()
    caller = await desk.check_token(token) if token else None
    if caller is None:
        await desk.refused(request, "wrong token at login", action="login")
        return await login_form(desk, request, "That token is not valid.", 401)
    session = desk.sessions.open(caller, desk.clock())
    await desk.changed(request, caller, "login", "console", "done")
    response = web.HTTPSeeOther("/console/")
    response.set_cookie(COOKIE, session.id, path="/", secure=True, httponly=True, samesite="Strict",
                        max_age=int(desk.sessions.lifetime))
    raise response


def _session(desk: Desk, request: web.Request) -> Session | None:
    return desk.sessions.get(request.cookies.get(COOKIE), desk.clock())


def page(desk: Desk, handler: Page, change: str = "") -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A console page: a session is needed; a change also needs the CSRF token, a
    same-site request and an operator's role."""

    async def serve(request: web.Request) -> web.StreamResponse:
        session = _session(desk, request)
        if session is None:
            if request.method == "POST" and change != "logout":
                await desk.refused(request, "no session", action=change)
            raise _see("/console/login", "expired" if COOKIE in request.cookies else None)
        if request.method == "POST":
            form = await request.post()
            site = request.headers.get("Sec-Fetch-Site", "same-origin")
            if site not in ("same-origin", "none") or not desk.sessions.csrf_ok(
                    session, form.get("csrf") if isinstance(form.get("csrf"), str) else None):
                await desk.refused(request, "CSRF token missing or wrong", session.caller,
                                   action=change)
                return layout("Refused", '<p class="problem" role="alert">This change was refused: '
                              'the form did not come from this console (CSRF check). Reload the '
                              'page and try again.</p>', session, request, 403)
            if change != "logout" and not session.caller.may_change:
                await desk.refused(request, "read-only token", session.caller, action=change)
                return layout("Refused", '<p class="problem" role="alert">Your token is read-only.'
                              '</p>', session, request, 403)
        try:
            return await handler(desk, request, session)
        except (Unavailable, StoreUnavailable) as exc:
            text = str(exc) if isinstance(exc, Unavailable) else "the store cannot be reached"
            return layout("Unavailable", f'<p class="problem" role="alert">{_e(text)}</p>',
                          session, request, 503)

    return serve


async def logout(desk: Desk, request: web.Request, session: Session) -> web.StreamResponse:
    desk.sessions.close(session.id)
    await desk.changed(request, session.caller, "logout", "console", "done")
    response = _see("/console/login", "logged-out")
    response.del_cookie(COOKIE, path="/")
    raise response


# --- pages ---------------------------------------------------------------------------

def _evidence(evidence: dict[str, Any]) -> str:
    if not evidence:
        return '<span class="muted">none</span>'
    return "<br>".join(f"{_e(k)}: {_e(v if isinstance(v, str) else json.dumps(v))}"
                       for k, v in sorted(evidence.items()))


def _account_link(login: str) -> str:
    return f'<a href="/console/accounts/{quote(login, safe="@")}">{_e(login)}</a>'


async def suspended(desk: Desk, request: web.Request, session: Session) -> web.Response:
    rows = []
    for s in sorted(await desk.metering.store.suspensions(), key=lambda s: s.since):
        rows.append(
            f'<tr><td>{_account_link(s.login)}</td><td>{_when(s.since)}</td><td>{_e(s.reason)}</td>'
            f'<td>{_evidence(dict(s.evidence))}</td><td>'
            f'<form method="post" action="/console/accounts/{quote(s.login, safe="@")}/unsuspend">'
            f'{_csrf(session)}<button type="submit" aria-label="Unsuspend {_e(s.login)}">'
            'Unsuspend</button></form></td></tr>')
    body = ('<table><caption class="visually-hidden">Suspended accounts</caption><thead><tr>'
            '<th scope="col">Account</th><th scope="col">Since</th><th scope="col">Reason</th>'
            '<th scope="col">Evidence</th><th scope="col">Action</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>") if rows else "<p>No account is suspended.</p>"
    return layout("Suspended accounts", body, session, request)


async def account(desk: Desk, request: web.Request, session: Session) -> web.Response:
    login = actions.valid_login(request.match_info["login"])
    if login is None:
        return layout("Not an account", "<p>That is not a login.</p>", session, request, 400)
    config = desk.runtime.config
    status = views.status(await actions.account_status(desk.metering, desk.runtime.directory,
                                                       login, desk.clock(), config.default_policy,
                                                       config.accounts.default_customer))
    events = await actions.recent_events(desk.metering.store, login)
    s = status["suspension"]
    path = quote(login, safe="@")
    if s:
        state = (f'<p class="problem">Suspended since {_when(s["since"])}: {_e(s["reason"])}</p>'
                 f'<p>Evidence:<br>{_evidence(s["evidence"])}</p>'
                 f'<form method="post" action="/console/accounts/{path}/unsuspend">{_csrf(session)}'
                 '<button type="submit">Unsuspend</button></form>')
    else:
        state = ('<p>Active.</p>'
                 f'<form method="post" action="/console/accounts/{path}/suspend" '
                 'data-confirm="Suspend this account on every gateway?">'
                 f'{_csrf(session)}<label for="reason">Reason</label> '
                 '<input type="text" id="reason" name="reason" maxlength="200"> '
                 '<button type="submit" class="danger">Suspend</button></form>')
    bars = []
    for n, u in enumerate(status["usage"]):
        limit = u["limit"]
        meter = (f'<meter id="u{n}" min="0" max="{limit}" value="{min(u["used"], limit)}" '
                 f'high="{limit * 0.8:g}" optimum="0">{u["used"]} of {limit}</meter>'
                 if limit else '<span class="muted">no limit</span>')
        bars.append(f'<tr><th scope="row"><label for="u{n}">{_e(u["name"])}</label></th>'
                    f'<td>{meter}</td><td>{u["used"]} of {limit if limit is not None else "-"}</td></tr>')
    ev = "".join(f'<li>{_when(e.ts)} {_e(e.kind)} {_evidence(dict(e.data))}</li>' for e in events)
    body = (f'<p>Customer {_e(status["customer"])}{" (shadow mode)" if status["shadow"] else ""}; '
            f'{status["connections"]} connections now.</p>{state}<h2>Usage against limits</h2>'
            '<table><thead><tr><th scope="col">Limit</th><th scope="col">Usage</th>'
            f'<th scope="col">Used</th></tr></thead><tbody>{"".join(bars)}</tbody></table>'
            f'<h2>Recent events</h2>{f"<ul>{ev}</ul>" if ev else "<p>None.</p>"}')
    return layout(f"Account {login}", body, session, request)


async def change_account(desk: Desk, request: web.Request, session: Session) -> web.StreamResponse:
    login = actions.valid_login(request.match_info["login"])
    if login is None:
        return layout("Not an account", "<p>That is not a login.</p>", session, request, 400)
    form = await request.post()
    reason = str(form.get("reason", ""))
    who = desk.who(request, session.caller)
    if request.match_info["what"] == "unsuspend":
        done = await actions.unsuspend_account(desk.metering, login, desk.clock(), by=who, reason=reason)
        await desk.changed(request, session.caller, "unsuspend", login, "done" if done else "unchanged")
        raise _see("/console/", "unsuspended" if done else "not-suspended")
    done = await actions.suspend_account(desk.metering, login, desk.clock(),
                                         reason or "suspended by an operator", by=who,
                                         notifier=desk.runtime.notifier,
                                         directory=desk.runtime.directory)
    await desk.changed(request, session.caller, "suspend", login, "done" if done else "unchanged",
                       actions.clean_reason(reason))
    raise _see(f"/console/accounts/{quote(login, safe='@')}", "suspended")


async def held_queue(desk: Desk, request: web.Request, session: Session) -> web.Response:
    rows = []
    for h in await actions.list_held(desk.held):
        rows.append(
            f'<tr><td><a href="/console/held/{_e(h.id)}">{_e(h.id)}</a></td><td>{_when(h.held_at)}</td>'
            f'<td>{_e(h.direction)}</td><td>{_e(h.reason)}</td><td>{_e(h.login or "-")}</td>'
            f'<td>&lt;{_e(h.sender)}&gt; → {len(h.recipients)} recipients</td>'
            f'<td>{_held_buttons(h.id, session)}</td></tr>')
    body = ('<table><caption class="visually-hidden">Held messages</caption><thead><tr>'
            '<th scope="col">Id</th><th scope="col">Held at</th><th scope="col">Direction</th>'
            '<th scope="col">Reason</th><th scope="col">Login</th><th scope="col">Envelope</th>'
            '<th scope="col">Action</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
            ) if rows else "<p>No message is held.</p>"
    return layout("Held mail", body, session, request)


def _held_buttons(held_id: str, session: Session) -> str:
    return (f'<form class="inline" method="post" action="/console/held/{_e(held_id)}/release">'
            f'{_csrf(session)}<button type="submit" aria-label="Release {_e(held_id)}">Release</button>'
            f'</form> <form class="inline" method="post" action="/console/held/{_e(held_id)}/delete" '
            'data-confirm="Delete this message for good?">'
            f'{_csrf(session)}<button type="submit" class="danger" aria-label="Delete {_e(held_id)}">'
            'Delete</button></form>')


async def held_message(desk: Desk, request: web.Request, session: Session) -> web.Response:
    try:
        h, message = await actions.show_held(desk.held, request.match_info["id"])
    except HeldNotFound:
        return layout("Not found", "<p>No held message with this id.</p>", session, request, 404)
    d = views.held_detail(h, message)
    facts = "".join(f"<tr><th scope=\"row\">{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in (
        ("held at", _when(h.held_at)), ("direction", h.direction), ("login", h.login or "-"),
        ("transaction", h.txid or "-"), ("reason", h.reason), ("client got", h.reply),
        ("sender", f"<{h.sender}>"), ("recipients", ", ".join(f"<{r}>" for r in h.recipients)),
        ("size", f"{h.size} bytes")))
    headers = "\n".join(f'{x["name"]}: {x["value"]}' for x in d["headers"])
    body = (f'<table><tbody>{facts}<tr><th scope="row">evidence</th><td>{_evidence(d["evidence"])}'
            f'</td></tr></tbody></table><p>{_held_buttons(h.id, session)}</p>'
            f'<h2>Headers</h2><pre>{_e(headers)}</pre><h2>Text preview</h2><pre>{_e(d["preview"])}</pre>')
    return layout(f"Held message {h.id}", body, session, request)


async def change_held(desk: Desk, request: web.Request, session: Session) -> web.StreamResponse:
    held_id, what = request.match_info["id"], request.match_info["what"]
    try:
        if what == "release":
            result = await actions.release_held(desk.held, held_id, desk.downstreams(),
                                                 metering=desk.runtime.metering,
                                                 directory=desk.runtime.directory, now=desk.clock(),
                                                 by=desk.who(request, session.caller))
            await desk.changed(request, session.caller, "release", held_id,
                               "done" if result.ok else "failed",
                               f"delivered {len(result.delivered)}, deferred {len(result.deferred)}")
            done = "released" if result.ok else "not-released"
        else:
            await actions.delete_held(desk.held, held_id, by=desk.who(request, session.caller),
                                      metering=desk.runtime.metering, now=desk.clock())
            await desk.changed(request, session.caller, "delete", held_id, "done")
            done = "deleted"
    except (HeldNotFound, HeldBusy, actions.NoDownstream) as exc:
        await desk.changed(request, session.caller, what, held_id, "failed", type(exc).__name__)
        done = {HeldNotFound: "gone", HeldBusy: "busy"}.get(type(exc), "no-downstream")
    raise _see("/console/held", done)


async def explain(desk: Desk, request: web.Request, session: Session) -> web.Response:
    text = request.query.get("id", "")[:300]
    wanted, entries = await actions.decision_trail(desk.metering.store, text) if text else (None, [])
    if not text:
        body = "<p>Paste an id from a bounce or a Received header in the search box.</p>"
    elif wanted is None:
        body = '<p class="problem" role="alert">That is not a transaction or connection id.</p>'
    elif not entries:
        body = (f"<p>{_e(wanted)} is not in the journal (it keeps refusals, holds and "
                "suspensions).</p>")
    else:
        out = StringIO()
        write_text(entries, out)  # the same words as `portcullis explain`
        body = f"<pre>{_e(out.getvalue())}</pre>"
    return layout(f"Decision trail {wanted}" if wanted else "Decision trail", body, session, request)


async def audit(desk: Desk, request: web.Request, session: Session) -> web.Response:
    rows = "".join(f'<tr><td>{_when(a.get("ts", 0))}</td><td>{_e(a.get("who"))}</td>'
                   f'<td>{_e(a.get("from"))}</td><td>{_e(a.get("action"))}</td>'
                   f'<td>{_e(a.get("target"))}</td><td>{_e(a.get("outcome"))} {_e(a.get("detail", ""))}</td></tr>'
                   for a in await desk.audit.recent(200))
    body = ('<table><thead><tr><th scope="col">When</th><th scope="col">Who</th><th scope="col">From</th>'
            '<th scope="col">Action</th><th scope="col">Target</th><th scope="col">Outcome</th></tr>'
            f'</thead><tbody>{rows}</tbody></table>')
    return layout("Audit journal", body, session, request)


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ("console.css", "console.js"):  # two files: no path from the request
        raise web.HTTPNotFound()
    kind = "text/css" if name.endswith(".css") else "text/javascript"
    return web.Response(body=(STATIC / name).read_bytes(), content_type=kind, charset="utf-8")


def add_routes(app: web.Application, desk: Desk) -> None:
    r = app.router

    async def root(request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/console/")

    async def show_login(request: web.Request) -> web.StreamResponse:
        return await login_form(desk, request)

    async def do_login(request: web.Request) -> web.StreamResponse:
        return await login(desk, request)

    r.add_get("/", root)
    r.add_get("/console/static/{name}", static)
    r.add_get("/console/login", show_login)
    r.add_post("/console/login", do_login)
    r.add_post("/console/logout", page(desk, logout, "logout"))
    r.add_get("/console/", page(desk, suspended))
    r.add_get("/console/accounts/{login}", page(desk, account))
    r.add_post("/console/accounts/{login}/{what:suspend|unsuspend}", page(desk, change_account, "account"))
    r.add_get("/console/held", page(desk, held_queue))
    r.add_get("/console/held/{id}", page(desk, held_message))
    r.add_post("/console/held/{id}/{what:release|delete}", page(desk, change_held, "held"))
    r.add_get("/console/explain", page(desk, explain))
    r.add_get("/console/audit", page(desk, audit))
