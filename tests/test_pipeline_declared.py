"""The message path is declared, not interleaved (issue 15): two lists of named
steps, a handler without a branch on the listener's direction, and our state on
our own objects, never hung on aiosmtpd's."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope, Session

from gateway import replies
from gateway.smtp.pipeline import abuse_reports, forward, settle_quotas
from gateway.smtp.pipeline.pipelines import INBOUND, SUBMISSION
from gateway.smtp.pipeline.products import PRODUCTS
from gateway.smtp.pipeline.run import PipelineError, run_pipeline
from gateway.smtp.pipeline.step import CONTINUE, Action, Step, delivered, refuse
from gateway.smtp.records import TransactionRecord
from gateway.smtp.state import Session as OurSession
from gateway.smtp.state import Transaction

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "gateway"


def _flow_steps(heading: str) -> list[str]:
    """The step names docs/flow.md lists under ``### <heading>``, in its order."""
    text = (ROOT / "docs" / "flow.md").read_text()
    section = text.split(f"### {heading}", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\d+\. `([^`]+)`", section, re.M)


@pytest.mark.parametrize(("heading", "pipeline"), [("INBOUND pipeline", INBOUND),
                                                   ("SUBMISSION pipeline", SUBMISSION)])
def test_docs_flow_names_each_pipelines_steps_in_the_order_they_run(heading, pipeline):
    assert _flow_steps(heading) == [step.name for step in pipeline]


def test_each_listener_runs_its_own_pipeline_and_both_end_by_forwarding():
    assert PRODUCTS["inbound"].pipeline is INBOUND
    assert PRODUCTS["outbound"].pipeline is SUBMISSION
    for pipeline in (INBOUND, SUBMISSION):
        names = [step.name for step in pipeline]
        assert names.count("forward") == 1 and len(set(names)) == len(names)
        # Our fields and the signature are made before the message is held or leaves.
        assert names.index("received") < names.index("hold for review") < names.index("forward")
    assert [s.name for s in SUBMISSION].index("dkim signing") == \
        [s.name for s in SUBMISSION].index("hold for review") - 1


def test_the_handler_has_no_branch_on_the_listeners_direction():
    source = (GATEWAY / "smtp" / "handler.py").read_text()
    assert "direction ==" not in source and "direction !=" not in source
    tree = ast.parse(source)
    compared = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)
                and any(isinstance(c, ast.Constant) and c.value in ("inbound", "outbound")
                        for c in (node.left, *node.comparators))]
    assert compared == [], [ast.unparse(node) for node in compared]


def _aiosmtpd_fields() -> dict[str, set[str]]:
    loop = asyncio.new_event_loop()
    try:
        session = set(vars(Session(loop)))
    finally:
        loop.close()
    return {"envelope": set(vars(Envelope())), "session": session}


def _assigned_attributes(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(object, attribute, line) of every ``<x>.envelope.attr = …``/``envelope.attr = …``
    (and session's) in a module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for sub in ast.walk(target):
                # Only what is stored: ``d[session.id] = x`` reads session.id.
                if not isinstance(sub, ast.Attribute) or not isinstance(sub.ctx, ast.Store):
                    continue
                owner = sub.value
                name = owner.attr if isinstance(owner, ast.Attribute) else \
                    owner.id if isinstance(owner, ast.Name) else None
                if name in ("envelope", "session"):
                    found.append((name, sub.attr, node.lineno))
    return found


def test_no_module_adds_attributes_to_aiosmtpds_envelope_or_session():
    own = _aiosmtpd_fields()
    added = []
    for path in sorted(GATEWAY.rglob("*.py")):
        for obj, attr, line in _assigned_attributes(ast.parse(path.read_text())):
            if attr not in own[obj]:
                added.append(f"{path.relative_to(ROOT)}:{line}: {obj}.{attr}")
    assert added == []


def test_the_attribute_check_sees_what_it_looks_for():
    tree = ast.parse("envelope.txid = 1\nself.envelope.x = 2\nserver.session.y += 3\n"
                     "envelope.mail_from = 'a'\nby_id[session.id] = 4\n")
    assert [(o, a) for o, a, _ in _assigned_attributes(tree)] == [
        ("envelope", "txid"), ("envelope", "x"), ("session", "y"), ("envelope", "mail_from")]


# --- the runner: plain steps over a plain transaction -------------------------------------
def _transaction() -> Transaction:
    session = OurSession("CID", "submission", lambda work: work.close())
    return Transaction(session, TransactionRecord("CID.1"), runtime=None, direction="outbound",
                       sender="a@example.com", helo="client", extended=True, recipients=["b@x"],
                       mail_options=[], downstream=None)


def _step(name: str, result, ran: list[str]) -> Step:
    async def run(tx):
        ran.append(name)
        return result
    return Step(name, run)


def _plain_step(name: str, result, ran: list[str]) -> Step:
    def run(tx):
        ran.append(name)
        return result
    return Step(name, run)


def test_plain_and_waiting_steps_run_in_their_order():
    ran: list[str] = []
    no = refuse(replies.MALFORMED_HEADER, "test.rule")
    steps = [_plain_step("a", CONTINUE, ran), _step("b", CONTINUE, ran),
             _plain_step("c", no, ran), _step("d", delivered(replies.OK), ran)]
    assert [s.waits for s in steps] == [False, True, False, True]
    assert asyncio.run(run_pipeline(steps, _transaction())) is no
    assert ran == ["a", "b", "c"]


def test_the_runner_stops_at_the_first_refusal_and_runs_nothing_after_it():
    ran: list[str] = []
    no = refuse(replies.MALFORMED_HEADER, "test.rule", {"why": "test"})
    steps = [_step("a", CONTINUE, ran), _step("b", no, ran), _step("c", delivered(replies.OK), ran)]
    assert asyncio.run(run_pipeline(steps, _transaction())) is no
    assert ran == ["a", "b"]


def test_steps_after_delivery_are_left_to_run_after_the_reply():
    ran: list[str] = []
    sent = delivered(replies.OK)
    steps = [_step("a", CONTINUE, ran), _step("forward", sent, ran), _step("settle", CONTINUE, ran),
             _plain_step("report", CONTINUE, ran)]
    tx = _transaction()
    result = asyncio.run(run_pipeline(steps, tx))
    # The answer is the downstream's, known before the settle has run.
    assert result is sent and result.action is Action.DELIVERED and ran == ["a", "forward"]
    assert tx.after_reply is not None
    asyncio.run(tx.after_reply())
    assert ran == ["a", "forward", "settle", "report"]


def test_nothing_is_left_after_the_reply_when_forward_is_last_or_never_reached():
    for steps in ([_step("forward", delivered(replies.OK), [])],
                  [_step("a", refuse(replies.MALFORMED_HEADER, "r"), []),
                   _step("forward", delivered(replies.OK), []), _step("settle", CONTINUE, [])]):
        tx = _transaction()
        asyncio.run(run_pipeline(steps, tx))
        assert tx.after_reply is None


def test_only_the_steps_a_transaction_needs_are_left_after_the_reply():
    ran: list[str] = []
    sent = delivered(replies.OK)

    def pipeline(wanted: bool) -> list[Step]:
        return [_step("forward", sent, ran),
                Step("settle", _step("settle", CONTINUE, ran).run, lambda tx: wanted),
                _step("report", CONTINUE, ran)]

    tx = _transaction()
    asyncio.run(run_pipeline(pipeline(False), tx))
    assert tx.after_reply is not None
    asyncio.run(tx.after_reply())
    assert ran == ["forward", "report"]  # the unneeded step did not run
    # The real steps: plain inbound mail (no role recipient, no quota) needs none of
    # them, so its reply leaves no task behind.
    tx = _transaction()
    tx.reply = replies.OK
    asyncio.run(run_pipeline([_step("forward", sent, []), abuse_reports.STEP, settle_quotas.STEP], tx))
    assert tx.after_reply is None
    tx = _transaction()
    tx.reply = replies.OK
    tx.role_recipients = ("abuse@isp.example",)
    asyncio.run(run_pipeline([_step("forward", sent, []), abuse_reports.STEP, settle_quotas.STEP], tx))
    assert tx.after_reply is not None


@pytest.mark.parametrize("late", [refuse(replies.MALFORMED_HEADER, "late"), delivered(replies.OK)])
def test_a_step_after_delivery_cannot_change_the_answer(late):
    steps = [_step("forward", delivered(replies.OK), []), _step("late", late, [])]
    tx = _transaction()
    assert asyncio.run(run_pipeline(steps, tx)).action is Action.DELIVERED
    assert tx.after_reply is not None
    with pytest.raises(PipelineError, match="after delivery"):
        asyncio.run(tx.after_reply())


def test_a_pipeline_that_never_delivers_is_an_error_not_a_silent_250():
    with pytest.raises(PipelineError, match="without delivering"):
        asyncio.run(run_pipeline([_step("a", CONTINUE, [])], _transaction()))


def test_each_step_module_declares_one_named_step():
    for pipeline in (INBOUND, SUBMISSION):
        for step in pipeline:
            assert isinstance(step, Step) and step.name and callable(step.run)
            assert step.waits is asyncio.iscoroutinefunction(step.run)
    assert forward.STEP in INBOUND and forward.STEP in SUBMISSION
