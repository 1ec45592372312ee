"""Send-as rules: which addresses an authenticated account may use.

An account may use, as envelope sender and in From:/Sender: (and in the
Resent-From:/Resent-Sender: of a message it resends, RFC 5322 §3.6.6),
- the addresses and ``*@domain`` patterns its account source lists,
- its login, when the login is an address,
- the customer's shared aliases that name the login as a member.

The comparison is on the lower-cased address (RFC 5321 lets the receiving host
decide local-part case; every ISP mailbox system treats it as case-insensitive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway import replies
from gateway.addresses import NotAMailbox, parse_mailbox
from gateway.message import HeaderField, MalformedHeader, addresses_in, fields_named
from gateway.replies import Verdict
from gateway.values.identity import Identity


def may_send_as(
    identity: Identity, aliases: Mapping[str, tuple[str, ...]], address: str
) -> bool:
    try:
        key = parse_mailbox(address).key()
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
