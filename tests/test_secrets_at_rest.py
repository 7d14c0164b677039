"""What reaches the store, the logs and webhooks from outside the request document: a
reviewer's reason, the agent's name as the proxy credentials gave it, the witness's URL."""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from airlock.pipeline.evaluation import Evaluation
from airlock.pipeline.mappings import Action
from airlock.pipeline.policies import Verdict
from airlock.pipeline.redaction import REDACTED
from airlock.pipeline.run_record import run_row
from airlock.store.approvals import APPROVED, DENIED, resolve_approval
from airlock.store.records import DecisionRecord
from airlock.store.schema import Approval, ApprovalVote, AuditEvent
from tests.test_store import held, write

KEY = "sk_live_" + "Planted0Reviewer1Key2"


@pytest.mark.parametrize("state", [APPROVED, DENIED])
def test_a_reviewers_reason_is_redacted_before_it_is_stored_chained_or_sent(
    engine: Engine, state: str
) -> None:
    row, hold = held()
    write(engine, DecisionRecord(row, hold))
    reason = f"rotated it, the new key is {KEY}; password: Hunter2-planted"
    settled = resolve_approval(engine, hold.approval_id, state, "alice", reason)
    assert KEY not in settled.reason and "Hunter2" not in settled.reason  # what webhooks get
    assert settled.reason.startswith("rotated it") and REDACTED in settled.reason
    with engine.connect() as conn:
        stored = [
            *conn.execute(select(Approval.reason)).scalars(),
            *conn.execute(select(ApprovalVote.reason)).scalars(),
            *(json.dumps(p) for p in conn.execute(select(AuditEvent.payload)).scalars()),
        ]
    assert stored and not any(KEY in str(s) or "Hunter2" in str(s) for s in stored)


def _row(agent: str, known: tuple[str, ...] = ()) -> str:
    document = {"method": "POST", "scheme": "https", "host": "api.example.com", "port": 443,
                "path": "/v1/x", "query": {}, "headers": {}, "body": {}, "agent": agent,
                "body_size": 0}  # fmt: skip
    action = Action("http.write", "http", "write", "medium", "api.example.com", {}, None)
    row = run_row("r1", "i", document, Evaluation(action, Verdict("ALLOW", "ok", ())), 1.0,
                  known_agents=known)  # fmt: skip
    assert row.request["agent"] == row.agent
    return row.agent


def test_an_agent_name_that_is_a_key_is_redacted_and_a_known_name_is_kept() -> None:
    """Without an agents file the proxy username is taken as the agent's name: a client that
    put its key there has it redacted. Names the agents file knows are recorded as they are
    (approvals, budgets and history read them back)."""
    assert KEY not in _row(KEY)
    assert _row("billing-bot") == "billing-bot"
    odd = "sk-agent-0123456789abcdef"  # a shape that reads as an OpenAI key
    assert _row(odd, known=(odd,)) == odd


def test_the_witness_url_is_logged_as_its_scheme_and_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airlock.decider.witness import Witness

    witness = Witness("http://127.0.0.1:1/ingest/PlantedWitnessPath0?token=PlantedWitnessTok0")
    with caplog.at_level(logging.WARNING, logger="airlock.decider.witness"):
        witness.publish("note")
        witness.flush()
    assert witness.failed == 1
    assert "http://127.0.0.1:1" in caplog.text and "Planted" not in caplog.text


def test_an_agent_name_that_is_a_key_is_kept_out_of_the_retry_key_and_risk_details() -> None:
    """The approval's retry key and the risk factors' details ("first http.write by …") quote
    the agent: a name that reads as a secret is a digest there (agents still told apart), and
    redacted in the details."""
    from airlock.pipeline.risk import score
    from airlock.pipeline.run_record import retry_key_of

    document = {"method": "POST", "scheme": "https", "host": "api.example.com", "port": 443,
                "path": "/v1/x", "query": {}, "headers": {"idempotency-key": "k1"}, "body": {},
                "agent": KEY, "body_size": 0}  # fmt: skip
    other = {**document, "agent": KEY + "0"}
    assert KEY not in retry_key_of(document, "h") and KEY not in retry_key_of(other, "h")
    assert retry_key_of(document, "h") != retry_key_of(other, "h")
    assert (
        retry_key_of({**document, "agent": "billing-bot"}, "h") == "billing-bot:api.example.com:k1"
    )

    class NewAgent:  # a past with nothing in it: "first http.write by <agent>"
        def has_done(self, agent: str, action: str) -> bool:
            return False

        def has_touched(self, agent: str, target: str) -> bool:
            return False

        def recent_count(self, agent: str, action: str, seconds: float) -> int:
            return 0

        def recent_denials(self, agent: str, seconds: float) -> int:
            return 0

    action = Action("http.write", "http", "write", "medium", "api.example.com", {}, None)
    risk = score(action, KEY, NewAgent())
    evaluation = Evaluation(action, Verdict("ALLOW", "ok", ()), risk=risk)
    assert KEY in json.dumps(evaluation.risk.as_json() if evaluation.risk else None)  # quoted
    row = run_row("r1", "i", document, evaluation, 1.0)
    assert row.risk_factors and KEY not in json.dumps(row.risk_factors)
    named = Evaluation(action, evaluation.verdict, risk=score(action, "billing-bot", NewAgent()))
    kept = run_row("r2", "i", {**document, "agent": "billing-bot"}, named, 1.0)
    assert "billing-bot" in json.dumps(kept.risk_factors)


def test_risk_factors_quote_no_secret_the_action_or_target_carried() -> None:
    """An MCP tool named `fetch_sk_live_…` is an action the factors' details quote ("… is rated
    medium", "first … by"): they were stored as sent while the action column was redacted
    (found by review)."""
    from airlock.pipeline.history import History
    from airlock.pipeline.risk import score

    document = {"method": "POST", "scheme": "https", "host": "mcp.example.com", "port": 443,
                "path": "/mcp", "query": {}, "headers": {}, "body": None, "body_format": "empty",
                "body_size": 0, "agent": "billing-bot"}  # fmt: skip
    action = Action(f"mcp.example.fetch_{KEY}", "mcp", "tool", "medium", f"mcp/example/{KEY}",
                    {}, None)  # fmt: skip
    risk = score(action, "billing-bot", History())  # "first … by billing-bot"
    evaluation = Evaluation(action, Verdict("ALLOW", "ok", ()), risk=risk)
    assert KEY in json.dumps(evaluation.risk.as_json() if evaluation.risk else None)  # quoted
    row = run_row("r1", "i", document, evaluation, 1.0, known_agents={"billing-bot"})
    assert row.risk_factors and KEY not in json.dumps(row.risk_factors)
    assert "billing-bot" in json.dumps(row.risk_factors)
