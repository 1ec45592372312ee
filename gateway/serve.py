"""Running the gateway: one process, or a supervisor and N worker processes.

Before any worker starts, the supervisor (or the single process) opens every
listening socket (gateway/sockets.py: the MX's one per worker, the submission
ports' one served by every worker in turn, gateway/accepting.py), so the gateway
uses every core (Python's GIL caps one process at one); it refuses to start, on one line, when another process holds
one of the addresses (gateway/sockets.py).  Workers share nothing in memory: state that must be exact
across them (quota counters, lockouts, suspensions) lives in the store.

SIGTERM/SIGINT: stop accepting, let transactions in flight finish within
``limits.shutdown_grace`` (then 421 to the rest), wait until every session has
released its connection slot and quota holds, close the store last, exit 0.

SIGHUP: re-read the config and the policy directory (the supervisor passes it on
to every worker).  Anything invalid: the old configuration stays, each error is
logged on one line.  Transactions in flight finish under the config they began
with (gateway/reload.py says which sections need a restart instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from gateway.accepting import LoadTable, Share
from gateway.accounts.factory import build_source
from gateway.admin import actions
from gateway.admin.server import AdminServer
from gateway.checks.dmarc import default_suffix_list
from gateway.checks.dns import DnsTempError, Resolver
from gateway.checks.rspamd import RspamdClient
from gateway.config.errors import ConfigErrors, one_line
from gateway.config.load import Loaded
from gateway.config.model import Config, Downstream
from gateway.config.quota import QuotaSettings
from gateway.dkim.keystore import KeyStore
from gateway.dkim.publication import KeyVerdicts
from gateway.dkim.publication_watch import PublicationWatch
from gateway.dkim.sign import sign_message_off_loop
from gateway.dkim.signing_keys import load_signing_keys, load_with_keys
from gateway.downstream.base import Downstream as DownstreamClient
from gateway.downstream.maildir import MaildirDownstream
from gateway.downstream.smtp import SmtpDownstream
from gateway.listeners import SMTPListeners
from gateway.log_output import BatchedLogHandler, flush_logs, watch_backlog
from gateway.metering import Metering
from gateway.ops import metrics as metrics_module
from gateway.ops.held_page import PATH as HELD_PAGE
from gateway.ops.held_page import HeldLinks
from gateway.ops.http import OpsHTTPServer
from gateway.ops.metrics import Metrics
from gateway.ops.notify import Notice, Notifier, Signer
from gateway.ops_endpoint import autoconfig_site, make_endpoint, mta_sts_site
from gateway.rebuild import Retirement, rebuild
from gateway.reload import changed_sections, decide_customer_drop, directory_counts, split_reload
from gateway.runtime import Runtime
from gateway.sockets import Address, AddressUnavailable, claim, release
from gateway.stamps.sender_id import SenderIds, load_secrets
from gateway.store import Store, StoreUnavailable, open_held_store, open_store
from gateway.store.dmarc_tally import DmarcTally
from gateway.store.journal import Journal
from gateway.tls import make_dev_certificate

log = logging.getLogger("portcullis")


def make_downstream(settings: Downstream | None, config: Config, direction: str):
    if settings is None:
        return None
    if settings.scheme == "maildir":
        path = Path(settings.maildir_path)
        return MaildirDownstream(path if path.is_absolute() else config.base_dir / path, direction)
    return SmtpDownstream(settings, config.hostname, direction)


def quota_settings(config: Config) -> QuotaSettings:
    return QuotaSettings(quotas=config.quotas, store=config.store, lockout=config.lockout,
                         compromise=config.compromise)


def make_sender_ids(config: Config, create: bool = False) -> SenderIds:
    a = config.abuse
    return SenderIds(load_secrets(a.secret, a.secret_file, a.previous_secrets, config.base_dir, create))


def make_held_links(config: Config) -> HeldLinks:
    """The account holder's links are signed with the abuse secret (every gateway of
    a cluster shares it: docs/abuse.md, "The secret")."""
    a = config.abuse
    return HeldLinks(load_secrets(a.secret, a.secret_file, a.previous_secrets, config.base_dir, True))


def build_notifier(config: Config, outbound: DownstreamClient | None, store: Store,
                   keystore: KeyStore | None = None,
                   links: HeldLinks | None = None,
                   verdicts: KeyVerdicts | None = None) -> Notifier | None:
    """Notices are the ISP's own mail: not counted against any quota, rate-limited
    through the shared store, and DKIM-signed with the key of the notice sender's
    domain (``notify.sender``, else postmaster@hostname) from ``dkim.keys_dir``."""
    if config.notify is None or outbound is None:
        return None
    sender = config.notify.sender or f"postmaster@{config.hostname}"
    domain = sender.rpartition("@")[2].lower()
    keys = keystore if keystore is not None else KeyStore.load(config.dkim.keys_dir,
                                                                config.dkim.publish_grace_days)
    if not keys.active(domain, time.time()):
        log.warning("notify: no active DKIM key for %s in %s: notices go out unsigned "
                    "(portcullis keys generate %s --selector S)", domain, config.dkim.keys_dir, domain)
    page, days = config.notify.held_page_url, config.notify.held_page_days
    link_for = None
    if page is not None:
        links = links or make_held_links(config)

        def link_for(login: str, now: float) -> str:
            return f"{page}{HELD_PAGE}?t={links.make(login, now + days * 86400)}"

    return Notifier(config.notify, outbound, store, config.hostname,
                    sign=notice_signer(keys, domain, verdicts if config.dkim.check_published else None),
                    link_for=link_for)


def notice_signer(keys: KeyStore, domain: str, verdicts: KeyVerdicts | None = None) -> Signer:
    """With ``verdicts`` (dkim.check_published), notices sign only with keys seen in
    DNS, as customers' mail does (gateway/dkim/publication.py)."""
    async def sign(notice: Notice) -> Notice:
        now = time.time()
        active = verdicts.signing_keys(keys, domain, now) if verdicts is not None else keys.active(domain, now)
        if not active:
            return notice
        # RFC 6376 §5: the signature covers the notice as sent; signed off the loop.
        header = await sign_message_off_loop(notice.message, active, int(now))
        return replace(notice, message=header + notice.message)

    return sign


