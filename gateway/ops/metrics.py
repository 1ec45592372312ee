"""What the gateway counts, for Prometheus.

One :class:`Metrics` object is made at start-up and handed to whoever counts
(the SMTP handler, the downstream client, the account store).  Each instance
owns its own ``CollectorRegistry``, so tests and several gateways in one
process never share a counter.

Several worker processes (sharing the ports) are aggregated with prometheus_client's
multiprocess mode: each worker writes its values to memory-mapped files in one
shared directory, and the single HTTP server sums them at scrape time
(:func:`multiprocess_registry`).  :func:`prepare_multiprocess` must run in the
parent before the workers start; see docs/operations.md.

Names follow https://prometheus.io/docs/practices/naming/: a ``portcullis_``
prefix, ``_total`` on counters, base units (seconds) in the name.  Labels take
only values from small fixed sets (listener names, reply classes, result
names): never an address, a login or a domain, which would grow without bound.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client import multiprocess as prom_multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# RFC 8601 §2.7.2 (SPF), §2.7.1 (DKIM), RFC 7489 §11.2 (DMARC): the result words.
AUTH_METHODS = ("spf", "dkim", "dmarc")
AUTH_RESULTS = (
    "pass", "fail", "softfail", "neutral", "none", "policy", "temperror", "permerror",
)

# Downstream answers come within milliseconds on a LAN and within the
# configured timeout (30 s default) at worst.
DOWNSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def reply_class(code: int) -> str:
    """``250`` → ``"2xx"``: RFC 5321 §4.2.1, the first digit is the class."""
    if not 200 <= code <= 599:
        raise ValueError(f"SMTP reply code out of range: {code}")
    return f"{code // 100}xx"


class Metrics:
    """The gateway's counters, in a registry of their own."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        listeners: Iterable[str] = (),
        downstreams: Iterable[str] = (),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections = Counter(
            "portcullis_connections_total",
            "SMTP connections by listener and how they ended "
            "(accepted, refused_limit, tls_failed, ...).",
            ["listener", "outcome"], registry=r,
        )
        # Compare with listeners.*.max_connections; each worker's share is summed.
        self.connections_open = Gauge(
            "portcullis_connections_open",
            "SMTP connections open now, by listener.",
            ["listener"], registry=r, multiprocess_mode="livesum",
        )
        self.messages = Counter(
            "portcullis_messages_total",
            "Messages by listener and outcome (accepted, refused, tempfailed).",
            ["listener", "outcome"], registry=r,
        )
        self.replies = Counter(
            "portcullis_smtp_replies_total",
            "SMTP replies sent, by listener and reply class (2xx, 3xx, 4xx, 5xx).",
            ["listener", "class"], registry=r,
        )
        self._reply_children: dict[tuple[str, int], Counter] = {}
        self.auth = Counter(
            "portcullis_auth_attempts_total",
            "SMTP AUTH attempts by listener and result (success, failure, tempfail).",
            ["listener", "result"], registry=r,
        )
        self.quota_refusals = Counter(
            "portcullis_quota_refusals_total",
            "Messages or recipients refused by a quota, by kind of quota.",
            ["kind"], registry=r,
        )
        self.dkim_signatures = Counter(
            "portcullis_dkim_signatures_total",
            "DKIM signatures added to outbound messages, by algorithm.",
            ["algorithm"], registry=r,
        )
        self.auth_results = Counter(
            "portcullis_inbound_auth_results_total",
            "Inbound SPF, DKIM and DMARC results (RFC 8601 result words).",
            ["method", "result"], registry=r,
        )
        self._auth_result_children: dict[tuple[str, str], Counter] = {}
        self.downstream_latency = Histogram(
            "portcullis_downstream_seconds",
            "Time the downstream took to take a message (connect to final reply).",
            ["downstream"], buckets=DOWNSTREAM_BUCKETS, registry=r,
        )
        self._downstream_children: dict[str, Histogram] = {}
        self.downstream_errors = Counter(
            "portcullis_downstream_errors_total",
            "Downstream failures by downstream and kind (connect, timeout, tempfail, refused).",
            ["downstream", "kind"], registry=r,
        )
        # The store knows the number; every worker reports the same one, so
        # multiprocess mode keeps the most recent value rather than a sum.
        self.suspended = Gauge(
            "portcullis_suspended_accounts",
            "Accounts currently suspended (by quota abuse or by an operator).",
            registry=r, multiprocess_mode="mostrecent",
        )
        self.store_up = Gauge(
            "portcullis_store_up",
            "1 when the shared store answered the last reading (every 10 seconds), else 0.",
            registry=r, multiprocess_mode="mostrecent",
        )
        self.screening_refusals = Counter(
            "portcullis_screening_total",
            "MX screening refusals and findings, by rule (screening.dnsbl, "
            "screening.dynamic_range, screening.pregreet, screening.connections_per_address, ...).",
            ["rule"], registry=r,
        )
        self.scanner_results = Counter(
            "portcullis_scanner_results_total",
            "Messages scanned by rspamd, by direction and what our rules made of the answer "
            "(pass, tag, hold, tempfail, reject).",
            ["direction", "action"], registry=r,
        )
        self.scanner_errors = Counter(
            "portcullis_scanner_errors_total",
            "rspamd failed to answer usefully, by direction and kind (connect, timeout, ...).",
            ["direction", "kind"], registry=r,
        )
        self.held = Counter(
            "portcullis_held_total",
            "Messages held for review, by direction.",
            ["direction"], registry=r,
        )
        self.lockouts = Counter(
            "portcullis_auth_lockouts_total",
            "AUTH attempts refused unchecked because the client address or the login is "
            "locked out (or has too many attempts in flight).",
            ["listener"], registry=r,
        )
        self.complaints = Counter(
            "portcullis_complaints_total",
            "Abuse reports (ARF or forwarded) counted as complaints against an account.",
            registry=r,
        )
        # Seconds since the epoch; one value per listener's certificate file.
        self.certificate_expiry = Gauge(
            "portcullis_tls_certificate_expiry_timestamp_seconds",
            "When the certificate a listener presents stops being valid (notAfter).",
            ["listener"], registry=r, multiprocess_mode="mostrecent",
        )
        self.reloads = Counter(
            "portcullis_reloads_total",
            "Configuration reloads (SIGHUP or the admin API), by result (applied, refused).",
            ["result"], registry=r,
        )
        # Keys checked before they sign (gateway/dkim/publication_watch.py).
        self.dkim_key_checks = Counter(
            "portcullis_dkim_key_checks_total",
            "Look-ups of DKIM selectors' TXT records, by outcome "
            "(published, missing, wrong, temperror).",
            ["outcome"], registry=r,
        )
        self.dkim_held_back = Gauge(
            "portcullis_dkim_selectors_held_back",
            "DKIM selectors inside their window that do not sign: their key is not seen in DNS.",
            registry=r, multiprocess_mode="mostrecent",
        )
        # gateway/log_output.py: the log's reader fell behind by limits.log_backlog lines.
        self.log_lines_dropped = Counter(
            "portcullis_log_lines_dropped_total",
            "Log lines dropped because the log output was blocked (limits.log_backlog were waiting).",
            registry=r,
        )
        self.arc_seals = Counter(
            "portcullis_arc_seals_total",
            "Inbound messages ARC-sealed, by the seal's cv= (none, pass, fail), or unsealed.",
            ["outcome"], registry=r,
        )
        self._known_listeners = tuple(listeners)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Create the series up front so that rate() works from the first event and
        # a dashboard shows 0 rather than "no data".
        for listener in self._known_listeners:
            self.connections_open.labels(listener)
            for cls in ("2xx", "4xx", "5xx"):
                self.replies.labels(listener, cls)
            for result in ("success", "failure"):
                self.auth.labels(listener, result)
        for method in AUTH_METHODS:
            self.auth_results.labels(method, "pass")
        for result in ("applied", "refused"):
            self.reloads.labels(result)
        for listener in self._known_listeners:
            self.lockouts.labels(listener)
            self.connections.labels(listener, "accepted")
            self.messages.labels(listener, "accepted")
        directions = {"inbound" if n == "inbound" else "outbound" for n in self._known_listeners}
        for direction in sorted(directions):
            self.scanner_results.labels(direction, "pass")
            self.scanner_errors.labels(direction, "connect")
            self.held.labels(direction)
        for downstream in downstreams:
            self.downstream_latency.labels(downstream)

    # --- the calls made from the message flow -------------------------------
    def screening(self, rule: str) -> None:
        self.screening_refusals.labels(rule).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        # Called per connection and per message: prometheus_client's labels()
        # validates on every call (about 2 us); the labelled child is kept instead.
        # Label values here come from the code and the configuration (few).
        key = (id(metric), labels)  # the metrics live as long as this object
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def connection(self, listener: str, outcome: str) -> None:
        self._child(self.connections, listener, outcome).inc()

    def opened(self, listener: str) -> None:
        """A connection was taken; pair with :meth:`closed` (try/finally)."""
        self._child(self.connections_open, listener).inc()

    def closed(self, listener: str) -> None:
        self._child(self.connections_open, listener).dec()

    def message(self, listener: str, outcome: str) -> None:
        self._child(self.messages, listener, outcome).inc()

    def reply(self, listener: str, code: int) -> None:
        # Several replies per message: the labelled child is looked up once per
        # (listener, code); prometheus_client's labels() validates on every call.
        child = self._reply_children.get((listener, code))
        if child is None:
            child = self._reply_children[listener, code] = self.replies.labels(
                listener, reply_class(code))
        child.inc()

    def auth_attempt(self, listener: str, success: bool) -> None:
        self.auth.labels(listener, "success" if success else "failure").inc()

    def auth_tempfail(self, listener: str) -> None:
        self.auth.labels(listener, "tempfail").inc()

    def quota_refused(self, kind: str) -> None:
        self.quota_refusals.labels(kind).inc()

    def dkim_signed(self, algorithm: str) -> None:
        self.dkim_signatures.labels(algorithm).inc()

    def dkim_key_check(self, outcome: str) -> None:
        self.dkim_key_checks.labels(outcome).inc()

    def set_dkim_held_back(self, count: int) -> None:
        self.dkim_held_back.set(count)

    def arc_sealed(self, outcome: str) -> None:
        self.arc_seals.labels(outcome).inc()

    def auth_result(self, method: str, result: str) -> None:
        """One SPF, DKIM or DMARC result; DKIM counts each signature checked."""
        # Several per message: the child is looked up once per pair, as in reply().
        # Only a pair that passed the checks below is ever remembered, so the
        # dictionary holds at most len(AUTH_METHODS) * len(AUTH_RESULTS) entries.
        child = self._auth_result_children.get((method, result))
        if child is None:
            if method not in AUTH_METHODS:
                raise ValueError(f"unknown authentication method {method!r}")
            if result not in AUTH_RESULTS:
                raise ValueError(f"unknown {method} result {result!r}")
            child = self._auth_result_children[method, result] = self.auth_results.labels(
                method, result)
        child.inc()

    def downstream_took(self, downstream: str, seconds: float) -> None:
        # Once per message; downstream names come from the configuration (few).
        child = self._downstream_children.get(downstream)
        if child is None:
            child = self._downstream_children[downstream] = self.downstream_latency.labels(
                downstream)
        child.observe(seconds)

    def downstream_error(self, downstream: str, kind: str) -> None:
        self.downstream_errors.labels(downstream, kind).inc()

    def scanned(self, direction: str, action: str, error: str | None) -> None:
        self.scanner_results.labels(direction, action).inc()
        if error is not None:
            self.scanner_errors.labels(direction, error).inc()

    def held_for_review(self, direction: str) -> None:
        self.held.labels(direction).inc()

    def locked_out(self, listener: str) -> None:
        self.lockouts.labels(listener).inc()

    def complaint(self) -> None:
        self.complaints.inc()

    def certificate_expires(self, listener: str, not_after: float) -> None:
        self.certificate_expiry.labels(listener).set(not_after)

    def log_line_dropped(self) -> None:
        self.log_lines_dropped.inc()

    def reloaded(self, applied: bool) -> None:
        self.reloads.labels("applied" if applied else "refused").inc()

    def set_store_up(self, up: bool) -> None:
        self.store_up.set(1 if up else 0)

    def set_suspended(self, count: int) -> None:
        self.suspended.set(count)


# --- several worker processes ----------------------------------------------------

def prepare_multiprocess(directory: Path) -> None:
    """Switch this process and its future children to multiprocess metrics.

    Call once in the parent, before any :class:`Metrics` is made and before the
    workers are forked.  The directory is emptied: files left by an earlier run
    would add its counts to this one's.
    """
    directory = Path(directory)
    if directory.exists():
        for entry in directory.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus_client picks its value store once, when it is first imported;
    # pick again now that the variable is set, whatever the import order was.
    values.ValueClass = values.get_value_class()


def is_multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def multiprocess_registry(directory: Path | None = None) -> CollectorRegistry:
    """A registry that sums every worker's files at scrape time (for the HTTP server)."""
    registry = CollectorRegistry()
    path = str(directory) if directory is not None else os.environ.get(MULTIPROC_ENV)
    prom_multiprocess.MultiProcessCollector(registry, path=path)
    return registry


def worker_exited(pid: int, directory: Path | None = None) -> None:
    """Call from the parent when a worker process ends: drops its live gauges."""
    path = str(directory) if directory is not None else os.environ.get(MULTIPROC_ENV)
    prom_multiprocess.mark_process_dead(pid, path)
