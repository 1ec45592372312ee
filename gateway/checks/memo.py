"""Results remembered by the values a sender repeats, up to a size.

Inbound checks redo per message work that depends only on values a sender
sends again and again (DKIM tags, key records, names).  Such pure functions
are remembered with an LRU cache, but their arguments come from senders: a
call whose ``bytes`` arguments add up to more than ``max_octets`` is computed
and not kept, so the memo cannot become a place to park megabytes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

MAX_OCTETS = 512  # DKIM tags and names of ordinary size are far shorter


def remembered(maxsize: int, max_octets: int = MAX_OCTETS) -> Callable[[Callable], Any]:
    """Decorate a pure function of ``bytes`` (or None) arguments, passed by position."""
    def decorate(compute: Callable) -> Any:
        memo = functools.lru_cache(maxsize=maxsize)(compute)

        @functools.wraps(compute)
        def call(*args: bytes | None) -> Any:
            if sum(map(len, filter(None, args))) > max_octets:
                return compute(*args)  # too big to keep
            return memo(*args)

        call.cache_info = memo.cache_info  # type: ignore[attr-defined]
        return call
    return decorate
