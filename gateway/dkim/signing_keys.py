"""The key store a gateway signs with, loaded and checked against the policies.

Built once at start-up and at each reload (gateway/serve.py), never by the
configuration loader: config/ holds settings, this module turns them into the
one :class:`KeyStore` of a process.  :func:`check_signing_keys` is the
``check-config`` rule "signing asked for without a usable key": unsigned mail
must never leave by accident.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from gateway.config.directory import Directory
from gateway.config.dkim import DkimPolicy
from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.load import Loaded, load_config
from gateway.config.model import Config
from gateway.config.policy_cache import PolicyCache
from gateway.dkim.keystore import KeyStore


def load_with_keys(path: str | Path, *, policy_cache: PolicyCache | None = None
                   ) -> tuple[Loaded, KeyStore | None]:
    """The settings (gateway/config/load.py) and the key store they sign with; raise
    ConfigErrors listing every problem, of the files first, then of the keys."""
    loaded = load_config(path, policy_cache=policy_cache)
    return loaded, load_signing_keys(loaded.config, loaded.directory)


def load_signing_keys(config: Config, directory: Directory) -> KeyStore | None:
    """The key store when a submission listener signs outbound mail (None without one);
    ConfigErrors for every domain signed by policy without a usable key."""
    sealing = config.arc_seal is not None and config.listeners.inbound is not None
    if not (config.listeners.submission or config.listeners.submissions or sealing):
        return None
    store = KeyStore.load(config.dkim.keys_dir, config.dkim.publish_grace_days)
    if sealing:
        assert config.arc_seal is not None
        errors = check_sealing_key(store, config.arc_seal.domain, time.time())
        if errors:
            raise ConfigErrors(errors)
    customers = [(directory.files.get(c, c), p.domains, p.dkim)
                 for c, p in directory.customers.items()]
    if any(dkim.signed_domains(domains) for _, domains, dkim in customers):
        errors = check_signing_keys(store, customers, time.time())
        if errors:
            raise ConfigErrors(errors)
    return store


def check_sealing_key(store: KeyStore, domain: str, now: float) -> list[ConfigError]:
    """``check-config``: ``arc_seal.domain`` has an RSA key (RFC 8617 seals are checked
    as rsa-sha256) that is active now or will be (a rotation in progress)."""
    rsa = [s for s in store.selectors(domain) if s.algorithm == "rsa-sha256"]
    if any(s.state(now, store.grace) == "active" for s in rsa):
        return []
    where = str(store.keys_dir / domain)
    if not rsa:
        return [*store.errors, ConfigError(
            where, "arc_seal.domain", f"no RSA key to seal with; make one with `portcullis keys "
            f"generate {domain} --selector NAME --algorithm rsa` and publish its record")]
    states = ", ".join(f"{s.selector} {s.state(now, store.grace)}" for s in rsa)
    return [*store.errors, ConfigError(where, "arc_seal.domain", f"no active RSA key now ({states})")]


def check_signing_keys(
    store: KeyStore,
    customers: Iterable[tuple[str, tuple[str, ...], DkimPolicy]],
    now: float,
) -> list[ConfigError]:
    """``check-config``: every domain a policy signs has a usable key right now.

    ``customers`` is ``(policy file, owned domains, dkim policy)`` per customer.
    """
    errors: list[ConfigError] = []
    keys_needed = False
    for file, domains, policy in customers:
        owned = frozenset(domains)  # asked once per signed domain: a set, not the tuple
        for i, domain in enumerate(policy.signed_domains(domains)):
            field = "dkim.sign" if policy.sign == "all" else f"dkim.sign[{i}]"
            if domain not in owned:
                errors.append(ConfigError(file, field, f"{domain} is not one of this customer's domains"))
                continue
            if policy.signing_settings(domain).missing_key == "send-unsigned":
                continue  # the customer chose unsigned mail over deferred mail for this domain
            keys_needed = True
            selectors = store.selectors(domain)
            if not selectors:
                errors.append(ConfigError(
                    file, field,
                    f"{domain} is signed but {store.keys_dir / domain} holds no key; "
                    f"make one with `portcullis keys generate {domain} --selector NAME`",
                ))
            elif not store.active(domain, now):
                states = ", ".join(f"{s.selector} {s.state(now, store.grace)}" for s in selectors)
                errors.append(ConfigError(
                    file, field, f"{domain} is signed but has no active key now ({states})",
                ))
    # A broken key file is always worth a line; a missing key directory only once
    # some domain depends on it.
    report_store = keys_needed or store.keys_dir.exists()
    return (list(store.errors) if report_store else []) + errors
