"""Accounts in the ISP's LDAP directory, through bonsai (libldap's asynchronous API on asyncio).

Two ways to check a password (``mode``):

* ``bind``: a simple bind as the user's DN with the password given; the
  directory decides (its own hash formats and password policy apply).  One short
  connection per look-up, since a bind changes a connection's identity.
* ``compare``: the service account reads ``password_attribute`` and the hash is
  verified here ({CRYPT}$6$, {SHA512-CRYPT}, {BLF-CRYPT}, {ARGON2ID}, ...).  This
  source is :class:`Stamped`, so a changed hash is never accepted from the cache.

The user's DN comes from ``user_dn_template`` (values escaped per RFC 4514) or from
a search under ``search_base`` with ``search_filter`` (values escaped per RFC 4515).
The customer and allowed senders come from ``customer_attribute`` and
``senders_attribute`` of the user's entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass

import bonsai
from bonsai.errors import AuthenticationError, LDAPError, NoSuchObjectError

from gateway.accounts.cache import SourceUnavailable
from gateway.accounts.customers import CustomerMap
from gateway.accounts.source import AuthAnswer, Outcome
from gateway.accounts.verifier import PasswordVerifier
from gateway.config.accounts import LdapSettings

log = logging.getLogger(__name__)

# What libldap reports for a server that is away, slow, or refusing us for now.
_UNAVAILABLE = (LDAPError, OSError, TimeoutError)


@dataclass(frozen=True)
class Entry:
    dn: str
    attrs: dict[str, list]

    def first(self, name: str | None) -> str | None:
        if not name:
            return None
        values = self.attrs.get(name) or []
        value = values[0] if values else None
        return value.decode() if isinstance(value, bytes) else value

    def all(self, name: str | None) -> list[str]:
        if not name:
            return []
        return [v.decode() if isinstance(v, bytes) else str(v) for v in self.attrs.get(name) or []]


def _lower_keys(entry) -> dict[str, list]:
    # LDAP attribute names are case-insensitive (RFC 4512 §2.5).
    return {str(k).lower(): list(v) for k, v in entry.items() if k != "dn"}


def user_dn(template: str, login: str) -> str:
    user, _, domain = login.partition("@")
    esc = bonsai.escape_attribute_value
    return template.format(login=esc(login), user=esc(user), domain=esc(domain))


def user_filter(template: str, login: str) -> str:
    user, _, domain = login.partition("@")
    esc = bonsai.escape_filter_exp
    return template.format(login=esc(login), user=esc(user), domain=esc(domain))


def stored_hash(value: str | None) -> str | None:
    """OpenLDAP's ``{CRYPT}`` is crypt(3): the rest is a $6$/$2b$ string passwords.py knows."""
    if value is not None and value[:7].upper() == "{CRYPT}":
        return value[7:]
    return value


class _ServicePool:
    """Connections bound as the service account (or anonymous), reused between look-ups."""

    def __init__(self, settings: LdapSettings):
        self._settings = settings
        self._idle: list = []
        self._slots = asyncio.Semaphore(settings.pool_size)

    def client(self, dn: str | None, password: str | None) -> bonsai.LDAPClient:
        s = self._settings
        client = bonsai.LDAPClient(s.url, tls=s.start_tls)
        if dn is not None:
            client.set_credentials("SIMPLE", user=dn, password=password)
        return client

    async def search(self, base: str, scope: bonsai.LDAPSearchScope, filter_exp: str,
                     attrs: list[str]) -> list:
        s = self._settings
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            try:
                if conn is None or conn.closed:
                    conn = await self.client(s.bind_dn, s.bind_password).connect(
                        is_async=True, timeout=s.timeout)
                found = await conn.search(base, scope, filter_exp, attrs, timeout=s.timeout)
            except NoSuchObjectError:
                self._idle.append(conn)
                return []
            except BaseException:
                if conn is not None:
                    conn.close()  # a broken or cancelled connection is not reused
                raise
            self._idle.append(conn)
            return found

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class _LdapBase:
    name = "ldap"

    def __init__(self, settings: LdapSettings, customers: CustomerMap,
                 verifier: PasswordVerifier | None = None):
        self._settings = settings
        self._customers = customers
        self._verifier = verifier or PasswordVerifier()
        self._pool = _ServicePool(settings)
        self._attrs = [a for a in (settings.customer_attribute, settings.senders_attribute) if a]

    def replace_directory(self, directory) -> None:
        self._customers.replace_directory(directory)

    @staticmethod
    def _usable(login: str) -> bool:
        return bool(login) and "\0" not in login and len(login) <= 320

    async def _find(self, login: str, attrs: list[str]) -> Entry | None:
        """The user's entry, None if none.  Raises SourceUnavailable."""
        s = self._settings
        try:
            if s.user_dn_template:
                found = await self._pool.search(user_dn(s.user_dn_template, login),
                                                bonsai.LDAPSearchScope.BASE, "(objectClass=*)", attrs)
            else:
                found = await self._pool.search(s.search_base, bonsai.LDAPSearchScope.SUBTREE,
                                                user_filter(s.search_filter, login), attrs)
        except _UNAVAILABLE as exc:
            log.warning("ldap accounts at %s unavailable: %s: %s", s.url, type(exc).__name__, exc)
            raise SourceUnavailable(str(exc)) from None
        if len(found) > 1:
            log.error("ldap accounts: %d entries match one login; search_filter must match "
                      "at most one", len(found))
            raise SourceUnavailable("ambiguous login")
        if not found:
            return None
        return Entry(str(found[0].dn), _lower_keys(found[0]))

    def _identity(self, login: str, entry: Entry | None):
        s = self._settings
        customer = entry.first(s.customer_attribute and s.customer_attribute.lower()) if entry else None
        senders = entry.all(s.senders_attribute and s.senders_attribute.lower()) if entry else []
        return self._customers.identity(login, customer, senders)

    def lists_domains(self) -> bool:
        return self._settings.domain_filter is not None

    async def hosts_domain(self, domain: str) -> bool:
        """Any entry matching ``domain_filter`` under ``domain_base`` means ours.
        The domain is escaped per RFC 4515 (a ``*`` in it must not widen the filter)."""
        s = self._settings
        assert s.domain_filter is not None
        base = s.domain_base or s.search_base
        assert base is not None
        filter_exp = s.domain_filter.format(domain=bonsai.escape_filter_exp(domain))
        try:
            # "1.1": no attributes (RFC 4511 §4.5.1.8); one entry is enough to say yes.
            found = await self._pool.search(base, bonsai.LDAPSearchScope.SUBTREE, filter_exp, ["1.1"])
        except _UNAVAILABLE as exc:
            log.warning("ldap accounts at %s unavailable for the domain search: %s: %s",
                        s.url, type(exc).__name__, exc)
            raise SourceUnavailable(str(exc)) from None
        return bool(found)

    async def probe(self, login: str | None = None) -> None:
        """check-config: bind as the service account and find ``login`` (or the base)."""
        s = self._settings
        try:
            if login is not None:
                entry = await self._find(login, self._attrs)
                if entry is None:
                    raise ValueError(f"probe login {login!r} not found")
            elif s.search_base:
                await self._pool.search(s.search_base, bonsai.LDAPSearchScope.BASE,
                                        "(objectClass=*)", ["1.1"])
            else:
                conn = await self._pool.client(s.bind_dn, s.bind_password).connect(
                    is_async=True, timeout=s.timeout)
                conn.close()
            if s.domain_filter is not None:
                # A filter the server refuses would defer every unclaimed domain's mail.
                try:
                    await self.hosts_domain("probe.invalid")
                except SourceUnavailable as exc:
                    raise ValueError(f"domain_filter: {exc}") from None
        except SourceUnavailable as exc:
            raise ValueError(f"{s.url}: {exc}") from None
        except _UNAVAILABLE as exc:
            raise ValueError(f"{s.url}: {exc}") from None

    async def close(self) -> None:
        self._pool.close()


