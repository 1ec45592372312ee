"""The gateway's Prometheus metrics: what each call counts, and how workers add up."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gateway.ops.metrics import Metrics, reply_class

ROOT = Path(__file__).resolve().parent.parent


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.mark.parametrize(
    ("code", "cls"), [(220, "2xx"), (250, "2xx"), (354, "3xx"), (421, "4xx"), (550, "5xx")]
)
def test_reply_class_is_the_first_digit(code, cls):
    assert reply_class(code) == cls


@pytest.mark.parametrize("code", [99, 199, 600, 0])
def test_reply_class_refuses_codes_outside_smtp(code):
    with pytest.raises(ValueError):
        reply_class(code)


def test_each_reply_counts_once_in_its_class_and_listener():
    metrics = Metrics()
    metrics.reply("submission", 250)
    metrics.reply("submission", 250)
    metrics.reply("submission", 550)
    metrics.reply("inbound", 451)
    name = "portcullis_smtp_replies_total"
    assert value(metrics, name, listener="submission", **{"class": "2xx"}) == 2
    assert value(metrics, name, listener="submission", **{"class": "5xx"}) == 1
    assert value(metrics, name, listener="inbound", **{"class": "4xx"}) == 1
    assert value(metrics, name, listener="inbound", **{"class": "2xx"}) is None


def test_known_listeners_start_at_zero_so_rates_work_from_the_first_event():
    metrics = Metrics(listeners=["inbound"], downstreams=["outbound"])
    name = "portcullis_smtp_replies_total"
    assert value(metrics, name, listener="inbound", **{"class": "5xx"}) == 0
    assert value(metrics, "portcullis_auth_attempts_total", listener="inbound", result="failure") == 0
    assert value(metrics, "portcullis_downstream_seconds_count", downstream="outbound") == 0


def test_two_instances_never_share_a_counter():
    first, second = Metrics(), Metrics()
    first.connection("inbound", "accepted")
    assert value(first, "portcullis_connections_total", listener="inbound", outcome="accepted") == 1
    assert value(second, "portcullis_connections_total", listener="inbound", outcome="accepted") is None


def test_every_counting_method_moves_its_metric():
    m = Metrics()
    m.connection("submissions", "tls_failed")
    m.message("inbound", "accepted")
    m.auth_attempt("submission", success=True)
    m.auth_attempt("submission", success=False)
    m.auth_attempt("submission", success=False)
    m.auth_tempfail("submission")
    m.quota_refused("messages_per_hour")
    m.dkim_signed("rsa-sha256")
    m.dkim_signed("ed25519-sha256")
    m.auth_result("spf", "softfail")
    m.auth_result("dmarc", "fail")
    m.downstream_error("inbound", "timeout")
    m.set_suspended(3)
    m.set_suspended(2)
    assert value(m, "portcullis_connections_total", listener="submissions", outcome="tls_failed") == 1
    assert value(m, "portcullis_messages_total", listener="inbound", outcome="accepted") == 1
    assert value(m, "portcullis_auth_attempts_total", listener="submission", result="success") == 1
    assert value(m, "portcullis_auth_attempts_total", listener="submission", result="failure") == 2
    assert value(m, "portcullis_auth_attempts_total", listener="submission", result="tempfail") == 1
    assert value(m, "portcullis_quota_refusals_total", kind="messages_per_hour") == 1
    assert value(m, "portcullis_dkim_signatures_total", algorithm="ed25519-sha256") == 1
    assert value(m, "portcullis_inbound_auth_results_total", method="spf", result="softfail") == 1
    assert value(m, "portcullis_inbound_auth_results_total", method="dmarc", result="fail") == 1
    assert value(m, "portcullis_downstream_errors_total", downstream="inbound", kind="timeout") == 1
    assert value(m, "portcullis_suspended_accounts") == 2


def test_open_connections_go_up_and_down():
    m = Metrics(listeners=["submission"])
    assert value(m, "portcullis_connections_open", listener="submission") == 0
    m.opened("submission")
    m.opened("submission")
    m.closed("submission")
    assert value(m, "portcullis_connections_open", listener="submission") == 1


def test_downstream_latency_lands_in_the_right_buckets():
    m = Metrics()
    m.downstream_took("outbound", 0.003)
    m.downstream_took("outbound", 0.2)
    m.downstream_took("outbound", 12.0)
    bucket = "portcullis_downstream_seconds_bucket"
    assert value(m, bucket, downstream="outbound", le="0.005") == 1
    assert value(m, bucket, downstream="outbound", le="0.25") == 2
    assert value(m, bucket, downstream="outbound", le="10.0") == 2
    assert value(m, bucket, downstream="outbound", le="30.0") == 3
    assert value(m, "portcullis_downstream_seconds_sum", downstream="outbound") == pytest.approx(12.203)


@pytest.mark.parametrize(("method", "result"), [("arc", "pass"), ("spf", "ok"), ("dkim", "PASS")])
def test_auth_results_outside_rfc_8601_words_are_refused(method, result):
    # A label with free text would grow without bound; a typo should fail in tests.
    with pytest.raises(ValueError):
        Metrics().auth_result(method, result)



def test_remembered_auth_result_series_still_count_one_per_call():
    # auth_result keeps the labelled child of each valid pair: every call must still count.
    m = Metrics()
    name = "portcullis_inbound_auth_results_total"
    for n in range(1, 4):
        m.auth_result("dkim", "pass")
        m.auth_result("spf", "temperror")
        assert value(m, name, method="dkim", result="pass") == n
        assert value(m, name, method="spf", result="temperror") == n
    exposed = generate_latest(m.registry).decode()
    assert f'{name}{{method="dkim",result="pass"}} 3.0' in exposed
    assert f'{name}{{method="spf",result="temperror"}} 3.0' in exposed


@pytest.mark.parametrize(("method", "result"), [("arc", "pass"), ("dkim", "PASS"), ("spf", "ok")])
def test_unknown_auth_result_pairs_are_refused_every_time_and_never_exposed(method, result):
    m = Metrics()
    m.auth_result("dkim", "pass")
    for _ in range(2):  # refused again on the second call: nothing was remembered
        with pytest.raises(ValueError):
            m.auth_result(method, result)
    exposed = generate_latest(m.registry).decode()
    assert f'method="{method}",result="{result}"' not in exposed
    assert value(m, "portcullis_inbound_auth_results_total", method=method, result=result) is None
    m.auth_result("dkim", "pass")
    assert value(m, "portcullis_inbound_auth_results_total", method="dkim", result="pass") == 2


def test_remembered_downstream_series_count_each_message_apart():
    m = Metrics(downstreams=["inbound"])
    for n in range(1, 4):
        m.downstream_took("inbound", 0.01)
        assert value(m, "portcullis_downstream_seconds_count", downstream="inbound") == n
    m.downstream_took("outbound", 2.0)
    assert value(m, "portcullis_downstream_seconds_count", downstream="outbound") == 1
    assert value(m, "portcullis_downstream_seconds_sum", downstream="inbound") == pytest.approx(0.03)
    assert value(m, "portcullis_downstream_seconds_bucket", downstream="outbound", le="1.0") == 0

# A parent that prepares the directory, forks two workers that count, and sums
# their files, in a separate interpreter: multiprocess mode is process-wide, so it
# must not leak into the test process.
_WORKERS = textwrap.dedent(
    """
    import json, multiprocessing, sys
    from pathlib import Path
    # Imported before the directory is prepared, as a CLI module would: the order
    # must not matter.
    from gateway.ops import metrics as m

    directory = Path(sys.argv[1])
    directory.mkdir()
    (directory / "counter_99999.db").write_bytes(b"left over from a previous run")
    m.prepare_multiprocess(directory)

    def worker(n):
        metrics = m.Metrics(listeners=["inbound"])
        for _ in range(n):
            metrics.reply("inbound", 250)
        metrics.downstream_took("inbound", 0.02)
        metrics.set_suspended(7)
        metrics.opened("inbound")
        if n == 4:
            metrics.opened("inbound")  # this worker ends with two open connections

    pids = []
    for n in (3, 4):
        p = multiprocessing.get_context("fork").Process(target=worker, args=(n,))
        p.start(); p.join(10); pids.append(p.pid)
    get = m.multiprocess_registry().get_sample_value
    open_while_alive = get("portcullis_connections_open", {"listener": "inbound"})
    for pid in pids:
        m.worker_exited(pid)
    get = m.multiprocess_registry().get_sample_value
    print(json.dumps({
        "open_while_alive": open_while_alive,
        "open_after_exit": get("portcullis_connections_open", {"listener": "inbound"}),
        "replies": get("portcullis_smtp_replies_total", {"listener": "inbound", "class": "2xx"}),
        "latency_count": get("portcullis_downstream_seconds_count", {"downstream": "inbound"}),
        "suspended": get("portcullis_suspended_accounts", {}),
        "multiprocess": m.is_multiprocess(),
    }))
    """
)


def test_worker_processes_add_up_in_multiprocess_mode(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _WORKERS, str(tmp_path / "metrics")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["replies"] == 7
    assert result["latency_count"] == 2
    # Every worker reports the same store fact: the gauge is not summed.
    assert result["suspended"] == 7
    assert result["multiprocess"] is True
    # Open connections are summed over workers, and a dead worker's share is dropped.
    assert result["open_while_alive"] == 3
    assert result["open_after_exit"] in (None, 0)
    assert not (tmp_path / "metrics" / "counter_99999.db").exists()
