"""What a reload rebuilds: the long-lived objects made from sections that apply on
SIGHUP (gateway/reload.py's APPLIED_SECTIONS).

A section that changed gets a new object; an unchanged one keeps the old (its
connections, its caches).  An object replaced here is still used by the
transactions that captured the old Runtime, so it is closed only after
``RETIRE_AFTER`` seconds (or at shutdown, whichever comes first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.accounts.factory import build_source
from gateway.checks.dns import Resolver
from gateway.checks.rspamd import RspamdClient
from gateway.config.directory import Directory
from gateway.config.model import Config
from gateway.metering import Metering
from gateway.ops.notify import Notifier
from gateway.runtime import Runtime
from gateway.store import open_held_store

log = logging.getLogger("portcullis")

# Longer than any transaction may last (limits cap DATA and each command).
RETIRE_AFTER = 600.0


@dataclass
class Rebuilt:
    """The Runtime fields to replace, and the old objects to close later."""

    changes: dict[str, object] = field(default_factory=dict)
    retired: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def rebuild(old: Runtime, config: Config, directory: Directory,
            metering: Metering | None,
            make_notifier: Callable[[Config, Metering], Notifier | None]) -> Rebuilt:
    """The objects ``config`` needs that ``old`` was not built for.  ``make_notifier``
    is serve's (it signs notices with the key store and links to held mail)."""
    out = Rebuilt()
    was = old.config
    if config.accounts != was.accounts:
        out.changes["accounts"] = build_source(config.accounts, directory)
        out.retired.append(old.accounts.close)
    else:
        old.accounts.replace_directory(directory)  # and forgets its cache
    if config.scanner != was.scanner:
        out.changes["scanner"] = (RspamdClient.from_settings(config.scanner, config.hostname)
                                  if config.scanner is not None else None)
        if old.scanner is not None:
            out.retired.append(old.scanner.close)
    # Any rule can hold: the hold store always exists, a new one when `hold:` moved it.
    if config.hold != was.hold:
        out.changes["held"] = open_held_store(config.hold, config.base_dir)
        if old.held is not None:
            out.retired.append(old.held.close)
    if config.notify != was.notify:
        out.changes["notifier"] = make_notifier(config, metering) if metering is not None else None
        if old.notifier is not None:
            out.retired.append(old.notifier.aclose)
    wants_resolver = bool(config.listeners.inbound and config.inbound_checks)
    if wants_resolver and old.resolver is None:
        out.changes["resolver"] = Resolver.from_settings(config.dns)
    elif not wants_resolver and old.resolver is not None:
        # inbound_checks: false: the pipeline skips the checks when there is none.
        out.changes["resolver"] = None
    return out


class Retirement:
    """Closes replaced objects once the transactions that hold them are over."""

    def __init__(self, after: float = RETIRE_AFTER) -> None:
        self.after = after
        self._tasks: set[asyncio.Task] = set()
        self._pending: list[Callable[[], Awaitable[None]]] = []

    def retire(self, closers: list[Callable[[], Awaitable[None]]]) -> None:
        for close in closers:
            self._pending.append(close)
            task = asyncio.get_running_loop().create_task(self._later(close))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _later(self, close: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(self.after)
        if close in self._pending:
            self._pending.remove(close)
            await self._close(close)

    @staticmethod
    async def _close(close: Callable[[], Awaitable[None]]) -> None:
        try:
            await close()
        except Exception as exc:  # closing an old pool must not end anything else
            log.warning("reload: closing a replaced %s failed: %s",
                        getattr(close, "__self__", close).__class__.__name__, exc)

    async def close_all(self) -> None:
        """At shutdown: close what is still waiting, now."""
        for task in list(self._tasks):
            task.cancel()
        pending, self._pending = self._pending, []
        for close in pending:
            with contextlib.suppress(Exception):
                await self._close(close)
