"""Content scanning of one message with rspamd: facts → the customer's content rules.

Called by the handler at end of DATA when the gateway has a ``scanner:`` section:
on submission (outbound) always, on the MX when inbound scanning is enabled.
rspamd gets what its own rules need (login, client address, HELO, envelope);
its answer, or its absence, becomes a ContentDecision (gateway/rules/content.py).
"""

from __future__ import annotations

from gateway.checks.rspamd import RspamdClient, ScannerUnavailable
from gateway.config.content import ContentRules, ScannerSettings, effective_rules
from gateway.config.policy import CustomerPolicy
from gateway.rules.content import ContentDecision, decide_content, skip_scan


def rules_for(scanner: ScannerSettings, direction: str,
              customer: CustomerPolicy | None) -> ContentRules:
    default = scanner.outbound if direction == "outbound" else scanner.inbound
    content = customer.content if customer is not None else None
    override = getattr(content, direction, None) if content is not None else None
    return effective_rules(default, override)


async def scan(client: RspamdClient, scanner: ScannerSettings, direction: str,
               customer: CustomerPolicy | None, message: bytes, *, sender: str,
               recipients: list[str], client_ip: str, helo: str | None, login: str | None,
               txid: str) -> ContentDecision:
    rules = rules_for(scanner, direction, customer)
    skipped = skip_scan(direction, rules, len(message), scanner.max_message_size)
    if skipped is not None:
        return skipped
    try:
        result = await client.scan(message, sender=sender, recipients=recipients, ip=client_ip,
                                   helo=helo, user=login, queue_id=txid,
                                   settings_id=rules.settings_id)
    except ScannerUnavailable as exc:
        return decide_content(direction, rules, None, scanner_error=exc.kind, reference=txid)
    return decide_content(direction, rules, result, reference=txid)
