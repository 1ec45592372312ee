"""The two pipelines: what happens to a message at the end of DATA, in order.

The DATA reader has already refused bare CR/LF, NUL and oversized messages, and
the handler has parsed the header section (gateway/smtp/handler.py).  A step
that refuses or holds ends the pipeline; after ``forward`` the downstream has
the message and the remaining steps only settle what it leaves behind: they
run once the client has its reply (pipeline/run.py).
docs/flow.md lists these steps in this order (tests/test_pipeline_declared.py).
"""

from __future__ import annotations

from gateway.smtp.pipeline import (
    abuse_reports,
    account_size,
    arc_sealing,
    content_scan,
    dkim_signing,
    forward,
    header_senders,
    hold,
    inbound_checks,
    received,
    sender_id,
    settle_quotas,
)
from gateway.smtp.pipeline.step import Step

# The MX (port 25): mail for our customers' mailboxes, from anyone.
INBOUND: tuple[Step, ...] = (
    inbound_checks.STEP,  # SPF, DKIM, ARC, DMARC → the recipients' policy; A-R on top
    content_scan.INBOUND_STEP,  # when inbound scanning is enabled
    received.STEP,
    arc_sealing.STEP,  # when arc_seal is set: AAR, AMS, AS on top (RFC 8617)
    hold.STEP,
    forward.STEP,
    abuse_reports.STEP,
)

# Submission (587, 465): mail from our customers' accounts, to anyone.
SUBMISSION: tuple[Step, ...] = (
    account_size.STEP,
    header_senders.STEP,  # From:, Sender:, Resent-*: addresses the account may use
    content_scan.SUBMISSION_STEP,
    sender_id.STEP,
    received.STEP,
    dkim_signing.STEP,  # the last change to the message
    hold.STEP,
    forward.STEP,
    settle_quotas.STEP,
)
