"""Submission throughput and latency: Portcullis against Postfix and Postfix + OpenDKIM, in one run.

    python -m bench.submission [--messages 3000] [--sessions 20] [--size 5120] [--warmup 200]
                               [--client-processes 2] [--latency-seconds 8] [--rounds 1]
                               [--baseline CHECKOUT] [--baseline-python PYTHON]

One client (bench/submission_client.py: asyncio + aiosmtplib in a few processes)
drives every row the same way: ``--sessions`` concurrent sessions, each its own
account, STARTTLS then AUTH (PLAIN or LOGIN, half each), then a fixed share of
``--messages`` one-recipient messages of ``--size`` bytes, each as fast as the
last is answered.
Each row has its own fresh smtp-sink as the place mail is forwarded to:

    aiosmtpd ceiling        aiosmtpd STARTTLS + AUTH, no forwarding (bench/submission_ceiling.py)
    Postfix                 Postfix submission: TLS, Dovecot SASL, sender login maps
    Postfix + OpenDKIM      the same, Debian's OpenDKIM milter signing every message (RSA-2048)
    portcullis 1|auto       `portcullis serve --workers 1|auto`, SQLite or Redis store,
                            quotas and compromise signals counted, RSA-2048 DKIM signing
    nothing metered         `portcullis serve --workers 1` built without its store: no
                            quota, lockout, slot or compromise signal (bench only,
                            bench/submission_peers.py UNMETERED); the metered one-worker
                            rows' CPU per message above it is metering's share of the path
    (with --baseline)       each portcullis row also from CHECKOUT (e.g. a git worktree of
                            an older commit), right after this checkout's, and every
                            other round right before it
    (--baseline-python)     the baseline rows on another interpreter (a virtualenv's
                            python): with no --baseline, this checkout on two
                            interpreters (docs/operations.md, "Which Python")

Before it is timed, each row is checked and warmed: a logged-in account sending
as another account must be refused (the sender check is on), then ``--warmup``
untimed messages.  After it, the row must have done what its label says: the
sink received every message (none for the ceiling), each signed once with
rsa-sha256 by the right domain where the row signs (a sample verified with
dkimpy) and unsigned where it does not.  A row that fails a check stops the
bench with the reason.

Postfix answers 250 once a message is in its queue and forwards it afterwards:
its msg/s is the rate it accepts mail, and its CPU is counted until the sink has
every message, so it includes the forwarding (the gateway forwards before it
answers).

The table: msg/s and its ratio to Postfix + OpenDKIM; p50/p99 of MAIL to the final
reply after DATA; the median AUTH time per session; the server's CPU per message
(user + system of its whole process tree, from /proc, children that exited
included: Postfix with its Dovecot and OpenDKIM, the gateway with its Redis; the
sink and the client are not counted); its memory: the sum of its processes' RSS
high-water marks (which counts pages shared by many processes, Postfix's forty of
them, again for each) and its largest total PSS sampled every 0.25 s (shared pages
split among their users); and the client's own CPU per message.  The ceiling row
shows how fast the client can go here: a row well below it is not limited by the
client.  Then paced rows: the client sends at half of a row's peak rate, and the
p50/p99 it sees and the server's CPU per message, with the ceiling at the
one-worker gateway's pace as the reference for what the gateway adds.  Last,
metering's share of the path: the metered one-worker rows' CPU per message
above the row with nothing metered, at each row's peak and at the same pace
(the unmetered gateway run again at each metered row's paced rate: a server's
CPU per message falls as its rate rises, and the unmetered row peaks higher).

Memory per message under load is the peak columns above; then, after the timed
run, each forwarding row takes one ``--big-mb`` MiB message (50 by default) in a
session of its own, with every process's RSS high-water mark reset before it
(/proc/PID/clear_refs): the last two columns are that message's peak, the sum of
VmHWM and the largest total PSS sampled every 50 ms.  Every row accepts 64 MiB.

With ``--rounds N`` every row is measured N times, each time from a fresh start,
rows interleaved (each round starts one row later), and the table has the medians
and each rate's spread: on a shared machine one round's figures swing widely.

Accounts use SHA512-CRYPT hashes in Dovecot and in the gateway alike.  Needs
root (Postfix, smtp-sink dropping to nobody, a private Dovecot) and Debian's
postfix, dovecot-core, opendkim and redis-server.  The client and the servers
share the machine's cores: compare rows of one run, not runs on other machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inbound import percentile
from bench.interpreter import interpreter
from bench.submission_checks import (
    MemoryPeak,
    Sink,
    check_signed,
    check_unsigned,
    refuses_mismatched_sender,
    tree_cpu,
    tree_peak_rss,
    tree_pids,
)
from bench.submission_client import Load, Outcome, message, run_load, send_one
from bench.submission_peers import (
    DOMAIN,
    Ceiling,
    OpenDKIM,
    Portcullis,
    PostfixSubmission,
    Server,
    accounts,
)
from tests.support.dkim_keys import rsa_key

REFERENCE = "Postfix + OpenDKIM"
CEILING = "aiosmtpd STARTTLS + AUTH, no forwarding (ceiling)"


@dataclass(frozen=True)
class Setting:
    """What every row of one run shares."""
    tmp: Path
    cert: tuple[Path, Path]
    logins: tuple[tuple[str, str], ...]
    messages: int  # timed, over all sessions
    warmup: int  # untimed, over all sessions
    size: int = 5120
    processes: int = 2
    latency_seconds: float = 8.0
    big_mb: int = 50  # one message this large after the timed run (0: none)


@dataclass(frozen=True)
class RowSpec:
    label: str
    start: Callable[[Setting, Path, int], Server]  # (setting, row dir, sink port)
    signs: bool
    forwards: bool = True
    checks_sender: bool = True
    paced: bool = False  # also a latency run at half this row's peak


@dataclass
class Row:
    label: str
    rate: float
    p50: float
    p99: float
    auth: float
    cpu_per_message: float
    peak_rss: int  # the sum of the processes' VmHWM
    peak_pss: int  # the largest total PSS sampled
    client_cpu_per_message: float
    delivered: int
    signed: int
    refusal: str
    paced: tuple[float, float, float, float] | None = None  # (rate, p50, p99, server CPU/msg)
    rates: tuple[float, ...] = ()  # each round's, when combined
    big_rss: int = 0  # one --big-mb message alone: the sum of VmHWM, reset before it
    big_pss: int = 0  # ... and the largest total PSS sampled while it was sent


def gateway_row(label: str, workers: str, store: str, checkout: Path | None = None,
                paced: bool = False, python: str | None = None) -> RowSpec:
    def start(s: Setting, d: Path, sink_port: int) -> Server:
        return Portcullis(d, s.cert, s.logins, sink_port, workers, store, checkout, python)
    return RowSpec(label, start, signs=True, paced=paced)


def postfix_row(label: str, opendkim: bool, paced: bool = False) -> RowSpec:
    def start(s: Setting, d: Path, sink_port: int) -> Server:
        return PostfixSubmission(s.cert, s.logins, sink_port,
                                 OpenDKIM(rsa_key(2048)) if opendkim else None)
    return RowSpec(label, start, signs=opendkim, paced=paced)


def ceiling_row() -> RowSpec:
    def start(s: Setting, d: Path, sink_port: int) -> Server:
        return Ceiling(d, s.cert, s.logins)
    return RowSpec(CEILING, start, signs=False, forwards=False, checks_sender=False)


BASELINE_PREFIX = "  baseline "
# The one-worker gateway with nothing metered: metering's share of the path is the
# CPU a message costs more in the metered one-worker rows (print_table).
UNMETERED = "portcullis --workers 1, nothing metered"


def rows(baseline: Path | None, only: list[str], baseline_python: str | None = None) -> list[RowSpec]:
    """Every row, or those whose label contains one of ``only`` (with their baseline rows:
    from ``baseline``, on ``baseline_python``, or both)."""
    def wanted(label: str) -> bool:
        return not only or any(text in label for text in only)

    out = [r for r in (ceiling_row(), postfix_row("Postfix (Dovecot SASL, sender login maps)", False),
                       postfix_row(REFERENCE, True, paced=True)) if wanted(r.label)]
    if wanted(UNMETERED):
        out.append(gateway_row(UNMETERED, "1", "none"))
    for workers in ("1", "auto"):
        for store in ("sqlite", "redis"):
            label = f"portcullis --workers {workers}, {store}"
            if not wanted(label):
                continue
            out.append(gateway_row(label, workers, store, paced=workers == "1"))
            if baseline is not None or baseline_python is not None:
                name = baseline.name if baseline is not None else "this checkout"
                if baseline_python is not None:
                    name += f" on {baseline_python}"
                out.append(gateway_row(f"{BASELINE_PREFIX}{name}", workers, store, baseline,
                                       paced=workers == "1", python=baseline_python))
    return out


def in_turn(order: list[int], specs: list[RowSpec]) -> list[int]:
    """``order`` with each gateway row's baseline moved just before it: run every other
    round, so that neither checkout is always the one measured second (bench/inbound.py
    saw the second run up to 10% faster with --workers auto, whichever code it ran)."""
    out = list(order)
    j = 0
    while j < len(out) - 1:
        if out[j + 1] == out[j] + 1 and specs[out[j + 1]].label.startswith(BASELINE_PREFIX):
            out[j], out[j + 1] = out[j + 1], out[j]
            j += 2
        else:
            j += 1
    return out


def load(s: Setting, port: int, total: int, rate: float | None = None) -> Load:
    return Load(port, s.logins, max(1, total // len(s.logins)), s.size, rate, s.processes)


def measure_row(spec: RowSpec, s: Setting) -> Row:
    """Start the row's sink and server, check, warm, time, verify; stop both, whatever happens."""
    d = Path(tempfile.mkdtemp(prefix="row-", dir=s.tmp))
    with ExitStack() as stack:
        sink = stack.enter_context(Sink())
        server = stack.enter_context(spec.start(s, d, sink.port))
        refusal = ""
        if spec.checks_sender:
            (login, password), (other, _) = s.logins[0], s.logins[1]
            refusal = refuses_mismatched_sender(server.port, login, password, other)
        forwarded = 0

        def sent(outcome: Outcome) -> Outcome:
            # Postfix forwards after it answers: wait for the sink, so a row's CPU
            # includes its forwarding and the next run starts on an empty queue.
            nonlocal forwarded
            forwarded += outcome.messages if spec.forwards else 0
            sink.wait_for(forwarded)
            return outcome

        with MemoryPeak(server.roots()) as memory:
            sent(run_load(load(s, server.port, s.warmup)))
            cpu = tree_cpu(server.roots())
            timed = sent(run_load(load(s, server.port, s.messages)))
            cpu = tree_cpu(server.roots()) - cpu
        peak = tree_peak_rss(server.roots())
        paced = None
        if spec.paced and s.latency_seconds > 0:
            paced_cpu = tree_cpu(server.roots())
            paced = sent(run_load(paced_load(s, server.port, timed.rate / 2)))
            paced_cpu = (tree_cpu(server.roots()) - paced_cpu) / paced.messages
        big_rss = big_pss = 0
        if s.big_mb and spec.forwards:  # the ceiling row takes aiosmtpd's 32 MiB at most
            big_rss, big_pss = one_big_message(s, server)
            forwarded += 1
            sink.wait_for(forwarded, timeout=300)
        messages = sink.messages()
        if len(messages) != forwarded:
            raise RuntimeError(f"{spec.label}: the sink holds {len(messages)} messages, "
                               f"expected {forwarded}")
        if spec.signs:
            record = server.dkim_record if isinstance(server, Portcullis) else rsa_key(2048).record
            check_signed(messages, record, DOMAIN)
        else:
            check_unsigned(messages)
        return Row(spec.label, timed.rate, percentile(timed.latencies, 50),
                   percentile(timed.latencies, 99), statistics.median(timed.auth),
                   cpu / timed.messages, peak, memory.peak, timed.client_cpu / timed.messages,
                   len(messages), len(messages) if spec.signs else 0, refusal,
                   None if paced is None else (paced.rate, percentile(paced.latencies, 50),
                                               percentile(paced.latencies, 99), paced_cpu),
                   big_rss=big_rss, big_pss=big_pss)


