"""The gateway file's ``accounts:`` section: where logins are checked.

    accounts:
      source: sql                 # yaml (default) | dovecot | sql | ldap
      sql: {dsn: ..., query: ...} # the settings of the chosen source, and only those
      cache: {ttl: 300, negative_ttl: 30, max_entries: 100000}
      auth_timeout: 5             # a source slower than this answers 454 4.7.0
      probe_login: postmaster@example.net   # check-config looks this login up

Worked examples for each source are in docs/accounts.md.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Seconds = Annotated[float, Field(gt=0, le=3600)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_address(value: str) -> str:
    """``unix:/path``, ``/path``, ``inet:host:port`` or ``host:port`` (as Postfix writes them)."""
    if value.startswith("/") or value.startswith("unix:/"):
        return value
    rest = value.removeprefix("inet:")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"{value!r} is neither a socket path (unix:/run/dovecot/auth-client) "
            "nor host:port (inet:127.0.0.1:12345)"
        )
    return value


class DovecotSettings(Strict):
    # Dovecot's auth-client listener, as for Postfix's smtpd_sasl_path:
    # `unix:/var/spool/postfix/private/auth` or `inet:10.0.0.5:12345`.
    address: str
    # The service name Dovecot sees (its `%s`): passdb rules can be written for it.
    service: str = "smtp"
    # Tell Dovecot the client's connection is encrypted (submission AUTH only runs
    # after TLS), so `auth_allow_cleartext = no` / `disable_plaintext_auth` does not refuse it.
    secured: bool = True
    # Names of passdb extra fields carrying the customer id and the allowed senders
    # (comma- or space-separated).  Unset: the customer is found from the login's domain.
    customer_field: str | None = None
    senders_field: str | None = None
    connect_timeout: Seconds = 3.0

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _check_address(value)


class SqlSettings(Strict):
    # libpq-style URL: postgresql://portcullis@db.example.net/mail?sslmode=verify-full
    # (a password in it is accepted, but prefer ~/.pgpass or PGPASSWORD).
    dsn: str
    # Written by the operator.  $1 is the login.  Must return the columns
    #   password  the stored hash ({ARGON2ID}, {BLF-CRYPT}, {SHA512-CRYPT}, $2b$, $6$ ...)
    #   customer  the customer id (NULL: found from the login's domain)
    #   senders   text[] or a comma-separated text of addresses / *@domain (NULL: none)
    # and at most one row.
    query: str
    # Optional: which domains the ISP hosts, for the MX (docs/accounts.md).  $1 is
    # the domain (lower-case, no trailing dot); any row means "ours".
    domain_query: str | None = None
    pool_min: Annotated[int, Field(ge=0, le=100)] = 1
    pool_max: Annotated[int, Field(ge=1, le=100)] = 10
    connect_timeout: Seconds = 3.0
    query_timeout: Seconds = 2.0

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str) -> str:
        if not re.match(r"^postgres(ql)?://", value):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        if "$1" not in value:
            raise ValueError("must use $1 for the login (it is passed as a parameter, never pasted in)")
        if "$2" in value:
            raise ValueError("only $1 (the login) is available")
        return value

    @field_validator("domain_query")
    @classmethod
    def _domain_query(cls, value: str | None) -> str | None:
        if value is not None and ("$1" not in value or "$2" in value):
            raise ValueError("must use $1 for the domain, and only $1 (it is passed as a "
                             "parameter, never pasted in)")
        return value

    @model_validator(mode="after")
    def _pool(self) -> SqlSettings:
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min: must not exceed pool_max")
        return self


class LdapSettings(Strict):
    url: str  # ldap://host:389 or ldaps://host:636
    start_tls: bool = False
    # bind: the server checks the password (a simple bind as the user's DN).
    # compare: we read `password_attribute` and verify the hash ourselves.
    mode: Literal["bind", "compare"] = "bind"
    # Either a DN template, `uid={user},ou=people,dc=example,dc=net`
    # ({login} = whole login, {user} = its local part, {domain} = its domain; each
    # DN-escaped, RFC 4514), or a search for the entry (values escaped, RFC 4515).
    user_dn_template: str | None = None
    search_base: str | None = None
    search_filter: str = "(mail={login})"
    # Service account for the search and for reading attributes (compare mode);
    # unset: anonymous.
    bind_dn: str | None = None
    bind_password: str | None = None
    password_attribute: str = "userPassword"
    customer_attribute: str | None = None
    senders_attribute: str | None = None
    # Optional: which domains the ISP hosts, for the MX (docs/accounts.md).  A domain
    # is ours if this filter ({domain} escaped per RFC 4515) finds an entry under
    # domain_base (default: search_base), e.g. `(associatedDomain={domain})`.
    domain_filter: str | None = None
    domain_base: str | None = None
    pool_size: Annotated[int, Field(ge=1, le=100)] = 4
    timeout: Seconds = 3.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^ldaps?://[^/]+/?$", value):
            raise ValueError("must be ldap://host[:port] or ldaps://host[:port]")
        return value

    @model_validator(mode="after")
    def _locate(self) -> LdapSettings:
        if bool(self.user_dn_template) == bool(self.search_base):
            raise ValueError("user_dn_template: give either user_dn_template or search_base, not both")
        if self.mode == "compare" and not self.bind_dn:
            # Reading userPassword anonymously is (rightly) refused by every sane ACL.
            raise ValueError("bind_dn: compare mode reads the hash, which needs a service account")
        if (self.bind_dn is None) != (self.bind_password is None):
            raise ValueError("bind_password: bind_dn and bind_password go together")
        if self.domain_filter is not None:
            if "{domain}" not in self.domain_filter:
                raise ValueError("domain_filter: must contain {domain}")
            if not (self.domain_base or self.search_base):
                raise ValueError("domain_base: domain_filter needs domain_base or search_base")
        return self


class CacheSettings(Strict):
    """As Dovecot's auth cache (auth_cache_ttl, auth_cache_negative_ttl, auth_cache_size)."""

    enabled: bool = True
    # A success is reused for this long (same login, same password).  For sources
    # that only answer yes/no (dovecot, ldap bind) this is also the longest an old
    # password keeps working after a change; sql and ldap compare re-read the stored
    # hash on every AUTH, so a change there takes effect at once (docs/accounts.md).
    ttl: Annotated[float, Field(ge=0, le=86400)] = 300.0
    # A failure is remembered this long: a brute-force loop against one login is
    # answered from memory instead of reaching the database.
    negative_ttl: Annotated[float, Field(ge=0, le=3600)] = 30.0
    max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    # The MX's "is this domain ours?" answers (sql domain_query, ldap domain_filter):
    # a hosted domain is remembered this long, a stranger's this long (a domain added
    # to the database is accepted at most domain_negative_ttl later).
    domain_ttl: Annotated[float, Field(ge=0, le=86400)] = 300.0
    domain_negative_ttl: Annotated[float, Field(ge=0, le=3600)] = 60.0


