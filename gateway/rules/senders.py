"""Send-as rules: which addresses an authenticated account may use.

An account may use, as envelope sender and in From:/Sender: (and in the
Resent-From:/Resent-Sender: of a message it resends, RFC 5322 §3.6.6),
- the addresses and ``*@domain`` patterns its account source lists,
- its login, when the login is an address,
- the ``senders:`` of an account with the same login in its customer's policy
  file (YAML widens what the ISP's database grants, never narrows it),
- the customer's shared aliases that name the login as a member.

:func:`granted` makes the identity all three checks read (MAIL, the end of DATA,
and which From: domains may be DKIM-signed: :func:`signing_domains`), so the
three can never disagree about one address.

The comparison is on the lower-cased address (RFC 5321 lets the receiving host
decide local-part case; every ISP mailbox system treats it as case-insensitive).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import replace

from gateway import replies
from gateway.addresses import NotAMailbox, parse_mailbox
from gateway.config.policy import Account, CustomerPolicy
from gateway.message import HeaderField, MalformedHeader, addresses_in, fields_named
from gateway.replies import Verdict
from gateway.values.identity import Identity


def granted(identity: Identity, customer: CustomerPolicy | None,
            yaml_account: tuple[str, Account] | None) -> Identity:
    """``identity`` with every sender it is granted: the source's list and login,
    plus the ``senders:`` of ``yaml_account`` (customer id, account: the policy
    files' account with the same login) when it is this customer's."""
    if customer is None or yaml_account is None or yaml_account[0] != identity.customer:
        return identity
    extra = yaml_account[1].senders
    if not extra or identity.senders.issuperset(extra):
        return identity
    return replace(identity, senders=identity.senders | frozenset(extra))


class _Either(Collection[str]):
    """Two sets seen as one for ``in`` (a hosting customer's 100,000 domains are
    not copied per message to add the few its account source grants)."""

    def __init__(self, first: Collection[str], second: frozenset[str]):
        self._first, self._second = first, second

    def __contains__(self, item: object) -> bool:
        return item in self._second or item in self._first

    def __iter__(self) -> Iterator[str]:
        yield from self._first
        yield from (d for d in self._second if d not in self._first)

    def __len__(self) -> int:
        return len(self._first) + sum(1 for d in self._second if d not in self._first)


def signing_domains(identity: Identity, owned: Collection[str]) -> Collection[str]:
    """The From: domains this account's mail may be signed for: its customer's
    domains (``owned``) and the domains of the senders it is granted (a grant from
    the ISP's database outside the customer's domains passed MAIL and DATA, so
    refusing it at signing would be a third, different rule).  ``identity``: as
    :func:`granted` made it."""
    granted_domains = frozenset(s.rpartition("@")[2] for s in identity.senders if "@" in s)
    if not granted_domains:
        return owned
    return _Either(owned, granted_domains)


def may_send_as(
    identity: Identity, aliases: Mapping[str, tuple[str, ...]], address: str
) -> bool:
    try:
        key = parse_mailbox(address, utf8=True).key()
    except NotAMailbox:
        return False
    if key in identity.senders or f"*@{key.rpartition('@')[2]}" in identity.senders:
        return True
    return identity.login in aliases.get(key, ())


def decide_envelope_sender(
    identity: Identity, aliases: Mapping[str, tuple[str, ...]], mail_from: str
) -> Verdict:
    """At MAIL FROM.  The null sender is allowed: clients send MDNs with it
    (RFC 8098 §2.1); the From: header is still checked at end of DATA."""
    if mail_from == "":
        return Verdict.ok(replies.SENDER_OK)
    if may_send_as(identity, aliases, mail_from):
        return Verdict.ok(replies.SENDER_OK)
    return Verdict.refuse(
        replies.SENDER_REFUSED_AT_MAIL.with_text(
            f"Sender address <{mail_from}> not allowed for this account"
        ),
        "senders.envelope", sender=mail_from,
    )


def decide_header_senders(
    identity: Identity, aliases: Mapping[str, tuple[str, ...]], fields: Sequence[HeaderField]
) -> Verdict:
    """At end of DATA: exactly one From: field; every address in From: and Sender:,
    and in every Resent-From: and Resent-Sender:, must be one the account may use.

    RFC 5322 §3.6.6: whoever resends a message names themselves in Resent-From:
    (and Resent-Sender:), and readers show it as the sender: the same send-as
    rule as From: applies, or an account could resend mail as anyone.  A message
    may carry several resent blocks (one per resend): all are checked.

    ``fields``: the message's fields as gateway/message.py read them, the same the
    DKIM signer signs (``From :`` is a From: field to both)."""
    from_fields = fields_named(fields, "From")
    if len(from_fields) != 1:
        return Verdict.refuse(replies.FROM_HEADER_COUNT, "senders.from_count",
                              from_fields=len(from_fields))
    checked = from_fields + fields_named(fields, "Sender")
    if len(checked) > 2:
        return Verdict.refuse(replies.MALFORMED_HEADER.with_text("Message has more than one Sender: header"),
                              "senders.sender_count")
    checked += fields_named(fields, "Resent-From") + fields_named(fields, "Resent-Sender")
    for field in checked:
        try:
            addresses = addresses_in(field)
        except MalformedHeader:
            return Verdict.refuse(
                replies.MALFORMED_HEADER.with_text(f"Cannot read the addresses in the {field.name}: header"),
                "senders.header_syntax", field=field.name,
            )
        for address in addresses:
            if not may_send_as(identity, aliases, address):
                return Verdict.refuse(
                    replies.SENDER_REFUSED_AT_DATA.with_text(
                        f"{field.name}: address <{address}> not allowed for this account"
                    ),
                    "senders.header", field=field.name, address=address,
                )
    return Verdict.ok()
