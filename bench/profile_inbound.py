"""Where an inbound message's CPU goes: a profile of the MX path under load.

    python bench/profile_inbound.py [--checks] [--messages 40000] [--delay 3] [--seconds 5]

One gateway, ``--workers 1``, forwarding to Postfix's smtp-sink; Postfix's
smtp-source sends 5 KB messages from 20 sessions, a new connection per message
(as bench/inbound.py).  By default the plain inbound path (checks off); with
``--checks``, every check on, as bench/inbound_checks.py runs them: a private
NSD serves the sender's SPF, DKIM key and DMARC record, and every message is
DKIM-signed (the DNS cache is warm once the delay has passed).  Once the load
runs, the gateway is sampled with perf (every thread, by library) and then py-spy
(the event loop's thread), as bench/profile_submission.py does.  Sampling
shares, not timings.  Needs root, Debian's postfix and linux-perf, and py-spy.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inbound import smtp_source_command, start_gateway, stop, wait_port
from bench.inbound_checks import checks_config, signed_source
from bench.inbound_cpu import SOURCE
from bench.profile_submission import (
    cannot_sample,
    gateway_pids,
    perf_by_library,
    print_profile,
    pyspy_main_thread,
    sampling_arguments,
)
from tests.support.authdns import AuthDNS
from tests.support.ports import free_port


def main() -> int:
    parser = sampling_arguments(__doc__, messages=40000, delay=3.0)
    parser.add_argument("--checks", action="store_true",
                        help="every inbound check on (SPF, DKIM, DMARC, ARC), with a DNS of its own")
    args = parser.parse_args()
    if cannot_sample("bench/profile_inbound.py"):
        return 2
    out = Path(tempfile.mkdtemp(prefix="portcullis-profile-"))
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"])
    gateway = source = dns = None
    command = SOURCE
    try:
        wait_port(sink_port)
        if args.checks:
            signed, zones = signed_source(out, 5120)
            dns = AuthDNS(zones, out).start()
            extra = checks_config(dns.port)
            command = smtp_source_command(20, 5120, **signed)
        else:
            extra = "inbound_checks: false\n"
        gateway, port = start_gateway(out, sink_port, "1", extra, name="profiled")
        source = subprocess.Popen([*command, "-m", str(args.messages), f"127.0.0.1:{port}"])
        time.sleep(args.delay)
        pids = gateway_pids(gateway)
        started = time.monotonic()
        libraries = perf_by_library(pids, args.seconds, out)
        total, own, inclusive = pyspy_main_thread(pids[-1], args.seconds, out)
        if source.poll() is not None:
            print(f"smtp-source ended {time.monotonic() - started:.0f} s into the sampling: "
                  "raise --messages", file=sys.stderr)
    finally:
        for proc in (source, sink):
            if proc is not None and proc.poll() is None:
                proc.kill()
        if gateway is not None:
            stop(gateway)
        if dns is not None:
            dns.stop()
    path = "every inbound check on (" if args.checks else "the plain inbound path (checks off, "
    print(f"Profile of {path}one worker; smtp-source, 20 sessions, "
          f"5 KB, a connection per message), {args.seconds:.0f} s of each sampler; files in {out}\n")
    print_profile(libraries, pids[-1], total, own, inclusive, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
