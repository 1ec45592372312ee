"""The one submission client every row of bench/submission.py is measured with.

Each session is its own account: connect, EHLO, STARTTLS, EHLO, AUTH PLAIN (even
sessions) or AUTH LOGIN (odd ones), timed ("AUTH time per session"), then a fixed number of one-recipient messages, each
timed from MAIL to the final reply after DATA (aiosmtplib's ``sendmail``: MAIL,
RCPT, DATA, the message, the final reply).  The sessions are spread over a few
client processes (one Python process runs out of CPU before the fastest peer
does); all of them log in first, then start together on a shared clock
(``time.perf_counter`` is CLOCK_MONOTONIC on Linux, the same in every process).
Flat out, each session sends its next message as soon as the last is answered;
paced, message ``k`` of session ``s`` of ``S`` starts at ``start + (k*S + s)/rate``
(or as soon as the session is free, if it is late).

Any refusal or error ends the run with an exception: a bench must not time a
peer that refuses its mail.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import ssl
import time
from dataclasses import dataclass, field

RECIPIENT = "someone@elsewhere.example"


@dataclass(frozen=True)
class Load:
    port: int
    accounts: tuple[tuple[str, str], ...]  # (login, password): one session each
    messages_per_session: int
    size: int = 5120
    rate: float | None = None  # messages/s over all sessions; None: flat out
    processes: int = 2


@dataclass
class Outcome:
    messages: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # MAIL → final DATA reply
    auth: list[float] = field(default_factory=list)  # AUTH command → 235, per session
    client_cpu: float = 0.0  # CPU seconds of the client processes while sending

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def message(login: str, number: int, size: int) -> bytes:
    head = (f"From: <{login}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench {number}\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{number}.{login.replace('@', '.')}@bench.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n").encode()
    line = b"All work and no play makes a benchmark a dull message." + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def client_tls() -> ssl.SSLContext:
    # Every peer presents the same self-signed certificate: nothing to verify here.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _session(load: Load, index: int, sessions: int, login: str, password: str,
                   ready: asyncio.Event, start: list[float], out: Outcome) -> None:
    import aiosmtplib

    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=load.port, start_tls=False, timeout=60,
                           local_hostname="client.bench.example")
    await smtp.connect()
    await smtp.starttls(tls_context=client_tls())
    await smtp.ehlo()  # RFC 3207 §4.2: what was learnt before TLS is forgotten
    began = time.perf_counter()
    # Half the sessions log in with PLAIN, half with LOGIN (RFC 4954; both are what
    # mail clients use), so both mechanisms of every peer are exercised.
    if index % 2:
        await smtp.auth_login(login, password)
    else:
        await smtp.auth_plain(login, password)
    out.auth.append(time.perf_counter() - began)
    await ready.wait()
    bodies = [message(login, k, load.size) for k in range(load.messages_per_session)]
    for k, body in enumerate(bodies):
        if load.rate is not None:
            delay = start[0] + (k * sessions + index) / load.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        began = time.perf_counter()
        errors, reply = await smtp.sendmail(login, [RECIPIENT], body)
        out.latencies.append(time.perf_counter() - began)
        if errors:
            raise RuntimeError(f"{login}: recipient refused: {errors}")
        out.messages += 1
    await smtp.quit()


async def _process_main(load: Load, first: int, accounts: tuple[tuple[str, str], ...],
                        conn) -> Outcome:  # type: ignore[no-untyped-def]
    out = Outcome()
    ready = asyncio.Event()
    start = [0.0]
    sessions = len(load.accounts)
    tasks = [asyncio.create_task(_session(load, first + i, sessions, login, password,
                                          ready, start, out))
             for i, (login, password) in enumerate(accounts)]
    while len(out.auth) < len(accounts):
        done = [t for t in tasks if t.done()]
        for t in done:
            t.result()  # a session that failed before AUTH ended: raise its error
        await asyncio.sleep(0.005)
    loop = asyncio.get_running_loop()
    conn.send("ready")
    start[0] = await loop.run_in_executor(None, conn.recv)
    # The start is a moment just ahead, the same for every process: wait for it, or
    # a process would send before the clock the rate is measured on has started.
    await asyncio.sleep(max(0.0, start[0] - time.perf_counter()))
    cpu = time.process_time()
    ready.set()
    await asyncio.gather(*tasks)
    out.seconds = time.perf_counter()  # the end, on the shared clock
    out.client_cpu = time.process_time() - cpu
    return out


def _process(load: Load, first: int, accounts: tuple[tuple[str, str], ...], conn) -> None:  # type: ignore[no-untyped-def]
    try:
        try:
            import uvloop

            out = uvloop.run(_process_main(load, first, accounts, conn))
        except ImportError:
            out = asyncio.run(_process_main(load, first, accounts, conn))
        conn.send(out)
    except BaseException as exc:
        conn.send(RuntimeError(f"client session failed: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_load(load: Load, timeout: float = 600) -> Outcome:
    """Run the load; every client process is joined (or killed) before this returns."""
    ctx = multiprocessing.get_context("fork")
    n = max(1, min(load.processes, len(load.accounts)))
    shares = [load.accounts[i::n] for i in range(n)]
    # Session indexes are global so the paced schedule interleaves all processes.
    procs, pipes = [], []
    try:
        for i, share in enumerate(shares):
            parent, child = ctx.Pipe()
            indexes_first = sum(len(s) for s in shares[:i])
            p = ctx.Process(target=_process, args=(load, indexes_first, share, child), daemon=True)
            p.start()
            child.close()
            procs.append(p)
            pipes.append(parent)
        for pipe in pipes:
            _expect(pipe, timeout, "ready")
        start = time.perf_counter() + 0.05
        for pipe in pipes:
            pipe.send(start)
        total = Outcome()
        ends = []
        for pipe in pipes:
            out = _expect(pipe, timeout, Outcome)
            total.messages += out.messages
            total.latencies += out.latencies
            total.auth += out.auth
            total.client_cpu += out.client_cpu
            ends.append(out.seconds)
        total.seconds = max(ends) - start
        return total
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)


def _expect(pipe, timeout: float, what):  # type: ignore[no-untyped-def]
    if not pipe.poll(timeout):
        raise RuntimeError(f"client process silent for {timeout} s")
    got = pipe.recv()
    if isinstance(got, BaseException):
        raise got
    if (what == "ready" and got != "ready") or (isinstance(what, type) and not isinstance(got, what)):
        raise RuntimeError(f"client process sent {got!r}")
    return got


def send_one(port: int, login: str, password: str, body: bytes, timeout: float = 300) -> None:
    """One message in one session (STARTTLS, AUTH PLAIN), from this process: the
    bench's large message, whose memory cost is the server's, not the client's."""
    import aiosmtplib

    async def main() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=timeout,
                               local_hostname="client.bench.example")
        await smtp.connect()
        await smtp.starttls(tls_context=client_tls())
        await smtp.ehlo()
        await smtp.auth_plain(login, password)
        errors, _reply = await smtp.sendmail(login, [RECIPIENT], body)
        if errors:
            raise RuntimeError(f"{login}: recipient refused: {errors}")
        await smtp.quit()

    asyncio.run(main())
