"""Make aiosmtpd's per-connection start-up cheap.

``SMTP.__init__`` finds its AUTH mechanisms, handler hooks and command methods
with ``inspect.getmembers`` and ``dir()`` on every new connection.  Measured
under smtp-source load that is about half a millisecond per connection, more
than reading and forwarding a 5 KB message.  The answer only depends on the
classes involved (and on instance attributes, which we include), so the names
are cached per class and the attributes looked up on the instance as before:
methods stay bound to the right object.

Installed once by :func:`install`; the module-level names in ``aiosmtpd.smtp``
are the only thing replaced.
"""

from __future__ import annotations

import inspect
from typing import Any

import aiosmtpd.smtp

_names_by_class: dict[type, list[str]] = {}
_auth_names_by_class: dict[type, list[str]] = {}


# aiosmtpd calls ``dir()`` only to pick out these names, so only these are listed.
_HOOK_PREFIXES = ("handle_", "smtp_")


def _names(obj: Any) -> list[str]:
    cls = type(obj)
    names = _names_by_class.get(cls)
    if names is None:
        names = _names_by_class[cls] = [n for n in dir(cls) if n.startswith(_HOOK_PREFIXES)]
    instance = getattr(obj, "__dict__", None)
    if instance:
        extra = [n for n in instance if n.startswith(_HOOK_PREFIXES)]
        if extra:
            return sorted(set(names).union(extra))
    return names


def _getmembers(obj: Any, predicate: Any = None) -> list[tuple[str, Any]]:
    # aiosmtpd keeps only the auth_* members; look up only those.
    cls = type(obj)
    names = _auth_names_by_class.get(cls)
    if names is None:
        names = _auth_names_by_class[cls] = [n for n in dir(cls) if n.startswith("auth_")]
    instance = getattr(obj, "__dict__", None)
    extra = [n for n in instance if n.startswith("auth_")] if instance else None
    if extra:
        names = sorted(set(names).union(extra))
    out = []
    for name in names:
        value = getattr(obj, name)
        if predicate is None or predicate(value):
            out.append((name, value))
    return out


class _InspectWithCachedMembers:
    """``inspect`` as aiosmtpd.smtp sees it: getmembers cached, the rest unchanged."""

    getmembers = staticmethod(_getmembers)

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)


def install() -> None:
    if getattr(aiosmtpd.smtp, "_portcullis_fast_introspection", False):
        return
    aiosmtpd.smtp.inspect = _InspectWithCachedMembers()
    # A module global shadows the builtin for code in that module.
    aiosmtpd.smtp.dir = _names
    aiosmtpd.smtp._portcullis_fast_introspection = True