def one_big_message(s: Setting, server: Server) -> tuple[int, int]:
    """Peak memory while one ``s.big_mb`` MiB message goes through in one session:
    each process's RSS high-water mark is reset first (clear_refs 5), so the peak
    is this message's, not the load's before it."""
    for pid in tree_pids(server.roots()):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass  # gone meanwhile
    login, password = s.logins[0]
    with MemoryPeak(server.roots(), interval=0.05) as memory:
        send_one(server.port, login, password, message(login, 10**6, s.big_mb * 2**20))
    return tree_peak_rss(server.roots()), memory.peak


def combine(rounds: list[Row]) -> Row:
    """One row from its rounds: medians; memory the largest seen; messages all counted."""
    def median(name: str) -> float:
        return statistics.median(getattr(r, name) for r in rounds)
    paced = [r.paced for r in rounds if r.paced is not None]
    return Row(rounds[0].label, median("rate"), median("p50"), median("p99"), median("auth"),
               median("cpu_per_message"), max(r.peak_rss for r in rounds),
               max(r.peak_pss for r in rounds), median("client_cpu_per_message"),
               sum(r.delivered for r in rounds), sum(r.signed for r in rounds), rounds[0].refusal,
               tuple(statistics.median(p[i] for p in paced) for i in range(4)) if paced else None,
               tuple(r.rate for r in rounds),  # type: ignore[arg-type]
               max(r.big_rss for r in rounds), max(r.big_pss for r in rounds))


