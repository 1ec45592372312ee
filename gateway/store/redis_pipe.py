"""One pipelined Redis connection for the store's Lua scripts (every message runs two).

redis-py checks a connection out of its pool for each call, wraps each read in a
timeout context and goes through its generic command layer: about 46 us of this
process's CPU a call (a trivial EVALSHA, 20 tasks), and a submitted message makes
two (Store.meter at RCPT and after DATA).  Here each call
is written at once on one shared connection and answered in order (Redis answers
one connection's commands in the order it read them), the replies parsed by
hiredis as the bytes arrive; concurrent calls share the socket's reads and writes.

As RedisStore's pooled client: no retry (a script whose answer was lost may have
run, and must not run twice).  A call left unanswered for ``timeout``, or a lost
connection, fails every call waiting on it, and the next call connects anew.
Plain TCP and unix sockets only: RedisStore keeps redis-py for rediss:// (TLS).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ResponseError


def speaks_plainly(url: str) -> bool:
    """Whether the URL is one this connection can open (not TLS)."""
    return "connection_class" not in parse_url(url) or url.startswith("unix://")


class _Replies(asyncio.Protocol):
    """Hands each reply to the oldest call still waiting."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiting: deque[asyncio.Future] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.fail(ConnectionError(f"Redis reply out of step: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))

    def fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class ScriptPipe:
    def __init__(self, url: str, timeout: float):
        self._where = parse_url(url)
        self._timeout = timeout
        self._replies: _Replies | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None

    async def _open(self) -> _Replies:
        loop = asyncio.get_running_loop()
        current = self._replies
        if current is not None and current.lost is None and self._loop is loop:
            return current
        if self._loop is not loop:  # a new event loop (tests run several): start over
            self._loop, self._connecting, self._replies = loop, asyncio.Lock(), None
        assert self._connecting is not None
        async with self._connecting:
            current = self._replies
            if current is not None and current.lost is None:
                return current
            where = self._where
            if "path" in where:
                connect = loop.create_unix_connection(_Replies, where["path"])
            else:
                connect = loop.create_connection(_Replies, where.get("host", "localhost"),
                                                 where.get("port", 6379))
            _, replies = await asyncio.wait_for(connect, self._timeout)
            try:
                if where.get("password"):
                    auth = [where["username"]] if where.get("username") else []
                    await self._ask(replies, ["AUTH", *auth, where["password"]])
                if where.get("db"):
                    await self._ask(replies, ["SELECT", str(where["db"])])
            except BaseException:
                replies.fail(ConnectionError("Redis connection setup failed"))
                raise
            self._replies = replies
            return replies

    async def _ask(self, replies: _Replies, command: list[str | bytes]) -> Any:
        if replies.lost is not None:
            raise replies.lost
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        replies.waiting.append(waiter)
        assert replies.transport is not None
        # Written at once, not gathered for one send a turn of the event loop: that
        # saved a system call a command but left redis-server idle while this
        # process prepared the next batch, and each idle while the other worked
        # (bench/quota.py: 4% less CPU, 25-35% fewer messages a second).
        replies.transport.write(hiredis.pack_command(tuple(command)))
        # One timer, not asyncio.wait_for (a task and a timeout context a call).
        timer = loop.call_later(self._timeout, replies.fail,
                                TimeoutError(f"Redis did not answer within {self._timeout:g} s"))
        try:
            reply = await waiter
        finally:
            timer.cancel()
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def run_script(self, sha: str, source: str, keys: list[str], args: list[str | bytes]) -> Any:
        """EVALSHA; the script is loaded first if this Redis does not know it (NOSCRIPT:
        it did not run, so running it after the load runs it once)."""
        replies = await self._open()
        command = ["EVALSHA", sha, str(len(keys)), *keys, *args]
        try:
            return await self._ask(replies, command)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._ask(replies, ["SCRIPT", "LOAD", source])
        return await self._ask(replies, command)

    def close(self) -> None:
        if self._replies is not None and self._replies.transport is not None:
            try:
                self._replies.transport.close()
            except RuntimeError:  # its event loop is already closed
                pass
        self._replies = None
