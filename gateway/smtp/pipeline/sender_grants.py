"""Submission: what the logged-in account may send as, asked the same way at MAIL,
at the end of DATA and at signing (rules/senders.py: granted, signing_domains)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.accounts.source import Identity
from gateway.config.default_policy import policy_for
from gateway.config.policy import CustomerPolicy
from gateway.rules.senders import granted
from gateway.runtime import Runtime


def sender_grants(rt: Runtime, identity: Identity
                  ) -> tuple[Identity, Mapping[str, tuple[str, ...]], CustomerPolicy]:
    """(the identity with every sender it is granted, the customer's aliases, the
    customer's policy: its file's, or the gateway's default_policy for it)."""
    customer = customer_policy(rt, identity)
    widened = granted(identity, customer, rt.directory.accounts.get(identity.login))
    return widened, customer.aliases, customer


def customer_policy(rt: Runtime, identity: Identity) -> CustomerPolicy:
    """The account's customer's policy file, or default_policy for a customer no
    policy file claims (an account only the ISP's database knows)."""
    return policy_for(rt.directory, rt.config.default_policy, identity.customer)