def paced_load(s: Setting, port: int, rate: float) -> Load:
    return load(s, port, max(len(s.logins), int(rate * s.latency_seconds)), rate)


def paced_unmetered(s: Setting, spec: RowSpec, rate: float) -> tuple[float, float]:
    """The unmetered row at another row's pace, warmed first: (rate, server CPU per
    message).  Metering's share at equal load: a server's CPU per message falls as
    its rate rises (each turn of its loop, each system call, serves more), and the
    unmetered row's own peak is higher."""
    d = Path(tempfile.mkdtemp(prefix="row-", dir=s.tmp))
    with Sink() as sink, spec.start(s, d, sink.port) as server:
        run_load(load(s, server.port, s.warmup))
        cpu = tree_cpu(server.roots())
        out = run_load(paced_load(s, server.port, rate))
        return out.rate, (tree_cpu(server.roots()) - cpu) / out.messages


def paced_ceiling(s: Setting, rate: float) -> tuple[float, float, float]:
    """The reference for the latency a server adds: the ceiling at the same pace."""
    d = Path(tempfile.mkdtemp(prefix="row-", dir=s.tmp))
    with Ceiling(d, s.cert, s.logins) as ceiling:
        out = run_load(paced_load(s, ceiling.port, rate))
    return out.rate, percentile(out.latencies, 50), percentile(out.latencies, 99)


