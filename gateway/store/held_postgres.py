"""Held mail in PostgreSQL: every gateway behind a balancer lists and releases the
same held messages, with no shared disk (``hold.postgres``, docs/content.md,
"Several gateways").

Why PostgreSQL and not the quota store's Redis: a held message must be durable
before the client hears 250, and a spam run held message by message can be large.
PostgreSQL commits to its write-ahead log and fsyncs it before COMMIT returns
(``synchronous_commit`` on, its default), keeps bytes on disk rather than in
memory, and is what ISPs already run for their mailbox databases (the ``sql``
account source uses the same driver, asyncpg).

One row per message: the record (the same JSON as the file store's first line),
the bytes, and the state.  The claim that keeps two releases of one message from
both sending is one conditional UPDATE (``state = 'held'`` → ``'releasing'``):
whichever gateway's UPDATE commits first gets the row; the other sees none.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import asyncpg

from gateway.message import Buffer
from gateway.store.held import HeldBusy, HeldMail, HeldMessage, HeldNotFound, check_held_id

log = logging.getLogger("portcullis.held")

TABLE = "portcullis_held"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id       text PRIMARY KEY,
    held_at  double precision NOT NULL,
    record   text NOT NULL,
    message  bytea NOT NULL,
    state    text NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'releasing'))
);
CREATE INDEX IF NOT EXISTS {TABLE}_held_at ON {TABLE} (held_at);
"""


class PostgresHeldStore(HeldMail):
    def __init__(self, dsn: str, timeout: float = 10.0):
        self._dsn = dsn
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def _db(self) -> asyncpg.Pool:
        # Opened on first use, in the loop that uses it (the gateway's; a CLI's own).
        async with self._opening:
            if self._pool is None:
                pool = await asyncpg.create_pool(self._dsn, min_size=0, max_size=4,
                                                 command_timeout=self._timeout)
                async with pool.acquire() as conn:
                    # Made by the gateway when its role may (CREATE on the schema);
                    # else the DBA runs _SCHEMA once and grants SELECT, INSERT, UPDATE,
                    # DELETE (docs/content.md, "Several gateways").
                    if await conn.fetchval("SELECT to_regclass($1)", TABLE) is None:
                        await conn.execute(_SCHEMA)
                self._pool = pool
            return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # --- writing -------------------------------------------------------------
    async def _store(self, held: HeldMessage, parts: list[Buffer]) -> None:
        db = await self._db()
        # One copy, for the driver: a held message is rare and bounded by the size limit.
        await db.execute(f"INSERT INTO {TABLE} (id, held_at, record, message) VALUES ($1, $2, $3, $4)",
                         held.id, held.held_at, _record(held), b"".join(parts))

    # --- reading -------------------------------------------------------------
    async def list(self) -> list[HeldMessage]:
        db = await self._db()
        rows = await db.fetch(f"SELECT record, state FROM {TABLE} ORDER BY held_at, id")
        return [HeldMessage.from_record(json.loads(r["record"]), r["state"]) for r in rows]

    async def get(self, held_id: str) -> HeldMessage:
        row = await (await self._db()).fetchrow(
            f"SELECT record, state FROM {TABLE} WHERE id = $1", check_held_id(held_id))
        if row is None:
            raise HeldNotFound(held_id)
        return HeldMessage.from_record(json.loads(row["record"]), row["state"])

    async def message(self, held_id: str) -> bytes:
        row = await (await self._db()).fetchrow(
            f"SELECT message FROM {TABLE} WHERE id = $1", check_held_id(held_id))
        if row is None:
            raise HeldNotFound(held_id)
        return bytes(row["message"])

    async def delete(self, held_id: str, why: str = "deleted by an operator") -> HeldMessage:
        row = await (await self._db()).fetchrow(
            f"DELETE FROM {TABLE} WHERE id = $1 AND state = 'held' RETURNING record",
            check_held_id(held_id))
        if row is None:
            await self.get(held_id)  # HeldNotFound, or there and being released:
            raise HeldBusy(held_id)
        held = HeldMessage.from_record(json.loads(row["record"]), "held")
        log.warning("held %s: %s (%s from <%s> to %s)", held_id, why, held.direction,
                    held.sender, ", ".join(held.recipients))
        return held

    # --- the claim (HeldMail's primitives) -----------------------------------------
    async def _claim_for_release(self, held_id: str, force: bool) -> tuple[HeldMessage, bytes]:
        check_held_id(held_id)
        states = ("held", "releasing") if force else ("held",)
        row = await (await self._db()).fetchrow(
            f"UPDATE {TABLE} SET state = 'releasing' WHERE id = $1 AND state = ANY($2::text[]) "
            "RETURNING record, message", held_id, list(states))
        if row is None:
            await self.get(held_id)  # HeldNotFound, or there and being released:
            raise HeldBusy(held_id)
        return HeldMessage.from_record(json.loads(row["record"]), "releasing"), bytes(row["message"])

    async def _give_back(self, held: HeldMessage, rest: HeldMessage | None = None,
                         message: bytes = b"") -> None:
        db = await self._db()
        if rest is None:
            await db.execute(f"UPDATE {TABLE} SET state = 'held' WHERE id = $1", held.id)
        else:  # fewer recipients than before: the same row, its record rewritten
            await db.execute(f"UPDATE {TABLE} SET state = 'held', record = $2 WHERE id = $1",
                             held.id, _record(rest))

    async def _released(self, held: HeldMessage) -> None:
        await (await self._db()).execute(f"DELETE FROM {TABLE} WHERE id = $1", held.id)


def _record(held: HeldMessage) -> str:
    data: dict[str, Any] = held.record()
    return json.dumps(data, separators=(",", ":"))