class AccountsConfig(Strict):
    source: Literal["yaml", "dovecot", "sql", "ldap"] = "yaml"
    dovecot: DovecotSettings | None = None
    sql: SqlSettings | None = None
    ldap: LdapSettings | None = None
    cache: CacheSettings = CacheSettings()
    # The whole AUTH look-up (cache, connection, query, hash) must answer within this;
    # past it the client hears `454 4.7.0` and keeps its saved password.
    auth_timeout: Seconds = 5.0
    # Password hashes checked at once per worker process (argon2id: 64 MiB and ~0.15 s
    # of CPU each); more AUTHs wait in a queue, within their deadline (docs/accounts.md).
    password_checks: Annotated[int, Field(ge=1, le=64)] = 2
    # Customer for a login that neither the source nor the login's domain maps to
    # a customer (a login without @domain); see docs/accounts.md.
    default_customer: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] = "default"
    # check-config looks this login up in the source (no password needed).
    probe_login: str | None = None

    @model_validator(mode="after")
    def _settings_match_source(self) -> AccountsConfig:
        for name in ("dovecot", "sql", "ldap"):
            given = getattr(self, name) is not None
            if name == self.source and not given:
                raise ValueError(f"{name}: source is {name}, so its settings are required")
            if name != self.source and given:
                raise ValueError(f"{name}: settings given but source is {self.source}")
        return self
