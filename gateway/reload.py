"""Hot reload (SIGHUP): which parts of a new configuration take effect at once.

The policy directory, quotas, lockout, compromise, abuse settings and limits are
swapped in atomically; transactions already past MAIL finish under the old ones.
Sections that describe things opened once at start-up (sockets, downstream
pools, the store connection, the resolver) keep their old values until the next
restart, and the operator is told so in the log, one line each.
"""

from __future__ import annotations

from gateway.config.model import Config

# Opened once per process: a change needs a restart.
RESTART_SECTIONS = ("listeners", "downstream", "store", "dns")


def split_reload(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The config to put in force now (``new`` with the restart-only sections of
    ``old``) and the names of the sections whose change waits for a restart."""
    waiting = [name for name in RESTART_SECTIONS
               if name in Config.model_fields and getattr(old, name) != getattr(new, name)]
    if not waiting:
        return new, []
    return new.model_copy(update={name: getattr(old, name) for name in waiting}), waiting
