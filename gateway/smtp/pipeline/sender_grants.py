"""Submission: what the logged-in account may send as, asked the same way at MAIL,
at the end of DATA and at signing (rules/senders.py: granted, signing_domains)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.accounts.source import Identity
from gateway.config.policy import CustomerPolicy
from gateway.rules.senders import granted
from gateway.runtime import Runtime


def sender_grants(rt: Runtime, identity: Identity
                  ) -> tuple[Identity, Mapping[str, tuple[str, ...]], CustomerPolicy | None]:
    """(the identity with every sender it is granted, the customer's aliases, the
    customer's policy or None when no policy file claims it)."""
    customer = rt.directory.customers.get(identity.customer)
    widened = granted(identity, customer, rt.directory.accounts.get(identity.login))
    return widened, (customer.aliases if customer is not None else {}), customer
