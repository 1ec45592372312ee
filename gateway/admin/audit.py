"""The audit journal: every change made through the admin API or the console, and
every refused attempt at one, as one JSON line (who, when, what, from where, outcome).

An append-only file: each entry is one ``write`` to a file opened with O_APPEND, so
lines from several processes never interleave.  Written and read off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger("portcullis.admin.audit")

# Lines read back for the API and the console (the newest).
MAX_READ = 1000


class AuditJournal:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def record(self, *, ts: float, who: str, role: str, client: str, action: str,
                     target: str, outcome: str, detail: str = "") -> dict[str, Any]:
        entry = {"ts": ts, "who": who, "role": role, "from": client, "action": action,
                 "target": target, "outcome": outcome, "detail": detail}
        # json.dumps escapes line breaks: one entry is always one line.
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:  # said, never lost silently
            log.error("audit: cannot write %s: %s; entry: %s", self.path, exc, line.decode().strip())
        log.info("admin %s %s by %s (%s) from %s: %s %s", action, target, who, role, client,
                 outcome, detail)
        return entry

    def _append(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first."""
        return await asyncio.to_thread(self._recent, max(1, min(limit, MAX_READ)))

    def _recent(self, limit: int) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = deque(f, maxlen=limit)
        except FileNotFoundError:
            return []
        out = []
        for line in reversed(lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a full disk: skip it, keep the rest
        return out