def build_runtime(loaded: Loaded, *, clock: Callable[[], float] = time.time,
                  quotas: bool = True) -> Runtime:
    """``quotas=False`` runs submission unmetered (benchmarks only: a gateway started
    by ``serve`` always meters)."""
    config = loaded.config
    settings = quota_settings(config)
    metering = Metering(open_store(settings.store, config.base_dir), settings) if quotas else None
    outbound = make_downstream(config.downstream.outbound, config, "outbound")
    if config.store.backend == "redis" and config.hold.postgres is None:
        # Several gateways share the quota store: held mail must be shared too.
        log.warning("hold: held mail is kept in %s, reachable only by gateways that share that "
                    "directory; with several gateways set hold.postgres (docs/content.md, "
                    "\"Several gateways\")", config.hold.path)
    keystore = load_signing_keys(config, loaded.directory)
    held_links = make_held_links(config)
    key_verdicts = KeyVerdicts()  # used while dkim.check_published is on (a reload may turn it)
    notifier = (build_notifier(config, outbound, metering.store, keystore, held_links, key_verdicts)
                if metering is not None else None)
    return Runtime(
        config=config,
        directory=loaded.directory,
        accounts=build_source(config.accounts, loaded.directory),
        keystore=keystore,
        key_verdicts=key_verdicts,
        inbound=make_downstream(config.downstream.inbound, config, "inbound"),
        outbound=outbound,
        scanner=(RspamdClient.from_settings(config.scanner, config.hostname)
                 if config.scanner is not None else None),
        # Any rule can hold (a limit, a suspension, inbound policy, content; reloaded
        # policy files can start to at any time): the hold store always exists.
        held=open_held_store(config.hold, config.base_dir),
        held_links=held_links,
        notifier=notifier,
        resolver=(Resolver.from_settings(config.dns)
                  if config.listeners.inbound and config.inbound_checks else None),
        metering=metering,
        journal=(Journal(metering.store, config.store.journal, clock)
                 if metering is not None else None),
        sender_ids=make_sender_ids(config, create=True),
        # Only where inbound checks run: they are what the reports count.
        dmarc_tally=(DmarcTally(metering.store, clock=clock)
                     if metering is not None and config.listeners.inbound and config.inbound_checks
                     else None),
        metrics=Metrics(listeners=[n for n in ("inbound", "submission", "submissions")
                                   if getattr(config.listeners, n) is not None]),
        clock=clock,
    )