def self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=bench.submission.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def print_table(rows_seen: list[Row], s: Setting, reference_pace: tuple[float, float, float] | None,
                unmetered_paced: dict[str, tuple[float, float]] | None = None) -> None:
    reference = next((r.rate for r in rows_seen if r.label == REFERENCE), None)
    print(f"\nSubmission: {len(s.logins)} sessions (one account each), STARTTLS + AUTH PLAIN/LOGIN, "
          f"{s.messages} timed messages of {s.size} bytes a row (after {s.warmup} untimed), "
          f"{os.cpu_count()} cores; latency is MAIL to the final reply after DATA; the median "
          f"of {max(len(r.rates) for r in rows_seen)} round(s); gateways on {interpreter()}\n")
    print(f"{'row':<52} {'msg/s':>7} {'(rounds)':>9} {'× P+OD':>7} {'p50 ms':>7} {'p99 ms':>7} {'AUTH ms':>8} "
          f"{'CPU/msg':>9} {'ΣRSS peak':>9} {'PSS peak':>9} {'client CPU/msg':>15}"
          f"{f'{s.big_mb}MB ΣRSS':>11} {f'{s.big_mb}MB PSS':>10}")
    for r in rows_seen:
        ratio = f"{r.rate / reference:>7.2f}" if reference else f"{'':>7}"
        spread = f"{min(r.rates):.0f}-{max(r.rates):.0f}" if len(r.rates) > 1 else ""
        print(f"{r.label:<52} {r.rate:>7.0f} {spread:>9} {ratio} {1e3 * r.p50:>7.1f} {1e3 * r.p99:>7.1f} "
              f"{1e3 * r.auth:>8.1f} {1e6 * r.cpu_per_message:>6.0f} us {r.peak_rss / 2**20:>6.0f} MB "
              f"{r.peak_pss / 2**20:>6.0f} MB "
              f"{1e6 * r.client_cpu_per_message:>12.0f} us"
              f"{r.big_rss / 2**20:>8.0f} MB {r.big_pss / 2**20:>7.0f} MB")
    ceiling = next((r for r in rows_seen if r.label == CEILING), None)
    fastest = max((r for r in rows_seen if r.label != CEILING), key=lambda r: r.rate, default=None)
    if ceiling is not None and fastest is not None:
        headroom = ceiling.rate / fastest.rate
        print(f"\n× P+OD: msg/s over Postfix + OpenDKIM's.  The client drove the ceiling at "
              f"{headroom:.1f}× the fastest other row ({fastest.label.strip()}): "
              + ("it is not what limits the rows." if headroom >= 1.5 else
                 "TOO CLOSE: the client may limit the rows; raise --client-processes."))
    print("\nChecked: every forwarding row's sink received every message; signing rows: one "
          "rsa-sha256 DKIM-Signature each, a sample verified; sender-mismatch refusals:")
    for r in rows_seen:
        if r.refusal:
            print(f"  {r.label:<50} {r.refusal[:70]}")
    against = [(rows_seen[i - 1], r) for i, r in enumerate(rows_seen) if r.label.startswith(BASELINE_PREFIX)]
    if against:
        print("\nThis checkout / the baseline (same run): msg/s ratio, server CPU per message ratio")
        for this, base in against:
            print(f"  {this.label:<50} {this.rate / base.rate:>6.3f} "
                  f"{this.cpu_per_message / base.cpu_per_message:>6.3f}")
    unmetered = next((r for r in rows_seen if r.label == UNMETERED), None)
    metered = [r for r in rows_seen if r.label.startswith("portcullis --workers 1, ")
               and r.label != UNMETERED]
    if unmetered is not None and metered:
        print(f"\nMetering in the path: the server's CPU per message more than {UNMETERED!r} "
              f"({1e6 * unmetered.cpu_per_message:.0f} us), and its share of the metered row's")
        for r in metered:
            extra = r.cpu_per_message - unmetered.cpu_per_message
            print(f"  {r.label:<50} {1e6 * extra:>6.0f} us  {extra / r.cpu_per_message:>6.1%}")
        if unmetered_paced:
            print("... and at the same pace (half the metered row's peak; the unmetered row "
                  "paced alike after the rounds, warmed first)")
            for r in metered:
                if r.label not in unmetered_paced or r.paced is None:
                    continue
                rate, cpu = unmetered_paced[r.label]
                extra = r.paced[3] - cpu
                print(f"  {r.label:<50} {1e6 * extra:>6.0f} us  {extra / r.paced[3]:>6.1%}  "
                      f"({1e6 * r.paced[3]:.0f} against {1e6 * cpu:.0f} us a message at "
                      f"{r.paced[0]:.0f} and {rate:.0f} msg/s)")
    paced = [r for r in rows_seen if r.paced]
    if paced:
        print("\nPaced: the same client at half a row's peak rate (p50/p99 MAIL to final DATA reply)")
        print(f"{'row':<52} {'msg/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU/msg':>9}")
        for r in paced:
            rate, p50, p99, cpu = r.paced  # type: ignore[misc]
            print(f"{r.label:<52} {rate:>7.0f} {1e3 * p50:>7.1f} {1e3 * p99:>7.1f} {1e6 * cpu:>6.0f} us")
        if reference_pace is not None:
            rate, p50, p99 = reference_pace
            print(f"{CEILING[:52]:<52} {rate:>7.0f} {1e3 * p50:>7.1f} {1e3 * p99:>7.1f}")
            gw = next(r for r in paced if r.label.startswith("portcullis --workers 1, sqlite"))
            print(f"{'added by portcullis --workers 1, sqlite (vs ceiling)':<52} {'':>7} "
                  f"{1e3 * (gw.paced[1] - p50):>7.1f} {1e3 * (gw.paced[2] - p99):>7.1f}")  # type: ignore[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--latency-seconds", type=float, default=8.0,
                        help="length of each paced run (0: none)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times every row is measured (each from a fresh start), rows "
                             "interleaved; the table has the medians")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also run every portcullis row from this checkout, same run")
    parser.add_argument("--baseline-python", metavar="PYTHON",
                        help="run the baseline rows on this interpreter (a virtualenv's python "
                             "with the gateway's dependencies); without --baseline, this "
                             "checkout's code on two interpreters, same run")
    parser.add_argument("--big-mb", type=int, default=50,
                        help="after the timed run, one message of this many MiB alone, for its "
                             "peak memory (0: none)")
    parser.add_argument("--only", action="append", metavar="TEXT", default=[],
                        help="run only the rows whose label contains TEXT (repeatable); "
                             "the paced reference needs the one-worker SQLite row")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/submission.py needs root (Postfix, Dovecot, smtp-sink)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="portcullis-bench-") as tmp:
        Path(tmp).chmod(0o755)  # Postfix and smtp-sink drop privileges
        s = Setting(Path(tmp), self_signed(Path(tmp)), accounts(args.sessions), args.messages,
                    args.warmup, args.size, args.client_processes, args.latency_seconds, args.big_mb)
        specs = rows(args.baseline, args.only, args.baseline_python)
        measured: list[list[Row]] = [[] for _ in specs]
        for round_number in range(args.rounds):
            # Each round starts one row later: the machine's load drifts, and over the
            # rounds every row meets the drift at a different place.
            shift = round_number % len(specs)
            order = [*range(shift, len(specs)), *range(shift)]
            for i in (in_turn(order, specs) if round_number % 2 else order):
                measured[i].append(measure_row(specs[i], s))
                print(f"  round {round_number + 1}: {specs[i].label.strip()}: "
                      f"{measured[i][-1].rate:.0f} msg/s", file=sys.stderr, flush=True)
        seen = [combine(r) for r in measured]
        gw = next((r for r in seen if r.label == "portcullis --workers 1, sqlite"), None)
        reference_pace = paced_ceiling(s, gw.paced[0]) if gw and gw.paced else None
        unmetered = next((spec for spec in specs if spec.label == UNMETERED), None)
        unmetered_paced = {r.label: paced_unmetered(s, unmetered, r.paced[0]) for r in seen
                           if unmetered is not None and r.paced is not None
                           and r.label.startswith("portcullis --workers 1, ")}
    print_table(seen, s, reference_pace, unmetered_paced)
    return 0


if __name__ == "__main__":
    sys.exit(main())
