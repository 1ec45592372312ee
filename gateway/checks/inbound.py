"""All inbound authentication evidence for one message, gathered concurrently.

Call after DATA has been received and before the message is forwarded:

    evidence = await authenticate_inbound(resolver, message=Message.parse(content), mail_from=...,
                                          helo=..., client_ip=...)

SPF, DKIM, ARC and the DMARC record discovery (the DNS Tree Walk, RFC 9989
§4.10.1) run at the same time; then the walks relaxed alignment needs (§4.10.2,
usually none or cached) and DMARC is evaluated from their results.  With a warm cache (the usual case: senders
repeat) nothing waits at all: SPF and the DMARC record come from the cache on
this thread, DKIM's keys too, and no task or worker thread is started; each
task or thread hop costs more than the checks themselves (tens of microseconds).
DNS trouble never raises: it shows as ``temperror`` in the results.  Anything
else raising is a bug and should be answered with 451 4.3.0 by the caller,
never with acceptance.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from gateway.checks import dmarc as dmarc_check
from gateway.checks.arc import verify_arc
from gateway.checks.dkim_verify import verify_dkim
from gateway.checks.dmarc import RecordLookup
from gateway.checks.dns import Resolver
from gateway.checks.spf import SpfResult, check_spf, check_spf_cached
from gateway.message import Message
from gateway.values.evidence import InboundEvidence


async def authenticate_inbound(
    resolver: Resolver,
    *,
    message: Message,
    mail_from: str,
    helo: str,
    client_ip: str,
    receiver: str | None = None,
    executor: Executor | None = None,
) -> InboundEvidence:
    """SPF (MAIL FROM, or HELO for "<>"), every DKIM signature, ARC and DMARC.

    ``message`` is the content as received (before we add any field), CRLF line ends
    only, as gateway/message.py read it at the end of DATA: DMARC, DKIM and ARC read
    their fields from it.
    """
    header_from = dmarc_check.from_domain_in(message.fields)
    spf = check_spf_cached(resolver, client_ip=client_ip, mail_from=mail_from, helo=helo,
                           receiver=receiver)
    lookup = None
    if header_from is not None:
        lookup = dmarc_check.find_record_cached(resolver, header_from)
    if spf is not None and (lookup is not None or header_from is None):
        # Warm: only DKIM (and ARC) keys may still need DNS; await them in turn.
        dkim = await verify_dkim(resolver, message, executor=executor)
        arc = await verify_arc(resolver, message, executor=executor)
    else:
        async def spf_result() -> SpfResult:
            if spf is not None:
                return spf
            return await check_spf(resolver, client_ip=client_ip, mail_from=mail_from,
                                   helo=helo, receiver=receiver, executor=executor)

        async def record() -> RecordLookup | None:
            if header_from is None:
                return None
            if lookup is not None:
                return lookup
            return await dmarc_check.find_record(resolver, header_from)

        spf, dkim, arc, lookup = await asyncio.gather(
            spf_result(),
            verify_dkim(resolver, message, executor=executor),
            verify_arc(resolver, message, executor=executor),
            record(),
        )
    orgs = await dmarc_check.alignment_org_domains(resolver, lookup, header_from, spf, dkim)
    dmarc = dmarc_check.evaluate(lookup, header_from, spf, dkim, orgs)
    return InboundEvidence(spf, tuple(dkim), dmarc, arc, header_from)
