"""What the admin API and the console work with: the running gateway, the audit
journal, the token checker, refusals and sessions.  Made once per admin listener."""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from gateway.admin.audit import AuditJournal
from gateway.admin.guard import Refusals, Sessions
from gateway.admin.tokens import Caller, TokenChecker
from gateway.config.admin import AdminSettings
from gateway.downstream.base import Downstream
from gateway.metering import Metering
from gateway.runtime import Runtime
from gateway.store import open_held_store
from gateway.store.held import HeldMail

log = logging.getLogger("portcullis.admin")

Reload = Callable[[], Awaitable[str]]
"""Asks for a reload; returns what happened ("reloaded", "refused: see the log", ...)."""

# What an SSO proxy may say about the person behind a token (docs/console.md).
_FORWARDED_USER = re.compile(r"^[\w.@+-]{1,100}$")


class Unavailable(Exception):
    """A part the request needs is not configured (quotas off: no store)."""


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path


class Desk:
    def __init__(self, runtime: Runtime, reload: Reload, clock: Callable[[], float] = time.time):
        self._runtime = runtime
        self.reload = reload
        self.clock = clock
        settings = self.settings
        base = runtime.config.base_dir
        self.audit = AuditJournal(_resolve(base, settings.audit_log))
        self.tokens = TokenChecker()
        self.refusals = Refusals(settings.max_failures_per_minute)
        self.sessions = Sessions(settings.session_minutes * 60.0)
        # The gateway's own hold store (it always has one); else the one the
        # `held` commands read (held mail of other gateways sharing it).
        self._held = runtime.held or open_held_store(runtime.config.hold, base)

    # --- the gateway in force -----------------------------------------------------
    @property
    def runtime(self) -> Runtime:
        return self._runtime.current()

    @property
    def settings(self) -> AdminSettings:
        settings = self.runtime.config.admin
        assert settings is not None
        return settings

    @property
    def held(self) -> HeldMail:
        return self.runtime.held or self._held

    @property
    def metering(self) -> Metering:
        metering = self.runtime.metering
        if metering is None:
            raise Unavailable("quotas are off on this gateway: there is no shared store")
        return metering

    def downstreams(self) -> dict[str, Downstream | None]:
        rt = self.runtime
        return {"inbound": rt.inbound, "outbound": rt.outbound}

    # --- who is asking ------------------------------------------------------------
    def client(self, request: web.Request) -> str:
        remote = request.remote or "-"
        if remote in self.settings.trusted_proxies:
            forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
            try:
                return str(ipaddress.ip_address(forwarded))
            except ValueError:
                return remote
        return remote

    def who(self, request: web.Request, caller: Caller) -> str:
        """The token's name, and the person an SSO proxy in front vouches for."""
        if (request.remote or "") in self.settings.trusted_proxies:
            user = request.headers.get("X-Forwarded-User", "")
            if _FORWARDED_USER.match(user):
                return f"{caller.name} ({user})"
        return caller.name

    async def check_token(self, token: str) -> Caller | None:
        return await self.tokens.check(token, self.settings.tokens)

    def blocked_for(self, request: web.Request) -> float:
        return self.refusals.blocked_for(self.client(request), self.clock())

    async def refused(self, request: web.Request, why: str, caller: Caller | None = None,
                      action: str = "") -> None:
        """A refusal: logged, counted against the address, and (for a change) audited."""
        client = self.client(request)
        self.refusals.add(client, self.clock())
        who = self.who(request, caller) if caller else "-"
        if action:
            await self.audit.record(ts=self.clock(), who=who, role=caller.role if caller else "-",
                                    client=client, action=action, target=request.path,
                                    outcome="refused", detail=why)
        else:
            log.warning("admin: refused %s %s from %s (%s): %s", request.method, request.path,
                        client, who, why)

    async def changed(self, request: web.Request, caller: Caller, action: str, target: str,
                      outcome: str, detail: str = "") -> None:
        await self.audit.record(ts=self.clock(), who=self.who(request, caller), role=caller.role,
                                client=self.client(request), action=action, target=target,
                                outcome=outcome, detail=detail)

    # --- health -------------------------------------------------------------------
    async def health(self) -> dict[str, object]:
        rt = self.runtime
        problems: list[str] = []
        for downstream in (rt.inbound, rt.outbound):
            if downstream is not None:
                problem = await downstream.probe()
                if problem:
                    problems.append(problem)
        suspended = None
        if rt.metering is not None:
            try:
                suspended = len(await rt.metering.store.suspensions())
            except Exception as exc:  # the store is down: say so, never a 500
                problems.append(f"store: {type(exc).__name__}: {exc}")
        return {"ok": not problems, "problems": problems, "suspended_accounts": suspended,
                "quotas": rt.metering is not None}
