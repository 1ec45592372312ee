"""The log never stops the mail (gateway/log_output.py).

A gateway whose stderr nobody reads (a log reader that fell behind) used to stop
every session of the worker once the pipe's 64 KiB were full: each transaction's
line was written by the event loop.  Now a thread writes the log; the sessions
go on, and the lines come out once the reader catches up."""

from __future__ import annotations

import logging
import os
import smtplib
import threading
import time

from gateway.log_output import BatchedLogHandler
from tests.support.ports import free_port
from tests.support.serve_process import eventually, inbound_rcpt, serve_workers, stop_and_read
from tests.test_metrics_documented import scrape

MESSAGE = b"From: a@other.example\r\nTo: x@acme.example\r\nSubject: log\r\n\r\nhello\r\n"


def test_a_gateway_whose_log_nobody_reads_keeps_taking_mail(tmp_path, downstream, password_hash):
    # Two workers: the forked worker's writer, and its flush before it exits.  No
    # inbound checks: this test's DNS answers nothing.
    proc, port = serve_workers(tmp_path, downstream, password_hash, workers=2, inbound_checks=False)
    sent = 500  # about 150 KB of transaction lines: more than a pipe holds
    try:
        assert eventually(lambda: inbound_rcpt(port, "x@acme.example") == 250, timeout=15)
        # Nobody reads the gateway's stderr from here on, until every message is in.
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.ehlo("client.example")
            for _ in range(sent):
                c.sendmail("a@other.example", ["x@acme.example"], MESSAGE)
        assert len(downstream.messages) >= sent
    finally:
        err = stop_and_read(proc)
    # Everything the worker logged came out, none dropped (far below the queue's bound).
    lines = [line for line in err.splitlines() if "portcullis.transaction" in line]
    assert sum("result=250 " in line for line in lines) >= sent, err[-2000:]
    assert "were dropped" not in err


def test_lines_dropped_past_the_backlog_are_counted_in_the_metric_and_said(
        tmp_path, downstream, password_hash):
    # limits.log_backlog: 20 lines may wait; the pipe takes about 200 of these lines.
    http = free_port()
    proc, port = serve_workers(tmp_path, downstream, password_hash, workers=1, inbound_checks=False,
                               limits={"shutdown_grace": 2, "log_backlog": 20}, http={"port": http})
    sent = 400
    try:
        assert eventually(lambda: inbound_rcpt(port, "x@acme.example") == 250, timeout=15)
        assert scrape(http)["portcullis_log_lines_dropped_total"] == 0
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.ehlo("client.example")
            for _ in range(sent):
                c.sendmail("a@other.example", ["x@acme.example"], MESSAGE)
        dropped = scrape(http)["portcullis_log_lines_dropped_total"]
        # The pipe (64 KiB), the batch being written and the backlog hold a few hundred
        # lines at most: some of the 400 are dropped, and never all of them.
        assert 0 < dropped < sent, dropped
    finally:
        err = stop_and_read(proc)
    # Every line dropped before the scrape is said (more may be, while it shuts down).
    said = [line for line in err.splitlines() if "were dropped" in line]
    assert said and sum(int(line.split("portcullis.log WARNING ")[1].split()[0]) for line in said) >= dropped, \
        err[-1500:]
    assert len(downstream.messages) >= sent  # the mail never waited for the log


def _reader_stalled_pipe():
    read_end, write_end = os.pipe()
    return read_end, os.fdopen(write_end, "w", encoding="utf-8")


def test_records_beyond_the_bound_are_dropped_counted_and_said(tmp_path):
    read_end, stream = _reader_stalled_pipe()
    handler = BatchedLogHandler(stream, batch_seconds=0.01, queue_limit=50)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.Logger("test.log_output")
    logger.addHandler(handler)
    total = 300
    filler = "x" * 2000  # 300 lines of 2 KB: the pipe takes about 32 of them

    def log_everything() -> None:
        for i in range(total):
            logger.info("line %d %s", i, filler)

    # Every call returns while nothing reads the pipe: the logging thread never waits.
    logging_thread = threading.Thread(target=log_everything)
    logging_thread.start()
    logging_thread.join(10)
    assert not logging_thread.is_alive(), "logging blocked on a full pipe"

    # The reader catches up: what was queued comes out, then one line saying how
    # many were lost.
    out = bytearray()
    deadline = time.monotonic() + 10
    os.set_blocking(read_end, False)
    while b"were dropped" not in out and time.monotonic() < deadline:
        try:
            out += os.read(read_end, 1 << 16)
        except BlockingIOError:
            time.sleep(0.01)
    handler.close()
    stream.close()
    text = out.decode()
    written = [line for line in text.splitlines() if line.startswith("INFO line ")]
    said = [line for line in text.splitlines() if "were dropped" in line]
    assert len(said) == 1, text[-500:]
    dropped = int(said[0].split()[1])
    assert dropped > 0 and len(written) + dropped == total
    # In order, none twice: the written ones are the first ones.
    assert [int(line.split()[2]) for line in written] == list(range(len(written)))
    os.close(read_end)


def test_a_warning_is_written_at_once_and_flush_waits_for_the_rest(tmp_path):
    read_end, stream = _reader_stalled_pipe()
    handler = BatchedLogHandler(stream, batch_seconds=30)  # never by the clock here
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.Logger("test.log_output")
    logger.addHandler(handler)
    logger.info("first, with arguments %s", "fixed")
    logger.warning("then a warning")
    os.set_blocking(read_end, False)
    out = bytearray()
    deadline = time.monotonic() + 5
    while b"warning\n" not in out and time.monotonic() < deadline:
        try:
            out += os.read(read_end, 4096)
        except BlockingIOError:
            time.sleep(0.01)
    assert out.decode() == "INFO first, with arguments fixed\nWARNING then a warning\n"
    logger.info("queued")
    handler.flush()  # returns once it is written, not after the 30 s batch
    assert os.read(read_end, 4096) == b"INFO queued\n"
    handler.close()
    stream.close()
    os.close(read_end)
