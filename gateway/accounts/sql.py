"""Accounts in the ISP's PostgreSQL, through asyncpg (an asyncio driver: no thread per query).

The operator writes the query; ``$1`` is the login, passed as a bind parameter
(never pasted into the SQL).  Columns by name:

    password   the stored hash: {ARGON2ID}, {BLF-CRYPT}, {SHA512-CRYPT}, $argon2id$, $2b$, $6$
    customer   optional: the customer id (NULL or absent: from the login's domain)
    senders    optional: text[] or comma-separated text of addresses and *@domain

Example (docs/accounts.md)::

    SELECT password, customer, senders FROM mailbox
     WHERE login = lower($1) AND active

The hash is verified here, off the event loop.  The source is :class:`Stamped`:
the cache re-runs the (cheap, indexed) query on every AUTH and reuses a success
only while the stored hash is unchanged, so a new password takes effect at once
and only the expensive verification is saved.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os

import asyncpg

from gateway.accounts.cache import SourceUnavailable
from gateway.accounts.customers import CustomerMap
from gateway.accounts.source import AuthAnswer, Outcome
from gateway.accounts.verifier import PasswordVerifier
from gateway.config.accounts import SqlSettings

log = logging.getLogger(__name__)

_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def redact_dsn(dsn: str) -> str:
    scheme, sep, rest = dsn.partition("://")
    auth, at, host = rest.rpartition("@")
    if at and ":" in auth:
        auth = auth.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{auth}{at}{host}"


class SqlAccounts:
    name = "sql"

    def __init__(self, settings: SqlSettings, customers: CustomerMap,
                 verifier: PasswordVerifier | None = None):
        self._settings = settings
        self._customers = customers
        self._verifier = verifier or PasswordVerifier()
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._key = os.urandom(32)
        self._where = redact_dsn(settings.dsn)

    def replace_directory(self, directory) -> None:
        self._customers.replace_directory(directory)

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                s = self._settings
                # asyncpg reconnects pooled connections by itself once the server is
                # back; only the first creation needs the server to be up.
                self._pool = await asyncpg.create_pool(
                    s.dsn, min_size=s.pool_min, max_size=s.pool_max,
                    timeout=s.connect_timeout, command_timeout=s.query_timeout,
                    # The query runs with a bind parameter, prepared once per connection.
                    statement_cache_size=8,
                )
            return self._pool

    async def _row(self, login: str) -> asyncpg.Record | None:
        """The login's row, None if there is none.  Raises SourceUnavailable."""
        s = self._settings
        try:
            pool = await asyncio.wait_for(self._get_pool(), s.connect_timeout)
            async with pool.acquire(timeout=s.connect_timeout) as conn:
                rows = await conn.fetch(s.query, login, timeout=s.query_timeout)
        except _UNAVAILABLE as exc:
            log.warning("sql accounts at %s unavailable: %s: %s", self._where,
                        type(exc).__name__, " ".join(str(exc).split()))
            raise SourceUnavailable(str(exc)) from None
        if len(rows) > 1:
            # Two rows for one login is a broken query or table; refusing would make
            # the client drop a password that may be right, so it is a temporary failure.
            log.error("sql accounts: the query returned %d rows for one login; it must "
                      "return at most one (add a unique index or a WHERE)", len(rows))
            raise SourceUnavailable("ambiguous login")
        if rows and "password" not in rows[0].keys():
            log.error("sql accounts: the query returns no column named 'password'")
            raise SourceUnavailable("no password column")
        return rows[0] if rows else None

    def lists_domains(self) -> bool:
        return self._settings.domain_query is not None

    async def hosts_domain(self, domain: str) -> bool:
        """``domain_query`` with ``$1`` = the domain: any row means ours."""
        s = self._settings
        assert s.domain_query is not None
        try:
            pool = await asyncio.wait_for(self._get_pool(), s.connect_timeout)
            async with pool.acquire(timeout=s.connect_timeout) as conn:
                row = await conn.fetchrow(s.domain_query, domain, timeout=s.query_timeout)
        except _UNAVAILABLE as exc:
            log.warning("sql accounts at %s unavailable for the domain query: %s: %s",
                        self._where, type(exc).__name__, " ".join(str(exc).split()))
            raise SourceUnavailable(str(exc)) from None
        return row is not None

    async def stamp(self, login: str) -> str | None:
        row = await self._row(login)
        if row is None or row["password"] is None:
            return None
        return hashlib.blake2b(row["password"].encode(), key=self._key, digest_size=16).hexdigest()

    async def authenticate(self, login: str, password: str) -> AuthAnswer:
        try:
            row = await self._row(login)
        except SourceUnavailable:
            return AuthAnswer.tempfail()
        stored = row["password"] if row is not None else None
        # argon2id/bcrypt cost ~100 ms of CPU: off the event loop.  A missing login
        # verifies a dummy hash, so its timing matches a wrong password.
        ok = await self._verifier.verify(stored, password)
        if not ok or row is None:
            return AuthAnswer.invalid()
        keys = row.keys()
        customer = row["customer"] if "customer" in keys else None
        senders = row["senders"] if "senders" in keys else None
        return AuthAnswer(Outcome.OK, self._customers.identity(login, customer, senders))

    async def probe(self, login: str | None = None) -> None:
        """check-config: connect, check the query's columns, run it for ``login``."""
        s = self._settings
        try:
            pool = await asyncio.wait_for(self._get_pool(), s.connect_timeout)
            async with pool.acquire(timeout=s.connect_timeout) as conn:
                statement = await conn.prepare(s.query, timeout=s.query_timeout)
                columns = {a.name for a in statement.get_attributes()}
                if "password" not in columns:
                    raise ValueError(f"the query returns {sorted(columns)}, with no 'password' column")
                if s.domain_query is not None:
                    # A typo in the domain query would defer every unclaimed domain's mail.
                    try:
                        await conn.prepare(s.domain_query, timeout=s.query_timeout)
                    except asyncpg.PostgresError as exc:
                        raise ValueError(f"domain_query: {' '.join(str(exc).split())}") from None
                if login is not None:
                    rows = await statement.fetch(login, timeout=s.query_timeout)
                    if len(rows) != 1:
                        raise ValueError(f"the query returned {len(rows)} rows for the probe "
                                         f"login {login!r}; expected exactly one")
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(f"{self._where}: {detail}") from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, OSError):
                pool.terminate()
