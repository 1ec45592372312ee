"""Every SMTP reply the gateway sends, named.

A reply carries its code, its RFC 3463 enhanced status code and a sentence a
customer can act on.  The class digit of the enhanced code must match the
first digit of the reply code (a 4xx can never carry 5.x.x), which is checked
when the reply is made, so a wrong pairing fails at import time, not on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str
    text: str
    # The downstream's own words, passed back as they are (gateway/downstream/replies.py):
    # no id of ours is added to them.  Not part of equality: the words are the reply.
    relayed: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")
        if self.enhanced and self.enhanced.split(".", 1)[0] != str(self.code)[0]:
            raise ValueError(f"enhanced code {self.enhanced} does not fit reply {self.code}")

    @property
    def is_success(self) -> bool:
        return self.code < 300

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)

    def __str__(self) -> str:
        # RFC 5321 §4.2.1: every line but the last has a hyphen after the code.
        head = f"{self.enhanced} " if self.enhanced else ""
        lines = self.text.splitlines() or [""]
        return "\r\n".join(
            f"{self.code}{'-' if i < len(lines) - 1 else ' '}{head}{line}"
            for i, line in enumerate(lines)
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer of a rule: accept or not, the reply that goes with it, and for a
    refusal the rule's name and the facts it decided on (for the transaction's log
    line: gateway/smtp/records.py)."""

    accept: bool
    reply: Reply
    rule: str = ""
    facts: tuple[tuple[str, object], ...] = ()

    @classmethod
    def ok(cls, reply: Reply | None = None) -> Verdict:
        return cls(True, reply or OK)

    @classmethod
    def refuse(cls, reply: Reply, rule: str = "", **facts: object) -> Verdict:
        return cls(False, reply, rule, tuple(facts.items()))


# --- success -----------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
# RFC 5321 §3.5.3: 252 for "cannot verify"; we never confirm or deny a mailbox.
VRFY_NEVER = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
EXPN_REFUSED = Reply(502, "5.5.1", "EXPN is not available")

# --- protocol ----------------------------------------------------------------
SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error")
LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long (RFC 5321 section 4.5.3.1.6 allows 1000 octets)")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
BAD_PARAMETER = Reply(501, "5.5.4", "Invalid command parameter")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "MAIL or RCPT parameter not recognised")
# RFC 3461 §4: DSN parameters only where DSN was advertised (we advertise it when the
# downstream offers it: it is the one that sends the notifications).
# RFC 6531 §3.4: an internationalized address in a transaction without SMTPUTF8, and
# SMTPUTF8 where it is not offered (we offer it when the downstream does).
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII addresses need MAIL FROM with SMTPUTF8")
SMTPUTF8_NOT_OFFERED = Reply(555, "5.6.7", "SMTPUTF8 is not offered here: "
                             "internationalized addresses cannot be delivered")
NON_ASCII_HELO = Reply(501, "5.5.4", "The HELO/EHLO name must be ASCII (A-labels for IDNs)")
DSN_NOT_OFFERED = Reply(555, "5.5.4", "DSN parameters are not offered here (no DSN in EHLO)")
BAD_ADDRESS = Reply(553, "5.1.3", "Malformed address")
BARE_NEWLINE = Reply(
    550, "5.5.2", "Message refused: bare <CR> or <LF> in message (RFC 5321 section 2.3.8 requires CRLF)"
)
# RFC 5322 §2.3: a message's octets are US-ASCII characters other than NUL.
NUL_OCTET = Reply(554, "5.6.0", "Message refused: it contains NUL octets (RFC 5322 section 2.3)")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
# RFC 5321 §3.1: 554 at the greeting, no service here.  A listener behind a balancer
# (proxy_protocol) serves only the balancers in proxy_protocol.from.
PROXY_PEER_NOT_TRUSTED = Reply(554, "5.7.1", "No SMTP service for this address here; connect through the load balancer")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")

# --- limits ------------------------------------------------------------------
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds the fixed maximum message size")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients for one message; send the rest in another")
# Quotas (gateway/rules/quota.py fills in the limit and when to retry).
RATE_LIMITED = Reply(451, "4.7.1", "Sending limit reached for this account; try again later")
ACCOUNT_SUSPENDED = Reply(
    550, "5.7.1",
    "This account is suspended from sending mail; please contact your provider's support",
)
# The same two, for customers whose action at a limit is ``reject`` or whose
# suspended accounts are deferred (config/quota.py LimitAction).
RATE_LIMIT_REFUSED = Reply(550, "5.7.1", "Sending limit reached for this account; message refused")
ACCOUNT_SUSPENDED_DEFERRED = Reply(
    451, "4.7.1",
    "This account is suspended from sending mail; please contact your provider's support",
)
QUOTA_STORE_UNAVAILABLE = Reply(451, "4.3.0", "Sending limits cannot be checked right now; try again later")
ACCOUNT_BUSY = Reply(454, "4.7.0", "Too many simultaneous sessions for this account; try again later")

