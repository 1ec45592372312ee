"""Two (or more) OS processes started at one signal, for tests that race them on a
shared store: each runs ``target(*args, start, out)`` and puts its result on ``out``."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable


def race(target: Callable, args: tuple, processes: int = 2, timeout: float = 60.0) -> list:
    """Start ``processes`` spawned processes, release them together, and return their
    results; every process is joined (killed if it hangs) and must exit 0."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        start.set()
        results = [out.get(timeout=timeout) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    return results
