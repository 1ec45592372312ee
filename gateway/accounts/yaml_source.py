"""Accounts from the customers' YAML policy files (the embedded default)."""

from __future__ import annotations

from gateway.accounts.source import AuthAnswer, Identity, Outcome
from gateway.accounts.verifier import PasswordVerifier
from gateway.config.directory import Directory


def identity_for(directory: Directory, login: str) -> Identity | None:
    found = directory.account(login)
    if found is None:
        return None
    customer, account = found
    senders = set(account.senders)
    if "@" in account.login:
        senders.add(account.login)
    return Identity(account.login, customer.customer, frozenset(senders))


class YamlAccounts:
    name = "yaml"

    def __init__(self, directory: Directory, verifier: PasswordVerifier | None = None):
        self._directory = directory
        self._verifier = verifier or PasswordVerifier()

    def replace_directory(self, directory: Directory) -> None:
        """Hot reload: later look-ups see the new policy files."""
        self._directory = directory

    async def authenticate(self, login: str, password: str) -> AuthAnswer:
        directory = self._directory
        found = directory.account(login)
        stored = found[1].password if found else None
        # Hash verification takes ~100 ms of CPU (argon2id): off the event loop, a
        # bounded number at once.  A missing login still verifies a dummy hash: same
        # time, same answer.
        ok = await self._verifier.verify(stored, password)
        if not ok:
            return AuthAnswer.invalid()
        identity = identity_for(directory, login)
        if identity is None:  # removed by a reload while we were hashing
            return AuthAnswer.invalid()
        return AuthAnswer(Outcome.OK, identity)

    async def close(self) -> None:
        return None
