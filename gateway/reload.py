"""Hot reload (SIGHUP): which parts of a new configuration take effect at once.

The policy directory, quotas, lockout, compromise, abuse settings and limits are
swapped in atomically; transactions already past MAIL finish under the old ones.
Sections that describe things opened once at start-up (sockets, downstream
pools, the store connection, the resolver) keep their old values until the next
restart, and the operator is told so in the log, one line each.

A reload logs the customer, domain and account counts before and after, names the
customers it drops, and is refused when it would drop more than
``reload.max_customer_drop`` of them (:func:`decide_customer_drop`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gateway.config.directory import Directory
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


@dataclass(frozen=True)
class Counts:
    customers: int
    domains: int
    accounts: int

    def __str__(self) -> str:
        return f"{self.customers} customers, {self.domains} domains, {self.accounts} accounts"


def directory_counts(directory: Directory) -> Counts:
    return Counts(len(directory.customers), len(directory.domains), len(directory.accounts))


@dataclass(frozen=True)
class CustomerDrop:
    """The customers in force that a new configuration leaves out, and whether that
    is more than ``reload.max_customer_drop`` allows."""

    dropped: tuple[str, ...]
    of: int  # customers in force
    refused: bool

    @property
    def share(self) -> float:
        return len(self.dropped) / self.of if self.of else 0.0

    def describe(self, names: int = 20) -> str:
        """``3 of 4 customers (75%): acme, beta, gamma`` (the first ``names`` names)."""
        shown = ", ".join(self.dropped[:names])
        more = f" and {len(self.dropped) - names} more" if len(self.dropped) > names else ""
        return f"{len(self.dropped)} of {self.of} customers ({self.share:.0%}): {shown}{more}"


def decide_customer_drop(in_force: Collection[str], new: Collection[str],
                         max_drop: float) -> CustomerDrop:
    """Issue 14: a policy file that vanished (or became a directory) silently turned its
    customer's mail into 550s; a reload says who it drops, and refuses past the share."""
    new_set = new if isinstance(new, set | frozenset | Mapping) else set(new)
    dropped = tuple(sorted(c for c in in_force if c not in new_set))
    share = len(dropped) / len(in_force) if in_force else 0.0
    return CustomerDrop(dropped, len(in_force), share > max_drop)
