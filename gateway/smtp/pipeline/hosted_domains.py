"""The MX's fact at RCPT for a domain no policy file claims: does the ISP host it?
(gateway/rules/relay.py decides with it.)"""

from __future__ import annotations

from gateway.addresses import NotAMailbox, parse_mailbox
from gateway.runtime import Runtime


async def hosted_by_source(rt: Runtime, address: str) -> tuple[str | None, bool | None]:
    """The recipient's domain and whether it is hosted without a policy file:
    listed under ``default_policy.domains`` (True), else the account source's answer
    (True, False, or None when it cannot tell now).  Nothing is asked for a
    policy-file domain, an address literal or an address that does not parse:
    the relay rule needs no fact for those."""
    try:
        mailbox = parse_mailbox(address)
    except NotAMailbox:
        return None, False
    domain = mailbox.domain
    if mailbox.is_address_literal or rt.directory.customer_for_domain(domain) is not None:
        return domain, False
    if rt.config.default_policy.lists_domain(domain):
        return domain, True
    ask = getattr(rt.accounts, "hosts_domain", None)  # Deadline (accounts/factory.py)
    if ask is None:
        return domain, False
    return domain, await ask(domain)
