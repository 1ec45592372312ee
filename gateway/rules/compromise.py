"""Compromised accounts: when the evidence says an account is being abused.

Pure: the signals are plain numbers gathered from the store by the caller, and
the answer is a suspension with its evidence (or None).  The first signal that
fires wins; each carries the numbers that made it fire, for the event log and
for the operator who decides whether to lift it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.quota import CompromiseSettings
from gateway.values.charges import Suspension


@dataclass(frozen=True, slots=True)
class Signals:
    login: str
    # Recipients the account tried in the last hour, accepted or refused by quota.
    attempted_last_hour: int = 0
    # Recipients accepted in the last hour.
    sent_last_hour: int = 0
    # Recipients sent before the last hour, over `baseline_hours` hours.
    baseline_sent: int = 0
    baseline_hours: float = 0.0
    # Recipients handed to the downstream in the last hour, and how many it refused.
    downstream_tried: int = 0
    downstream_refused: int = 0
    # Complaints matched to the account, and messages sent, over the complaint period.
    complaints: int = 0
    messages_sent: int = 0


def assess(signals: Signals, settings: CompromiseSettings, now: float) -> Suspension | None:
    if not settings.enabled:
        return None
    s = signals
    ceiling = settings.ceiling_recipients_per_hour
    if ceiling is not None and s.attempted_last_hour > ceiling:
        return Suspension(s.login, now, "hard ceiling exceeded", {
            "recipients_attempted_last_hour": s.attempted_last_hour, "ceiling": ceiling})
    if settings.spike_factor is not None and s.sent_last_hour >= settings.spike_minimum:
        # A new account has no baseline: the minimum alone is its ceiling until it has one.
        hourly = s.baseline_sent / s.baseline_hours if s.baseline_hours > 0 else 0.0
        if s.sent_last_hour > settings.spike_factor * hourly:
            return Suspension(s.login, now, "volume spike", {
                "recipients_last_hour": s.sent_last_hour,
                "baseline_per_hour": round(hourly, 3),
                "factor": settings.spike_factor, "minimum": settings.spike_minimum})
    if (settings.refusal_share is not None and s.downstream_tried >= settings.refusal_minimum
            and s.downstream_refused >= settings.refusal_share * s.downstream_tried):
        return Suspension(s.login, now, "recipients refused downstream", {
            "recipients_tried_last_hour": s.downstream_tried,
            "refused_last_hour": s.downstream_refused, "share": settings.refusal_share})
    if (settings.complaint_rate is not None and s.complaints >= settings.complaint_minimum
            and s.complaints >= settings.complaint_rate * max(s.messages_sent, 1)):
        return Suspension(s.login, now, "complaint rate", {
            "complaints": s.complaints, "messages_sent": s.messages_sent,
            "rate": settings.complaint_rate, "days": settings.complaint_days})
    return None