# Seconds between two readings of the store's gauges (portcullis_suspended_accounts).
GAUGE_INTERVAL = 10.0
# How often a slice of the store is swept (Store.sweep).
SWEEP_INTERVAL = 5.0


def observe_certificates(metrics: Metrics, files: dict[str, tuple[Path, Path]]) -> None:
    """portcullis_tls_certificate_expiry_timestamp_seconds per listener, from the
    certificate file it serves (read at start: a new certificate needs a restart)."""
    from cryptography import x509

    for listener, (cert, _key) in files.items():
        try:
            loaded = x509.load_pem_x509_certificate(Path(cert).read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("listeners.%s: certificate expiry not exported: %s", listener, exc)
            continue
        metrics.certificate_expires(listener, loaded.not_valid_after_utc.timestamp())


def tls_files(config: Config) -> dict[str, tuple[Path, Path]]:
    """Certificate and key per listener; a development certificate for submission
    listeners that have none (made once, before workers start, so all share it)."""
    files: dict[str, tuple[Path, Path]] = {}
    dev: tuple[Path, Path] | None = None
    for name in ("inbound", "submission", "submissions"):
        listener = getattr(config.listeners, name)
        if listener is None:
            continue
        if listener.tls is not None:
            files[name] = (listener.tls.cert, listener.tls.key)
        elif name != "inbound":
            if dev is None:
                dev = make_dev_certificate(config.hostname, Path(tempfile.mkdtemp(prefix="portcullis-tls-")))
                log.warning("listeners.%s has no tls: using a self-signed development "
                            "certificate %s (not for real customers)", name, dev[0])
            files[name] = dev
    return files


def install_event_loop_policy() -> None:
    try:
        import uvloop  # optional extra: measured ~25% faster for a plain proxy
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class Gateway:
    """The listeners and what they work with, in one process."""

    def __init__(self, loaded: Loaded, files: dict[str, tuple[Path, Path]], *,
                 clock: Callable[[], float] = time.time, quotas: bool = True,
                 admin: bool = True, supervised: bool = False, share: Share | None = None):
        self.path = loaded.path
        # Reloads re-parse only the policy files changed since (gateway/config/policy_cache.py).
        self._policy_cache = loaded.policy_cache
        self.runtime = build_runtime(loaded, clock=clock, quotas=quotas)
        # With several workers: this one's place among them (gateway/accepting.py).
        self.listeners = SMTPListeners(self.runtime, files, share=share)
        self._tls_files = files
        self.endpoint: OpsHTTPServer | None = None
        # The admin listener (gateway/admin/): in one process only (the first worker),
        # since its console sessions live in that process's memory.
        self.admin: AdminServer | None = None
        self._runs_admin = admin
        self._supervised = supervised
        self._expiry: asyncio.Task | None = None
        self._sweeping: asyncio.Task | None = None
        self._gauges: asyncio.Task | None = None
        rt = self.runtime
        self.key_watch: PublicationWatch | None = None
        if rt.key_verdicts is not None:
            dns = rt.config.dns
            # No cache: the watch wants each record as it is now (docs/dkim.md).
            fresh = Resolver(list(dns.nameservers), port=dns.port, timeout=dns.timeout,
                             cache_size=0)
            self.key_watch = PublicationWatch(
                rt.key_verdicts, lambda: self.runtime.current().keystore,
                lambda: self.runtime.current().config.dkim, fresh, DnsTempError,
                clock=rt.clock, metrics=rt.metrics)
        # The reload's load, while it runs.
        self._loading: asyncio.Future[tuple[Loaded, KeyStore | None]] | None = None
        self._reload_lock = asyncio.Lock()
        # Objects a reload replaced, closed once their transactions are over.
        self._retired = Retirement()

    async def start(self, sockets: dict[str, socket.socket] | None = None) -> None:
        """``sockets``: this worker's, by config field (from `serve`); else opened here."""
        sockets = sockets or {}
        if self.key_watch is not None:
            # The first verdicts before the first message: with DNS up, a published
            # key signs from the start.  Bounded: a slow first round (a hosting
            # gateway's 100,000 selectors) goes on while the listeners open.
            self.key_watch.start()
            if not await self.key_watch.wait_first_round():
                log.warning("dkim: the first look-ups of the keys' DNS records go on after "
                            "start-up: keys not yet seen in DNS do not sign until they end")
        await self.listeners.start(sockets)
        self._expiry = asyncio.create_task(self._expire_held())
        self._sweeping = asyncio.create_task(self._sweep_store())
        assert self.runtime.metrics is not None
        watch_backlog(self.runtime.config.limits.log_backlog, self.runtime.metrics.log_line_dropped)
        self._gauges = asyncio.create_task(self._refresh_gauges(self.runtime.metrics))
        observe_certificates(self.runtime.metrics, self._tls_files)
        self.endpoint = make_endpoint(self.runtime, self.runtime.metrics,
                                      self.listeners.unbound)
        if self.endpoint is not None:
            await self.endpoint.start(sockets.get("http"))
            http = self.runtime.config.http
            assert http is not None
            log.info("operations HTTP on %s port %d", http.address, self.endpoint.bound_port)
        if self._runs_admin and self.runtime.config.admin is not None:
            self.admin = AdminServer(self.runtime, self._reload_from_admin, self.runtime.clock)
            await self.admin.start()

    async def _reload_from_admin(self) -> str:
        """POST /api/reload: what SIGHUP does.  Under a supervisor every worker must
        reload, so the supervisor is sent the SIGHUP it passes on."""
        if self._supervised:
            os.kill(os.getppid(), signal.SIGHUP)
            return "signalled"
        return "reloaded" if await self.reload() else "refused"

    async def _expire_held(self) -> None:
        """Held mail never expires silently: every minute, what is past hold.max_age is
        released or deleted by policy, each decision logged and journaled (admin/actions.py)."""
        while True:
            await asyncio.sleep(60)
            rt = self.runtime.current()
            if rt.held is None:
                continue
            try:
                await actions.expire_held(rt.held, rt.config.hold,
                                          {"inbound": rt.inbound, "outbound": rt.outbound},
                                          rt.clock(), rt.metering, rt.directory)
            except Exception:
                log.exception("held mail expiry failed; retrying in a minute")

    async def _sweep_store(self) -> None:
        """What nothing will charge or read again leaves the store a slice at a time
        (Store.sweep: SQLite's dead rows; in Redis, where keys expire by themselves,
        one pass over the failed-login keys an older version left without an expiry)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            rt = self.runtime.current()
            if rt.metering is None:
                continue
            try:
                removed = await rt.metering.sweep(rt.clock())
            except StoreUnavailable as exc:  # /readyz and the RCPT replies say so already
                log.debug("store sweep skipped: %s", exc)
            except Exception:
                log.exception("store sweep failed; trying again in %.0f seconds", SWEEP_INTERVAL)
            else:
                if removed:
                    log.debug("store sweep: %d rows that could not count again removed", removed)

    async def _refresh_gauges(self, metrics: Metrics) -> None:
        """Facts that live in the store, not in this process, read every
        GAUGE_INTERVAL seconds (not only when /readyz is asked)."""
        while True:
            rt = self.runtime.current()
            if rt.metering is not None:
                try:
                    metrics.set_suspended(len(await rt.metering.store.suspensions()))
                except Exception as exc:  # the store is down: /readyz says so too
                    metrics.set_store_up(False)
                    log.debug("suspended accounts gauge not refreshed: %s", exc)
                else:
                    metrics.set_store_up(True)
            await asyncio.sleep(GAUGE_INTERVAL)

    async def reload(self) -> bool:
        """Re-read the config and policy directory; keep the old ones if anything is wrong.
        One at a time: a SIGHUP during a reload reloads again once it has finished."""
        async with self._reload_lock:
            done = await self._reload()
        if self.runtime.metrics is not None:
            self.runtime.metrics.reloaded(done)
        return done

    async def _reload(self) -> bool:
        """The reload itself.

        The files are parsed in a thread, so the listeners keep answering: every YAML
        file is read within gateway/config/safe_yaml.py's bounds (linear time in its
        size, the GIL given up every few milliseconds), and a load still running after
        ``reload.timeout`` is refused.  A thread cannot be stopped: that load runs on
        unused, and reloads are refused until it has finished.
        """
        old = self.runtime.current()
        if self._loading is not None and not self._loading.done():
            log.error("reload refused: the previous reload is still loading (abandoned after "
                      "reload.timeout): the configuration in force is unchanged")
            return False
        timeout = old.config.reload.timeout
        self._loading = asyncio.ensure_future(
            asyncio.to_thread(load_with_keys, self.path, policy_cache=self._policy_cache))
        try:
            loaded, keystore = await asyncio.wait_for(asyncio.shield(self._loading), timeout)
            config, waiting = split_reload(old.config, loaded.config)
            sender_ids = make_sender_ids(config)
        except ConfigErrors as exc:
            for error in exc.errors:
                log.error("reload: %s", error)
            log.error("reload refused (%d errors): the configuration in force is unchanged",
                      len(exc.errors))
            return False
        except TimeoutError:
            log.error("reload refused: loading took longer than reload.timeout (%gs): the "
                      "configuration in force is unchanged", timeout)
            return False
        except Exception as exc:  # a SIGHUP never ends in a traceback or a dead task
            log.error("reload refused: %s: the configuration in force is unchanged",
                      one_line(f"{type(exc).__name__}: {exc}"))
            return False
        before = directory_counts(old.directory)
        drop = decide_customer_drop(old.directory.customers, loaded.directory.customers,
                                    config.reload.max_customer_drop)
        if drop.refused:
            log.error("reload refused: it would drop %s, more than reload.max_customer_drop "
                      "(%g): the configuration in force is unchanged", one_line(drop.describe()),
                      config.reload.max_customer_drop)
            return False
        if drop.dropped:
            log.warning("reload: drops %s: their domains get 550 and their logins 535 from now on",
                        one_line(drop.describe()))
        for section in waiting:
            log.warning("reload: %s changed: takes effect at the next restart", section)
        applied = changed_sections(old.config, config)
        if applied:
            log.info("reload: applied %s", ", ".join(applied))
        metering = None
        if old.metering is not None:  # the same store; new limits and thresholds
            metering = Metering(old.metering.store, quota_settings(config))
        rebuilt = rebuild(old, config, loaded.directory, metering,
                          lambda c, m: build_notifier(c, old.outbound, m.store, keystore,
                                                      old.held_links, old.key_verdicts))
        new = old.reloaded(config=config, directory=loaded.directory, metering=metering,
                           sender_ids=sender_ids, keystore=keystore, **rebuilt.changes)
        self._retired.retire(rebuilt.retired)
        if self.key_watch is not None:  # new selectors, or the check turned on: look now
            self.key_watch.wake()
        self.listeners.runtime = new  # limits for new connections
        if new.metrics is not None:
            watch_backlog(config.limits.log_backlog, new.metrics.log_line_dropped)
        if self.endpoint is not None:
            self.endpoint.set_autoconfig(autoconfig_site(new))
            self.endpoint.set_mta_sts(mta_sts_site(new))
        settle_heap()
        log.info("reloaded %s: %s (before: %s)", self.path, directory_counts(loaded.directory),
                 before)
        return True

    async def stop(self) -> None:
        grace = self.runtime.config.limits.shutdown_grace
        log.info("shutting down: %d connections, up to %.0fs to finish",
                 self.listeners.active_connections, grace)
        # Returns once every session has closed and released what it held: only
        # then may the store close (a slot left behind refuses the account 454
        # after a restart, until its lease runs out).
        await self.listeners.stop(grace)
        if self._expiry is not None:
            self._expiry.cancel()
        if self._sweeping is not None:
            self._sweeping.cancel()
        if self._gauges is not None:
            self._gauges.cancel()
        await self._retired.close_all()
        if self.key_watch is not None:
            await self.key_watch.stop()
        rt = self.runtime.current()
        if rt.scanner is not None:
            await rt.scanner.close()
        if rt.notifier is not None:
            await rt.notifier.aclose()
        if self.endpoint is not None:
            await self.endpoint.stop()
        if self.admin is not None:
            await self.admin.stop()
        for ds in (self.runtime.inbound, self.runtime.outbound):
            if ds is not None:
                await ds.close()
        await rt.accounts.close()
        if self.runtime.journal is not None:  # the sessions' last decisions
            await self.runtime.journal.drain()
        if self.runtime.dmarc_tally is not None:  # the last DMARC report counts
            await self.runtime.dmarc_tally.drain()
        if self.runtime.metering is not None:
            await self.runtime.metering.store.close()
        if self.runtime.held is not None:
            await self.runtime.held.close()
        log.info("stopped")


async def run_worker(loaded: Loaded, files: dict[str, tuple[Path, Path]],
                     sockets: dict[str, socket.socket], *, admin: bool = True,
                     supervised: bool = False, share: Share | None = None) -> None:
    gateway = Gateway(loaded, files, admin=admin, supervised=supervised, share=share)
    await gateway.start(sockets)
    settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()

    def reloaded(task: asyncio.Task[bool]) -> None:
        reloads.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("reload failed: %s", one_line(f"{type(exc).__name__}: {exc}"))

    def hangup() -> None:
        task = loop.create_task(gateway.reload())
        reloads.add(task)
        task.add_done_callback(reloaded)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    if _early_hangup["seen"]:  # a SIGHUP came while this worker was starting
        _early_hangup["seen"] = False
        hangup()
    await stop.wait()
    await gateway.stop()


def settle_heap() -> None:
    """Move what start-up (or a reload) built out of the collector's way.

    The configuration, every customer's policy and the imported modules live as
    long as the process (or until the next reload).  Left in the oldest
    generation, every full collection walks them all again (millions of objects
    with 100,000 customers) while connections wait: a pause of tens of
    milliseconds in the middle of transactions.  gc.freeze() puts them in the
    permanent generation, so collections only look at what transactions make.
    """
    gc.collect()
    gc.freeze()


# A SIGHUP that arrives before the worker's event loop handles it is kept here and
# acted on once the loop is up (else a reload sent right after start-up is lost).
_early_hangup = {"seen": False}


def _remember_hangup(_signum: int, _frame: object) -> None:
    _early_hangup["seen"] = True


def announce(config: Config) -> None:
    parts = []
    for name in ("inbound", "submission", "submissions"):
        listener = getattr(config.listeners, name)
        if listener is not None:
            parts.append(f"{name} " + " ".join(
                str(Address(name, host, listener.port)) for host in listener.address))
    print("Portcullis listening: " + ", ".join(parts), flush=True)
    sub = config.listeners.submission
    if sub is not None:
        print(f"Try it: swaks --server {Address('', sub.address[0], sub.port)} --tls "
              "--auth-user LOGIN --auth-password PASSWORD --from LOGIN --to someone@example.org",
              flush=True)


def listening_addresses(config: Config) -> list[Address]:
    """Every address the gateway listens on, named by its config field."""
    found = [Address(f"listeners.{name}", host, listener.port, index)
             for name in ("inbound", "submission", "submissions")
             if (listener := getattr(config.listeners, name)) is not None
             for index, host in enumerate(listener.address)]
    if config.http is not None:
        found.append(Address("http", config.http.address, config.http.port))
    return found


def serve(loaded: Loaded, workers: int) -> int:
    # First of all: are the addresses ours?  A second gateway sharing them would get
    # a random share of the connections (gateway/sockets.py).
    try:
        slots = claim(listening_addresses(loaded.config), workers)
    except AddressUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2  # an operator's error, like an invalid config
    try:
        return _serve_on(loaded, workers, slots)
    finally:
        release(slots)


def _serve_on(loaded: Loaded, workers: int, slots: list[dict[str, socket.socket]]) -> int:
    files = tls_files(loaded.config)
    announce(loaded.config)
    # Made once, before the workers fork, so they all read the same secret.
    make_sender_ids(loaded.config, create=True)
    if loaded.config.inbound_checks:
        # The Public Suffix List (DMARC's organisational domain): loaded once here and
        # shared by the forked workers, not by each worker on its first message.
        default_suffix_list()
    # Until the worker's loop listens for it, a SIGHUP must not kill the process.
    signal.signal(signal.SIGHUP, _remember_hangup)
    if workers <= 1:
        install_event_loop_policy()
        asyncio.run(run_worker(loaded, files, slots[0]))
        return 0
    http = loaded.config.http
    if http is not None:
        # Workers write their metrics to files there; any worker's /metrics sums them.
        metrics_module.prepare_multiprocess(
            http.metrics_dir or Path(tempfile.mkdtemp(prefix="portcullis-metrics-")))
    return _supervise(loaded, files, slots)


def load_for_new_worker(started: Loaded) -> Loaded:
    """In a worker started after a SIGHUP: the files as they are now, checked as a
    reload checks them against the configuration the gateway started with; that one
    when they are refused (the reason logged)."""
    try:
        new, _ = load_with_keys(started.path)  # the worker builds its own key store
    except ConfigErrors as exc:
        log.error("new worker: reload refused (%d errors, the first: %s): starting with the "
                  "configuration the gateway started with", len(exc.errors), exc.errors[0])
        return started
    except Exception as exc:  # a worker must start whatever the files hold
        log.error("new worker: reload refused: %s: starting with the configuration the "
                  "gateway started with", one_line(f"{type(exc).__name__}: {exc}"))
        return started
    drop = decide_customer_drop(started.directory.customers, new.directory.customers,
                                new.config.reload.max_customer_drop)
    if drop.refused:
        log.error("new worker: reload refused: it would drop %s: starting with the "
                  "configuration the gateway started with", one_line(drop.describe()))
        return started
    return Loaded(split_reload(started.config, new.config)[0], new.directory, new.path,
                  new.policy_cache)


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the supervisor dies, even by SIGKILL, so no
    orphan keeps serving the port with a stale config."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _supervise(loaded: Loaded, files: dict[str, tuple[Path, Path]],
               slots: list[dict[str, socket.socket]]) -> int:
    """Fork the workers, restart one that dies, pass SIGTERM/SIGINT/SIGHUP on and wait.

    The supervisor holds every slot's sockets while it runs: a worker restarted in a
    slot serves that slot's sockets again, and connections the kernel queued on them
    meanwhile wait for it instead of being reset."""
    workers = len(slots)
    children: dict[int, int] = {}
    started_at: dict[int, float] = {}
    quick_deaths = 0
    stopping = False
    hangups = 0  # SIGHUPs since start: workers started after one load the files anew

    # Open sessions per worker, in shared memory: the workers take connections in turn.
    table = LoadTable(workers)

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, _remember_hangup)  # until run_worker handles it
            # Another slot's socket that is not also this worker's is not its to keep open.
            mine = {id(sock) for sock in slots[slot].values()}
            release({k: sock for k, sock in other.items() if id(sock) not in mine}
                    for i, other in enumerate(slots) if i != slot)
            try:
                install_event_loop_policy()
                asyncio.run(run_worker(load_for_new_worker(loaded) if hangups else loaded, files,
                                       slots[slot], admin=slot == 0, supervised=True,
                                       share=Share(table, slot)))
                code = 0
            except Exception:
                log.exception("worker %d crashed", slot)
                code = 1
            flush_logs()  # os._exit skips logging.shutdown()
            os._exit(code)
        children[pid] = slot
        started_at[pid] = time.monotonic()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        # No worker will be started again: once the workers close theirs, the
        # addresses are free (clients then try the next MX at once).
        release(slots)
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def hangup(signum: int, _frame: object) -> None:
        # Loading the files here could stall or kill the supervisor (a hostile file,
        # issue 14): it only remembers that a reload was asked for and passes it on;
        # a worker started from now on (to replace one that died) loads them itself.
        nonlocal hangups
        hangups += 1
        for pid in children:
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, hangup)
    for slot in range(workers):
        spawn(slot)
    log.info("started %d workers", workers)
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        slot = children.pop(pid, None)
        if slot is None:
            continue
        table.gone(slot)  # the others stop leaving connections to it
        if metrics_module.is_multiprocess():
            metrics_module.worker_exited(pid)
        if not stopping:
            if time.monotonic() - started_at.pop(pid, 0.0) < 5:
                quick_deaths += 1
            if quick_deaths >= 2 * workers:
                # Workers die as soon as they start: restarting them forever helps
                # nobody (a container orchestrator should see the failure).
                log.error("workers keep dying at start-up; stopping (see the errors above)")
                stopping = True
                for other in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(other, signal.SIGTERM)
                status = 1
                continue
            log.error("worker %d (pid %d) exited with %d; restarting", slot, pid, code)
            time.sleep(0.5)
            spawn(slot)
        elif os.waitstatus_to_exitcode(code) != 0:
            status = 1
    return status


def worker_count(value: str) -> int:
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = int(value)
    if count < 1:
        raise ValueError("at least one worker")
    return count


class JsonFormatter(logging.Formatter):
    """One JSON object per line; transaction lines carry their fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(), "pid": record.process,
            "logger": record.name, "message": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        # default=str: a fact a rule hands over as an object is logged as its text.
        return json.dumps(data, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    # Written by a thread of its own, never by the event loop (gateway/log_output.py).
    handler = BatchedLogHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # aiosmtpd logs every command line at INFO, and warns about its own
    # deprecated login_data, which it sets itself.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
