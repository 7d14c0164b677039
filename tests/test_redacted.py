"""How many values a held request's record hides from its reviewer (console/redacted.py)."""

from __future__ import annotations

from airlock.console.redacted import hidden_values, hidden_warning
from airlock.pipeline.redaction import redact_document


def test_values_hidden_by_redaction_are_counted_but_not_a_credential_header() -> None:
    request = {"method": "POST", "path": "/v1/sql", "query": {"token": ["[REDACTED]"]},
               "headers": {"authorization": "Bearer [REDACTED]", "x-api-key": "[REDACTED]",
                           "x-note": "key [REDACTED]"},
               "body": {"sql": "DELETE FROM t WHERE [REDACTED]=1",
                        "card": "[CARD …4242]"}}  # fmt: skip
    assert hidden_values(request) == 4  # query, x-note, sql, card
    assert hidden_values(request, {"a": "[REDACTED]"}) == 4  # params mostly repeat the request
    assert hidden_values({}, {"a": ["[REDACTED]", "[REDACTED]"]}, "t/[REDACTED]") == 3
    assert hidden_values({"body": {"amount": 5}, "headers": {"authorization": "[REDACTED]"}}) == 0
    assert hidden_warning(None) == ""
    assert hidden_warning({"body": "[REDACTED]"}) == (
        "⚠ 1 value hidden by redaction — Airlock cannot show it; deny if it could matter"
    )


def test_what_the_redactor_writes_is_what_is_counted() -> None:
    """The markers are read from pipeline/redaction.py: a redacted document is counted."""
    document = {"method": "POST", "host": "api.example.com", "path": "/x", "query": {},
                "headers": {},
                "body": {"password": "hunter2", "note": "sk_live_" + "a" * 24}}  # fmt: skip
    assert hidden_values(redact_document(document)) == 2
