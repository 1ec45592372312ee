"""Accounts from the customers' YAML policy files (the embedded default)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from gateway.accounts import passwords
from gateway.accounts.source import AuthAnswer, Identity, Outcome
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

    def __init__(self, directory: Directory, executor: Executor | None = None):
        self._directory = directory
        self._executor = executor

    def replace_directory(self, directory: Directory) -> None:
        """Hot reload: later look-ups see the new policy files."""
        self._directory = directory

    async def authenticate(self, login: str, password: str) -> AuthAnswer:
        directory = self._directory
        found = directory.account(login)
        stored = found[1].password if found else None
        # Hash verification takes ~100 ms of CPU (argon2id): off the event loop.
        # A missing login still verifies a dummy hash: same time, same answer.
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._executor, passwords.verify, stored, password)
        if not ok:
            return AuthAnswer.invalid()
        identity = identity_for(directory, login)
        if identity is None:  # removed by a reload while we were hashing
            return AuthAnswer.invalid()
        return AuthAnswer(Outcome.OK, identity)

    async def close(self) -> None:
        return None