# --- relay and senders ---------------------------------------------------------
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
# RFC 3463 §3.5 X.4.3 (directory server failure): the account database that says
# which domains we host cannot be asked now; the sender's MTA retries.
HOSTED_DOMAINS_UNAVAILABLE = Reply(451, "4.4.3", "Cannot check whether we accept mail for this domain right now; try again later")
RECIPIENT_ROUTING_REFUSED = Reply(
    553, "5.1.3", "Recipient address with routing characters (% ! @ in the local part) refused"
)
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPFAIL = Reply(454, "4.7.0", "Temporary authentication failure")
# Brute-force lockout: the same words whether the IP, the login or both are locked,
# and whether or not the login exists (gateway/rules/lockout.py adds when to retry).
AUTH_LOCKED_OUT = Reply(454, "4.7.0", "Too many failed login attempts; try again later")
AUTH_NOT_OFFERED = Reply(502, "5.5.1", "AUTH is not offered on this port; use the submission port")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_MECHANISM_UNKNOWN = Reply(504, "5.5.4", "Unrecognised authentication mechanism")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
AUTH_SYNTAX = Reply(501, "5.5.2", "Cannot decode the authentication response")
SENDER_REFUSED_AT_MAIL = Reply(553, "5.7.1", "Sender address not allowed for this account")
SENDER_REFUSED_AT_DATA = Reply(550, "5.7.1", "Sender address not allowed for this account")
FROM_HEADER_COUNT = Reply(550, "5.6.0", "Message must have exactly one From: header")
MALFORMED_HEADER = Reply(550, "5.6.0", "Malformed message header")

# --- outbound DKIM signing (gateway/rules/signing.py) ------------------------------
# RFC 6376 signs for one author domain: the From: addresses must share it.
FROM_SEVERAL_DOMAINS = Reply(
    550, "5.6.0", "From: holds addresses in several domains; DKIM signs for one author domain"
)
FROM_DOMAIN_NOT_OWNED = Reply(
    550, "5.7.1", "From: address is in a domain this account's customer does not own; it cannot be signed"
)
# No active key for a domain the customer asked us to sign: hold the mail rather than
# let it leave unsigned (the operator gets an error line in the log).
SIGNING_KEY_UNAVAILABLE = Reply(451, "4.7.0", "Cannot DKIM-sign for the From: domain right now; try again later")

# --- inbound authentication (SPF, DKIM, DMARC) ------------------------------------------
# gateway/rules/inbound.py fills in the reason; codes per RFC 7372 and RFC 3463.
SPF_FAIL_REJECTED = Reply(550, "5.7.1", "SPF check failed: the sender's domain does not authorise this server")
DMARC_REJECTED = Reply(550, "5.7.26", "DMARC policy of the sender's domain says reject: message not authenticated")
SPF_FAIL_TEMPFAILED = Reply(451, "4.7.1", "SPF check failed; try again later")
DMARC_TEMPFAILED = Reply(451, "4.7.26", "DMARC check failed; try again later")
AUTH_CHECKS_TEMPFAILED = Reply(451, "4.7.0", "Sender authentication could not be checked (DNS failure); try again later")

# --- content scanning (gateway/rules/content.py) -------------------------------------
# Never rspamd's symbol names: they tell a spammer what to change and an honest
# customer nothing.  The rule appends a reference (the transaction id) for support.
CONTENT_REJECTED = Reply(
    550, "5.7.1",
    "Message refused: our content filter classifies it as spam. If you did not write it, "
    "your account may be compromised: change your password and contact your provider's support",
)
# Inbound: the sender is not our customer; tell them how a false positive gets fixed.
INBOUND_CONTENT_REJECTED = Reply(
    550, "5.7.1",
    "Message refused: our content filter classifies it as spam. If this is a mistake, "
    "ask the recipient to forward this reply to their provider's support",
)
CONTENT_TEMPFAILED = Reply(451, "4.7.1", "Message deferred by our content filter; try again later")
# As Postfix's milter_default_action = tempfail: no verdict, no delivery, the client retries.
SCANNER_UNAVAILABLE = Reply(451, "4.7.1", "Message cannot be scanned right now; try again later")
SCANNER_UNAVAILABLE_REJECTED = Reply(
    550, "5.7.1", "Message cannot be scanned, and this service does not accept unscanned mail; "
    "try again later or contact your provider's support",
)
# The client hears success: the message is stored and waits for the provider's review.
HELD_FOR_REVIEW = Reply(250, "2.0.0", "Message accepted and held for review by your provider")

# --- faults ------------------------------------------------------------------
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
DOWNSTREAM_UNAVAILABLE = Reply(451, "4.4.1", "Downstream mail server unavailable, try again later")
DOWNSTREAM_TIMEOUT = Reply(451, "4.4.2", "Downstream mail server timed out, try again later")

# --- MX screening (docs/screening.md) --------------------------------------------
# The texts name the client and the list, as operators expect (postscreen's words);
# rules/screening.py fills in the client and the zone with with_text.
DNSBL_LISTED = Reply(554, "5.7.1", "Service unavailable; client listed by a DNS blocklist")
DYNAMIC_RANGE = Reply(
    550, "5.7.1",
    "Mail from this address must be sent through your provider's mail server: "
    "use authenticated submission on port 587 or 465")
PREGREET = Reply(550, "5.5.1", "Protocol error: the client talked before the greeting ended")
# RFC 7372 §3.3: X.7.25, reverse DNS validation failed.
NO_FCRDNS = Reply(550, "5.7.25", "Reverse DNS of the client does not resolve back to its address")
CLIENT_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address; try again later")
CLIENT_NETWORK_CONNECTIONS = Reply(
    421, "4.7.0", "Too many connections from your network; try again later")
CLIENT_CONNECTION_RATE = Reply(
    421, "4.7.0", "Too many new connections from your address; try again later")
CLIENT_MESSAGE_RATE = Reply(421, "4.7.0", "Too much mail from your address; try again later")
CLIENT_RECIPIENT_RATE = Reply(
    421, "4.7.0", "Too many recipients from your address; try again later")
