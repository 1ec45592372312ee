"""Where a submitted message's CPU goes: a profile of one bench/submission.py row.

    python -m bench.profile_submission [--only "workers 1, sqlite"] [--messages 20000]
                                       [--delay 8] [--seconds 5] [--top 25]

Runs ``python -m bench.submission --only ROW`` (one gateway row, no latency or big
message runs) and, once its timed run is under way (``--delay`` seconds after the
gateway started: past the warm-up), samples the gateway's processes twice, one
after the other, for ``--seconds`` each (``--messages`` must last the delay and
both samplers; the default, at 800 msg/s, lasts 25 s):

    perf record   every thread, native code included: the CPU's share by library
                  (the interpreter, the kernel, RSA in cryptography's OpenSSL,
                  SQLite, uvloop, TLS), which the Python profilers cannot see
    py-spy        the event loop's thread, its Python functions (self and
                  inclusive shares of its busy samples; idle waits not counted)

Sampling shares, not timings: they say where to look, and a change's effect is
measured with bench/submission.py's ratios.  Needs root, Debian's linux-perf and
py-spy (PyPI).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Shared objects, by what they do for a submitted message.
_LIBRARIES = [
    ("libpython", "the Python interpreter"),
    # Debian's python3 links the interpreter into its binary (no libpython).
    ("python3", "the Python interpreter"),
    ("kernel", "the kernel (sockets, futexes, files)"),
    ("_rust.abi3", "cryptography's OpenSSL (the RSA signature)"),
    ("libsqlite3", "SQLite"),
    ("libc.so", "libc (memory, copies)"),
    ("loop.cpython", "uvloop"),
    ("libcrypto", "OpenSSL libcrypto (TLS ciphers)"),
    ("libssl", "OpenSSL libssl (TLS)"),
]


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def gateway_pids(bench: subprocess.Popen) -> list[int]:
    """The gateway's processes (supervisor and workers) this bench started, not
    another gateway on the machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"gateway.cli serve" not in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                continue
            pid = int(entry.name)
            while pid > 1 and pid != bench.pid:
                pid = _parent(pid)
        except (OSError, ValueError):
            continue
        if pid == bench.pid:
            found.append(int(entry.name))
    return sorted(found)


def perf_by_library(pids: list[int], seconds: float, out: Path) -> list[tuple[float, str]]:
    data = out / "perf.data"
    subprocess.run(["perf", "record", "-F", "999", "-p", ",".join(map(str, pids)), "-o", str(data),
                    "--", "sleep", str(seconds)], check=True, capture_output=True)
    report = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "--stdio"],
                            check=True, capture_output=True, text=True).stdout
    rows = []
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
        if m:
            rows.append((float(m.group(1)), m.group(2)))
    return rows


def pyspy_main_thread(pid: int, seconds: float, out: Path) -> tuple[int, collections.Counter, collections.Counter]:
    raw = out / "pyspy.txt"
    spy = Path(sys.executable).parent / "py-spy"
    subprocess.run([str(spy) if spy.exists() else "py-spy", "record", "--pid", str(pid), "--duration",
                    str(int(seconds)), "--rate", "250", "--format", "raw", "-o", str(raw)],
                   check=True, capture_output=True)
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "Runner.run" not in stack:  # not the event loop's thread
            continue
        n = int(count)
        total += n
        frames = [re.sub(r"\s*\((?:[^()]*/)?([^()/]+):\d+\)$", r" (\1)", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return total, own, inclusive


def sampling_arguments(doc: str, messages: int, delay: float) -> argparse.ArgumentParser:
    """The options both profilers take (bench/profile_inbound.py too)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=messages)
    parser.add_argument("--delay", type=float, default=delay)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=25)
    return parser


def cannot_sample(script: str) -> bool:
    """True, having said why, when this process cannot run perf on the gateway."""
    if os.geteuid() == 0 and shutil.which("perf") is not None:
        return False
    print(f"{script} needs root and perf (Debian's linux-perf)", file=sys.stderr)
    return True


def main() -> int:
    parser = sampling_arguments(__doc__, messages=20000, delay=8.0)
    parser.add_argument("--only", default="workers 1, sqlite")
    args = parser.parse_args()
    if cannot_sample("bench/profile_submission.py"):
        return 2
    out = Path(tempfile.mkdtemp(prefix="portcullis-profile-"))
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench.submission", "--only", args.only, "--messages", str(args.messages),
         "--latency-seconds", "0", "--big-mb", "0", "--warmup", "300"],
        stdout=(out / "bench.txt").open("w"), stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 120
        while not (pids := gateway_pids(bench)) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not pids:
            print("the gateway did not start; see", out / "bench.txt", file=sys.stderr)
            return 1
        time.sleep(args.delay)
        pids = gateway_pids(bench)
        libraries = perf_by_library(pids, args.seconds, out)
        # The worker that serves (the supervisor of --workers N only watches).
        worker = pids[-1]
        total, own, inclusive = pyspy_main_thread(worker, args.seconds, out)
        bench.wait(timeout=600)
    finally:
        if bench.poll() is None:
            bench.kill()
    print(f"Profile of bench/submission.py's row {args.only!r} ({args.messages} messages), "
          f"{args.seconds:.0f} s of each sampler; files in {out}\n")
    print_profile(libraries, worker, total, own, inclusive, args.top)
    rate = [line for line in (out / "bench.txt").read_text().splitlines()
            if line.strip().startswith("round") and "msg/s" in line]
    if rate:
        print(f"\nthe row under the samplers: {rate[-1].strip()}")
    return 0


def print_profile(libraries: list[tuple[float, str]], worker: int, total: int,
                  own: collections.Counter, inclusive: collections.Counter, top: int) -> None:
    print("perf, every thread of the gateway's processes: share of CPU samples by library")
    named: collections.Counter = collections.Counter()
    for share, dso in libraries:
        label = next((what for key, what in _LIBRARIES if key in dso), "other")
        named[label] += share
    for label, share in named.most_common():
        print(f"  {share:5.1f}%  {label}")
    print(f"\npy-spy, the event loop's thread of pid {worker}: {total} busy samples")
    print("  self                                                   inclusive")
    # What every sample holds (the loop, runpy, the CLI) says nothing: left out.
    inner = [(f, n) for f, n in inclusive.most_common() if n < 0.97 * total][:top]
    for (f1, n1), (f2, n2) in zip(own.most_common(top), inner, strict=False):
        print(f"  {100 * n1 / total:5.1f}%  {f1[:48]:48}  {100 * n2 / total:5.1f}%  {f2[:60]}")


if __name__ == "__main__":
    sys.exit(main())
