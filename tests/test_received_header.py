"""Our Received: header's date (RFC 5322 §3.3): the text is shared within a second,
and stays right across zones and seconds."""

from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

from gateway.stamps.received import ReceivedFacts, received_header

FACTS = ReceivedFacts(helo="client.example", client_ip="192.0.2.1", hostname="mx.isp.example",
                      txid="ABC123", extended=True)


def date_line(now: datetime) -> str:
    return received_header(FACTS, now).decode().rstrip("\r\n").rsplit("\t", 1)[1]


def test_the_date_is_the_rfc5322_date_of_the_moment():
    for now in (datetime(2026, 11, 24, 1, 2, 3, 456789, tzinfo=UTC),
                datetime(2026, 11, 24, 1, 2, 3, 999999, tzinfo=UTC),
                datetime(2026, 11, 24, 1, 2, 4, tzinfo=UTC),
                datetime(2026, 11, 24, 1, 2, 3)):  # naive: -0000
        assert date_line(now) == format_datetime(now)


def test_the_same_instant_in_another_zone_keeps_its_own_offset():
    utc = datetime(2026, 11, 24, 1, 2, 3, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    assert utc == paris
    assert date_line(utc).endswith("+0000")
    assert date_line(paris).endswith("+0100")
    assert date_line(utc).endswith("+0000")


def test_the_helo_is_kept_to_safe_characters():
    facts = ReceivedFacts(helo="evil\r\nX-Injected: 1", client_ip="192.0.2.1",
                          hostname="mx.isp.example", txid="T", extended=False)
    header = received_header(facts, datetime(2026, 11, 24, tzinfo=UTC))
    assert b"\r\nX-Injected" not in header and b"from evil??X-Injected:?1 (" in header
