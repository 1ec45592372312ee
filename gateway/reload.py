"""Hot reload (SIGHUP): which parts of a new configuration take effect at once.

Every section of the gateway file is in exactly one of three places here:

- ``APPLIED_SECTIONS``: swapped in atomically, and what they configure is rebuilt
  (gateway/rebuild.py: the account source, the rspamd client, the hold store, the
  notifier, the resolver when ``inbound_checks`` is turned on); transactions
  already past MAIL finish under the old ones.
- ``RESTART_SECTIONS``: they describe things opened once at start-up (sockets,
  downstream pools, the store connection, the resolver, the hostname every one of
  them was made with); their old values stay until the next restart.
- ``RESTART_FIELDS``: sections applied on reload except these fields (the HTTP and
  admin listeners' sockets and what was built with them).

A reload logs, one line each, the changed sections that need a restart, and in one
line the changed sections it applied.

A reload logs the customer, domain and account counts before and after, names the
customers it drops, and is refused when it would drop more than
``reload.max_customer_drop`` of them (:func:`decide_customer_drop`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gateway.config.directory import Directory
from gateway.config.model import Config

# Opened once per process: a change needs a restart.  The hostname too: the
# downstream pools greet with it, the banner and Received carry it, and a
# listener's development certificate names it.
RESTART_SECTIONS = ("hostname", "listeners", "downstream", "store", "dns")

# Applied on reload, except these fields (a socket, a TLS context, a journal or
# counters made when the server started).  Turning the section on or off needs a
# restart too.
RESTART_FIELDS: dict[str, tuple[str, ...]] = {
    "http": ("address", "port", "tls", "readiness_timeout", "metrics_dir"),
    "admin": ("address", "port", "tls", "audit_log", "session_minutes",
              "max_failures_per_minute"),
}

# Taken from the new file on every reload.  ``base_dir`` is where the file is.
APPLIED_SECTIONS = (
    "policy_dir", "limits", "quotas", "lockout", "compromise", "abuse", "accounts", "dkim",
    "scanner", "hold", "notify", "publish", "inbound_checks", "screening", "authserv_id",
    "default_policy", "arc_seal", "reload", "base_dir", *RESTART_FIELDS,
)


def changed_sections(old: Config, new: Config) -> list[str]:
    """The sections of the gateway file whose values differ, in file order."""
    return [name for name in Config.model_fields if getattr(old, name) != getattr(new, name)]


def split_reload(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The config to put in force now (``new`` with the restart-only parts of
    ``old``) and what changed but waits for a restart (``listeners``, ``http.port``)."""
    waiting: list[str] = []
    keep: dict[str, object] = {}
    for name in RESTART_SECTIONS:
        if getattr(old, name) != getattr(new, name):
            waiting.append(name)
            keep[name] = getattr(old, name)
    for name, fields in RESTART_FIELDS.items():
        was, now = getattr(old, name), getattr(new, name)
        if was == now:
            continue
        if was is None or now is None:
            waiting.append(name)
            keep[name] = was
            continue
        moved = [f for f in fields if getattr(was, f) != getattr(now, f)]
        if moved:
            waiting.extend(f"{name}.{f}" for f in moved)
            keep[name] = now.model_copy(update={f: getattr(was, f) for f in moved})
    if not keep:
        return new, []
    return new.model_copy(update=keep), waiting


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