class LdapBindAccounts(_LdapBase):
    """The directory checks the password: a simple bind as the user."""

    async def authenticate(self, login: str, password: str) -> AuthAnswer:
        # RFC 4513 §5.1.2: a simple bind with an empty password is an *unauthenticated*
        # bind, which many servers answer with success.  Never let one through.
        if not password or not self._usable(login):
            return AuthAnswer.invalid()
        s = self._settings
        entry: Entry | None = None
        try:
            if s.user_dn_template:
                dn = user_dn(s.user_dn_template, login)
            else:
                entry = await self._find(login, self._attrs)
                if entry is None:
                    return AuthAnswer.invalid()
                dn = entry.dn
        except SourceUnavailable:
            return AuthAnswer.tempfail()
        try:
            conn = await self._pool.client(dn, password).connect(is_async=True, timeout=s.timeout)
        except AuthenticationError:
            return AuthAnswer.invalid()
        except _UNAVAILABLE as exc:
            log.warning("ldap accounts at %s: bind failed: %s: %s", s.url, type(exc).__name__, exc)
            return AuthAnswer.tempfail()
        try:
            if entry is None and self._attrs:
                # With a DN template, read the attributes as the user just bound.
                found = await conn.search(dn, bonsai.LDAPSearchScope.BASE, "(objectClass=*)",
                                          self._attrs, timeout=s.timeout)
                entry = Entry(dn, _lower_keys(found[0])) if found else None
        except _UNAVAILABLE as exc:
            log.warning("ldap accounts at %s: reading %s failed: %s", s.url, dn, exc)
            return AuthAnswer.tempfail()
        finally:
            conn.close()
        return AuthAnswer(Outcome.OK, self._identity(login, entry))


class LdapCompareAccounts(_LdapBase):
    """We check the password against the hash in ``password_attribute``."""

    def __init__(self, settings: LdapSettings, customers: CustomerMap,
                 verifier: PasswordVerifier | None = None):
        super().__init__(settings, customers, verifier)
        self._key = os.urandom(32)
        self._read = [settings.password_attribute, *self._attrs]

    async def stamp(self, login: str) -> str | None:
        if not self._usable(login):
            return None
        entry = await self._find(login, self._read)
        value = entry.first(self._settings.password_attribute.lower()) if entry else None
        if value is None:
            return None
        return hashlib.blake2b(value.encode(), key=self._key, digest_size=16).hexdigest()

    async def authenticate(self, login: str, password: str) -> AuthAnswer:
        if not self._usable(login):
            return AuthAnswer.invalid()
        try:
            entry = await self._find(login, self._read)
        except SourceUnavailable:
            return AuthAnswer.tempfail()
        stored = stored_hash(entry.first(self._settings.password_attribute.lower())) if entry else None
        ok = await self._verifier.verify(stored, password)
        if not ok or entry is None:
            return AuthAnswer.invalid()
        return AuthAnswer(Outcome.OK, self._identity(login, entry))


def ldap_source(settings: LdapSettings, customers: CustomerMap,
                verifier: PasswordVerifier | None = None) -> LdapBindAccounts | LdapCompareAccounts:
    if settings.mode == "compare":
        return LdapCompareAccounts(settings, customers, verifier)
    return LdapBindAccounts(settings, customers, verifier)
