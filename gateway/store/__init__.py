"""Shared state behind one interface (``base.Store``): SQLite embedded, Redis for a cluster."""

from __future__ import annotations

from pathlib import Path

from gateway.config.content import HoldSettings
from gateway.config.quota import RedisStoreSettings, SQLiteStoreSettings
from gateway.store.base import Charge, ChargeResult, Event, Store, StoreUnavailable, Suspension
from gateway.store.held import HeldMail

__all__ = ["Charge", "ChargeResult", "Event", "Store", "StoreUnavailable", "Suspension", "open_held_store",
           "open_store"]


def open_held_store(settings: HoldSettings, base_dir: Path = Path(".")) -> HeldMail:
    """Where held mail waits, as the gateway file's ``hold:`` section says: a
    PostgreSQL every gateway reaches (``hold.postgres``), or a directory (one per
    gateway, or one shared by all)."""
    if settings.postgres is not None:
        from gateway.store.held_postgres import PostgresHeldStore

        return PostgresHeldStore(settings.postgres)
    from gateway.store.held import HeldStore

    path = settings.path
    return HeldStore(path if path.is_absolute() else base_dir / path)


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
