"""Slack's Web API takes a method's arguments "as GET querystring parameters, POST parameters
… or a mix of both" (its Web API overview), whatever the HTTP method: a write sent as a GET with
its arguments in the query string acts as the POST does.

Measured against the whole catalog: every Slack write operation, sent as a GET with its
arguments in the query string (and to a workspace's own host), is identified as the same
operation and action as the POST that slack_sdk sends, with the same params, and decided alike.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from airlock.pipeline.document import WireRequest, build_document
from airlock.pipeline.evaluation import Config, Evaluation, evaluate
from airlock.pipeline.history import History
from tests.helpers.proxy import PROJECT_ROOT

CONFIG = Config.load(PROJECT_ROOT / "mappings", PROJECT_ROOT / "policies")
CATALOG = json.loads((PROJECT_ROOT / "catalog" / "openapi" / "slack.json").read_text())
WRITES = [op for op in CATALOG["operations"] if op["write"]]
ARGUMENTS = "channel=C0123&ts=1712345678.000100&user=U0456&users=U1%2CU2&name=general&team_id=T1"
TOKEN = ("authorization", "Bearer xoxb-0000-planted")


def decided(method: str, host: str, path: str) -> Evaluation:
    if method == "POST":
        headers = [TOKEN, ("content-type", "application/x-www-form-urlencoded")]
        request = WireRequest(method, "https", host, 443, path, headers, ARGUMENTS.encode())
    else:
        request = WireRequest(method, "https", host, 443, f"{path}?{ARGUMENTS}", [TOKEN], b"")
    return evaluate(build_document(request, "agent"), CONFIG, History())


def judged(evaluation: Evaluation) -> tuple[Any, ...]:
    """What a reviewer and the rules see; the target, which can name the host, apart."""
    action, verdict = evaluation.action, evaluation.verdict
    return (action.action, action.params, verdict.decision, verdict.rules)


def test_the_catalog_knows_slack_acts_alike_whatever_the_method() -> None:
    assert CATALOG.get("any_method") is True and "*.slack.com" in CATALOG["hosts"]
    assert len(WRITES) > 80  # the whole Web API's writes, not a sample


@pytest.mark.parametrize("operation", WRITES, ids=[op["name"] for op in WRITES])
def test_a_slack_write_sent_as_a_get_is_judged_as_its_post(operation: dict[str, Any]) -> None:
    posted = decided("POST", "slack.com", operation["path"])
    assert posted.action.operation == f"slack.{operation['name']}"
    for method, host in (
        ("GET", "slack.com"),
        ("GET", "acme.slack.com"),
        ("POST", "acme.slack.com"),
    ):
        other = decided(method, host, operation["path"])
        assert other.action.operation == posted.action.operation, (method, host)
        assert judged(other) == judged(posted), (method, host)
        if host == "slack.com":
            assert other.action.target == posted.action.target
