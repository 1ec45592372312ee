"""Shared state behind one interface (``base.Store``): SQLite embedded, Redis for a cluster."""

from __future__ import annotations

from pathlib import Path

from gateway.config.quota import RedisStoreSettings, SQLiteStoreSettings
from gateway.store.base import Charge, ChargeResult, Event, Store, StoreUnavailable, Suspension

__all__ = ["Charge", "ChargeResult", "Event", "Store", "StoreUnavailable", "Suspension", "open_store"]


def open_store(settings: SQLiteStoreSettings | RedisStoreSettings, base_dir: Path = Path(".")) -> Store:
    """The store the gateway file's ``store:`` section names.  Nothing connects
    until the first call, so a store that is down makes mail wait (451), not the
    gateway fail to start."""
    if settings.backend == "redis":
        from gateway.store.redis import RedisStore

        return RedisStore(settings.url, settings.prefix, settings.timeout)
    from gateway.store.sqlite import SQLiteStore

    path = settings.path if settings.path.is_absolute() else base_dir / settings.path
    return SQLiteStore(path, settings.busy_timeout)
