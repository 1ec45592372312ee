"""Build the configured account source, and probe it for check-config.

What the submission handler gets is always::

    Deadline(CachedSource(<yaml | dovecot | sql | ldap>))   # CachedSource if cache.enabled

``Deadline`` is the fault boundary: whatever the source does (hangs, raises, loses
its connection), ``authenticate`` returns within ``auth_timeout`` and turns every
fault into TEMPFAIL (``454 4.7.0``, RFC 4954 §6): never OK, and never INVALID,
which would make mail clients throw away a saved password.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.accounts.cache import CachedSource, Clock
from gateway.accounts.customers import CustomerMap
from gateway.accounts.hosted_domains import DomainLister, HostedDomains
from gateway.accounts.source import AccountSource, AuthAnswer, Outcome
from gateway.accounts.verifier import PasswordVerifier
from gateway.config.accounts import AccountsConfig
from gateway.config.directory import Directory

log = logging.getLogger(__name__)


class Deadline:
    """Any source, answering within ``timeout`` and never raising."""

    def __init__(self, source: AccountSource, timeout: float,
                 domains: HostedDomains | None = None):
        self.source = source
        self.name = source.name
        self._timeout = timeout
        self._domains = domains

    async def hosts_domain(self, domain: str) -> bool | None:
        """The MX's fact for a domain no policy file claims: True (the source hosts
        it), False (it does not, or the source cannot list domains), None (the source
        cannot tell now).  Cached and time-bounded (accounts/hosted_domains.py)."""
        if self._domains is None:
            return False
        return await self._domains.hosts(domain)

    async def authenticate(self, login: str, password: str) -> AuthAnswer:
        try:
            answer = await asyncio.wait_for(self.source.authenticate(login, password), self._timeout)
        except TimeoutError:
            log.warning("account source %s did not answer within %.1f s: temporary failure",
                        self.name, self._timeout)
            return AuthAnswer.tempfail()
        except Exception as exc:  # a crash is a fault of ours, not a wrong password
            log.error("account source %s failed: %s: %s", self.name, type(exc).__name__, exc)
            return AuthAnswer.tempfail()
        if answer.outcome is Outcome.OK and answer.identity is None:
            log.error("account source %s said OK without an identity", self.name)
            return AuthAnswer.tempfail()
        return answer

    def known_good(self, login: str, password: str) -> bool:
        """The cache holds this very login and password as right (no hash to check)."""
        known = getattr(self.source, "known_good", None)
        return bool(known is not None and known(login, password))

    def replace_directory(self, directory: Directory) -> None:
        replace = getattr(self.source, "replace_directory", None)
        if replace is not None:
            replace(directory)
        if self._domains is not None:
            self._domains.forget()

    async def close(self) -> None:
        await self.source.close()


def build_backend(config: AccountsConfig, directory: Directory,
                  verifier: PasswordVerifier | None = None) -> AccountSource:
    """The bare source named by ``config.source`` (no cache, no deadline)."""
    verifier = verifier or PasswordVerifier(config.password_checks)
    customers = CustomerMap(directory, config.default_customer)
    if config.source == "dovecot":
        from gateway.accounts.dovecot import DovecotAuth

        assert config.dovecot is not None
        return DovecotAuth(config.dovecot, customers)
    if config.source == "sql":
        from gateway.accounts.sql import SqlAccounts

        assert config.sql is not None
        return SqlAccounts(config.sql, customers, verifier)
    if config.source == "ldap":
        from gateway.accounts.ldap import ldap_source

        assert config.ldap is not None
        return ldap_source(config.ldap, customers, verifier)
    from gateway.accounts.yaml_source import YamlAccounts

    return YamlAccounts(directory, verifier)


def build_source(config: AccountsConfig, directory: Directory, *,
                 verifier: PasswordVerifier | None = None, clock: Clock = time.monotonic) -> Deadline:
    """The source the submission handler calls: cached (if enabled) and time-bounded.

    Call ``replace_directory(new)`` on it at hot reload; ``await close()`` at shutdown.
    """
    source = build_backend(config, directory, verifier)
    domains = None
    if isinstance(source, DomainLister) and source.lists_domains():
        cache = config.cache
        on = cache.enabled
        domains = HostedDomains(source, ttl=cache.domain_ttl if on else 0,
                                negative_ttl=cache.domain_negative_ttl if on else 0,
                                max_entries=cache.max_entries, timeout=config.auth_timeout,
                                clock=clock)
    if config.cache.enabled:
        source = CachedSource(source, ttl=config.cache.ttl, negative_ttl=config.cache.negative_ttl,
                              max_entries=config.cache.max_entries, clock=clock)
    return Deadline(source, config.auth_timeout, domains)


async def probe(config: AccountsConfig, directory: Directory | None = None) -> list[str]:
    """check-config: connect to the configured source (and look up ``probe_login``).

    Returns one line per problem, empty when the source answers.  Never raises.
    """
    if config.source == "yaml":
        return []
    backend = build_backend(config, directory or Directory())
    field = f"accounts.{config.source}"
    try:
        await asyncio.wait_for(backend.probe(config.probe_login), config.auth_timeout)  # type: ignore[attr-defined]
    except TimeoutError:
        return [f"{field}: no answer within auth_timeout ({config.auth_timeout:g} s): "
                "is the server up and reachable from here?"]
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return [f"{field}: {reason}"]
    finally:
        try:
            await backend.close()
        except Exception:  # noqa: S110 - closing a broken source must not hide the report
            pass
    return []
