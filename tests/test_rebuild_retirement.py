"""What a reload replaced is closed once the transactions holding it are over
(gateway/rebuild.py), or at shutdown, and a failing close ends nothing else."""

from __future__ import annotations

import asyncio

from gateway.rebuild import Retirement


class Pool:
    def __init__(self, fails: bool = False) -> None:
        self.closed = 0
        self.fails = fails

    async def close(self) -> None:
        self.closed += 1
        if self.fails:
            raise ConnectionError("already gone")


def test_a_replaced_object_is_closed_after_the_grace_and_only_once():
    async def scenario() -> tuple[int, int]:
        retired = Retirement(after=0.05)
        pool = Pool()
        retired.retire([pool.close])
        before = pool.closed
        await asyncio.sleep(0.2)
        await retired.close_all()  # already closed: not again
        return before, pool.closed

    assert asyncio.run(scenario()) == (0, 1)


def test_shutdown_closes_what_is_still_waiting_at_once():
    async def scenario() -> list[int]:
        retired = Retirement(after=3600)
        pools = [Pool(), Pool(fails=True), Pool()]
        retired.retire([p.close for p in pools])
        await retired.close_all()
        return [p.closed for p in pools]

    assert asyncio.run(scenario()) == [1, 1, 1]
