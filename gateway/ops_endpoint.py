"""The operations HTTP endpoint of one worker: metrics, health, readiness, autoconfig,
and the account holder's page of held mail (a signed link in the notice).

Wiring, not a piece of ops/: it reads the running gateway (gateway/runtime.py),
which itself holds pieces of ops/ (metrics, notices), so it sits above both.

Built from the running gateway at start-up when the config has an ``http:``
section.  Readiness is "can this worker take mail now": its listeners are
bound, its downstreams answer, its store answers (and the number of suspended
accounts it reports feeds the gauge).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.parser import BytesHeaderParser
from email.policy import default

from aiohttp import web

from gateway.ops import held_page
from gateway.ops import metrics as metrics_module
from gateway.ops.autoconfig import client_settings_from_config
from gateway.ops.http import AutoconfigSite, Handler, MtaStsSite, OpsHTTPServer
from gateway.ops.metrics import Metrics
from gateway.ops.mta_sts import gateway_policy
from gateway.runtime import Runtime
from gateway.store.held import HeldNotFound
from gateway.tls import server_context


def autoconfig_site(runtime: Runtime) -> AutoconfigSite | None:
    http = runtime.config.http
    settings = client_settings_from_config(runtime.config, http) if http else None
    if settings is None:
        return None
    # Looked up on every request: a policy reload is seen at once.
    return AutoconfigSite(
        settings, lambda domain: runtime.current().directory.customer_for_domain(domain) is not None)


def mta_sts_site(runtime: Runtime) -> MtaStsSite | None:
    """The policy `dns records` prints (publish.mta_sts), served for a TLS front end."""
    config = runtime.config
    sts = config.publish.mta_sts
    if sts is None:
        return None
    mx_host = config.publish.mx_host or (config.hostname if config.listeners.inbound else None)
    policy = gateway_policy(sts.mode, mx_host, sts.mx, sts.max_age)
    if policy is None:
        return None
    return MtaStsSite(
        policy, lambda domain: runtime.current().directory.customer_for_domain(domain) is not None)


def make_endpoint(runtime: Runtime, metrics: Metrics,
                  listeners_bound: Callable[[], list[str]]) -> OpsHTTPServer | None:
    http = runtime.config.http
    if http is None:
        return None

    async def readiness() -> list[str]:
        rt = runtime.current()
        problems = listeners_bound()
        for downstream in (rt.inbound, rt.outbound):
            if downstream is not None:
                problem = await downstream.probe()
                if problem:
                    problems.append(problem)
        if rt.metering is not None:
            try:
                metrics.set_suspended(len(await rt.metering.store.suspensions()))
            except Exception as exc:  # the store is down: not ready, say why
                problems.append(f"store: {type(exc).__name__}: {exc}")
        return problems

    registry = (metrics_module.multiprocess_registry() if metrics_module.is_multiprocess()
                else metrics.registry)
    ssl_context = server_context(http.tls.cert, http.tls.key) if http.tls else None
    return OpsHTTPServer(http.address, http.port, registry=registry, readiness=readiness,
                         autoconfig_site=autoconfig_site(runtime),
                         readiness_timeout=http.readiness_timeout, ssl_context=ssl_context,
                         mta_sts_site=mta_sts_site(runtime),
                         pages={held_page.PATH: held_mail_page(runtime)})


# Held messages one page lists (a spam run can be thousands: the newest are what
# the account holder needs to see).
MAX_LISTED = 100


def held_mail_page(runtime: Runtime) -> Handler:
    """GET /held?t=TOKEN: the held mail of the account the token names (ops/held_page.py).
    A token that is not ours, altered or expired gets 403 and nothing else."""

    async def page(request: web.Request) -> web.StreamResponse:
        rt = runtime.current()
        now = time.time()
        token = request.query.get("t", "")
        opened = rt.held_links.open(token, now) if rt.held_links is not None else None
        if opened is None or rt.held is None:
            return web.Response(status=403, text="This link is not valid, or has expired.\n")
        login, expires = opened
        mine = [h for h in await rt.held.list() if (h.login or "").lower() == login][-MAX_LISTED:]
        entries = []
        for h in reversed(mine):
            try:
                subject = _subject(await rt.held.message(h.id))
            except (HeldNotFound, OSError):
                continue  # released or deleted meanwhile
            entries.append(held_page.customer_view(h.held_at, h.recipients, subject, h.reason,
                                                   h.evidence))
        return web.Response(text=held_page.render_page(login, entries, expires, rt.config.hostname),
                            content_type="text/html", charset="utf-8")

    return page


def _subject(message: bytes) -> str:
    """The Subject: of a held message, decoded (RFC 2047) and on one line."""
    head = message.split(b"\r\n\r\n", 1)[0]
    parsed = BytesHeaderParser(policy=default).parsebytes(head + b"\r\n\r\n")
    return " ".join(str(parsed.get("Subject", "")).split())[:200]
