"""Who may relay: the inbound listener takes mail only for the ISP's own domains.

Every form a relay tester tries must end in ``550 5.7.1``:

- a third-party domain, with or without a trailing dot or odd case;
- the percent hack ``user%third.example@ours`` and bang paths
  ``third.example!user@ours``: a downstream that still honours them would relay;
- a quoted local part hiding a route, ``"user@third.example"@ours``;
- an address literal ``user@[192.0.2.1]``, which no customer owns;
- source routes ``@ours:user@third.example``: aiosmtpd drops the route and hands
  us ``user@third.example`` (RFC 5321 §C: routes SHOULD be ignored), which is
  judged by its real domain like any other.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway import replies
from gateway.addresses import Mailbox, NotAMailbox, parse_mailbox
from gateway.replies import Verdict

# Characters that turn a local part into a route on some MTAs (RFC 5321 §3.6.1 percent hack,
# UUCP bang paths) or that only make sense as a hidden second address.
_ROUTING_CHARACTERS = "%!@"


def decide_inbound_recipient(
    address: str, owner_of: Callable[[str], str | None], hosted: bool | None = False
) -> tuple[Verdict, Mailbox | None]:
    """May the inbound (MX) listener accept mail for ``address``?

    ``owner_of(domain)`` returns the customer owning a normalised domain, or None.
    ``hosted``: for a domain no policy file claims, whether the ISP hosts it
    (``default_policy.domains`` or the account source); None when the source
    cannot tell now, which defers (never a 550 for a real customer's domain,
    never an acceptance for a stranger's).
    Returns the verdict and, when accepted, the mailbox to pass downstream
    (domain normalised: no trailing dot, lower-case).
    """
    try:
        mailbox = parse_mailbox(address, utf8=True)  # RFC 6531: the hooks gate UTF-8
    except NotAMailbox:
        return Verdict.refuse(replies.BAD_ADDRESS, "address.syntax", recipient=address), None
    if mailbox.is_address_literal:
        return Verdict.refuse(replies.RELAY_DENIED, "relay.address_literal", recipient=address), None
    if any(c in mailbox.unquoted_local for c in _ROUTING_CHARACTERS):
        return Verdict.refuse(replies.RELAY_DENIED, "relay.routing", recipient=address), None
    if owner_of(mailbox.domain) is None:
        if hosted is None:
            return Verdict.refuse(replies.HOSTED_DOMAINS_UNAVAILABLE, "relay.source_unavailable",
                                  recipient=address, domain=mailbox.domain), None
        if not hosted:
            return Verdict.refuse(replies.RELAY_DENIED, "relay", recipient=address,
                                  domain=mailbox.domain), None
    return Verdict.ok(replies.RECIPIENT_OK), mailbox


def decide_outbound_recipient(address: str) -> tuple[Verdict, Mailbox | None]:
    """Authenticated submission may send anywhere, but only to a well-formed mailbox.

    A route hidden in the local part would let the downstream relay somewhere we
    did not check, so the same routing characters are refused here too.
    """
    try:
        mailbox = parse_mailbox(address, utf8=True)  # RFC 6531: the hooks gate UTF-8
    except NotAMailbox:
        return Verdict.refuse(replies.BAD_ADDRESS, "address.syntax", recipient=address), None
    if any(c in mailbox.unquoted_local for c in _ROUTING_CHARACTERS):
        return Verdict.refuse(replies.RECIPIENT_ROUTING_REFUSED, "relay.routing", recipient=address), None
    return Verdict.ok(replies.RECIPIENT_OK), mailbox
