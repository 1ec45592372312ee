"""Both store backends behind one pytest parameter, for tests that must hold for each.

    from tests.support.redis_server import redis_server  # noqa: F401
    from tests.support.stores import any_store  # noqa: F401

    def test_something(any_store):
        async def body(store): ...
        any_store.run(body)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from gateway.store.base import Store
from gateway.store.redis import RedisStore
from gateway.store.sqlite import SQLiteStore

T = TypeVar("T")


class Backend:
    def __init__(self, name: str, make: Callable[[], Store]):
        self.name = name
        self.make = make

    def run(self, body: Callable[[Store], Awaitable[T]]) -> T:
        """Open a fresh client on the shared state, run ``body``, close it."""

        async def main() -> T:
            store = self.make()
            try:
                return await body(store)
            finally:
                await store.close()

        return asyncio.run(main())


def sqlite_backend(path: Path) -> Backend:
    return Backend("sqlite", lambda: SQLiteStore(path))


@pytest.fixture(params=["sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
        return Backend("redis", lambda: RedisStore(server.url, prefix="test:"))
    return sqlite_backend(tmp_path / "state.db")
