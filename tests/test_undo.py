"""Evidence and undo in the pipeline: the identifiers a response returns, read by the shipped
mappings' `outcome:`, and the compensating request their `undo:` renders from them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from airlock.pipeline.mappings import load_mappings
from airlock.pipeline.outcome import outcome_ids
from airlock.pipeline.undo import CannotUndo, plan_undo
from airlock.pipeline.yaml_source import ConfigError
from tests.helpers.proxy import PROJECT_ROOT

SHIPPED = load_mappings(PROJECT_ROOT / "mappings")
JSON = {"Content-Type": "application/json"}


def _run_instances(*ids: str) -> bytes:
    items = "".join(f"<item><instanceId>{i}</instanceId></item>" for i in ids)
    return (
        '<RunInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<reservationId>r-1</reservationId><instancesSet>{items}</instancesSet>"
        "</RunInstancesResponse>"
    ).encode()


def test_the_identifiers_each_answer_returns_are_read_by_the_shipped_mappings() -> None:
    by_id = SHIPPED.by_id
    charge = json.dumps({"id": "ch_1", "object": "charge", "amount": 2500}).encode()
    assert outcome_ids(by_id["stripe.create_charge"], 200, JSON, charge) == {"charge_id": "ch_1"}
    xml = {"Content-Type": "text/xml;charset=UTF-8"}
    ec2 = by_id["aws.ec2.run_instances"]
    assert outcome_ids(ec2, 200, xml, _run_instances("i-1", "i-2")) == {
        "instance_ids": ["i-1", "i-2"],
        "reservation_id": "r-1",
    }
    assert outcome_ids(ec2, 200, xml, _run_instances("i-9"))["instance_ids"] == ["i-9"]
    put = by_id["aws.s3.put_object"]
    versioned = {"ETag": '"abc"', "x-amz-version-id": "v3"}
    assert outcome_ids(put, 200, versioned, b"") == {"version_id": "v3", "etag": '"abc"'}
    slack = json.dumps({"ok": True, "channel": "C1", "ts": "1.2"}).encode()
    assert outcome_ids(by_id["slack.chat.post_message"], 200, JSON, slack) == {
        "posted_channel": "C1",
        "ts": "1.2",
    }
    failed = json.dumps({"error": {"message": "card declined"}}).encode()
    assert outcome_ids(by_id["stripe.create_charge"], 402, JSON, failed) is None


def test_the_compensating_request_is_rendered_from_params_and_identifiers() -> None:
    refund = plan_undo(SHIPPED.by_id["stripe.create_charge"].undo_spec, {"charge_id": "ch_1"})
    assert (refund.method, refund.url, refund.form) == (
        "POST",
        "https://api.stripe.com/v1/refunds",
        {"charge": "ch_1"},
    )
    assert refund.auth == {"env": "STRIPE_API_KEY"}
    terminate = plan_undo(
        SHIPPED.by_id["aws.ec2.run_instances"].undo_spec,
        {"instance_ids": ["i-1", "i-2"], "region": "eu-west-1"},
    )
    assert terminate.aws == {
        "service": "ec2",
        "region": "eu-west-1",
        "operation": "TerminateInstances",
        "params": {"InstanceIds": ["i-1", "i-2"]},  # a whole {name} keeps its type
    }
    release = plan_undo(
        SHIPPED.by_id["github.create_release"].undo_spec,
        {"owner": "acme", "repo": "api", "release_id": 42},
    )
    assert (release.method, release.url) == (
        "DELETE",
        "https://api.github.com/repos/acme/api/releases/42",
    )
    with pytest.raises(CannotUndo, match=r"\{version_id\} is not on record"):
        plan_undo(SHIPPED.by_id["aws.s3.put_object"].undo_spec, {"bucket": "b", "key": "k"})
    with pytest.raises(CannotUndo, match="names no compensating request"):
        plan_undo(None, {})


def test_reviewers_are_shown_what_the_undo_sends() -> None:
    undo = SHIPPED.by_id["stripe.create_charge"].undo
    assert undo == {
        "action": "create_refund",
        "description": "refund the charge",
        "sends": "POST https://api.stripe.com/v1/refunds",
    }


@pytest.mark.parametrize(
    ("undo", "message"),
    [
        (
            "{action: create_refund, request: {method: POST, url: 'https://x/{charge_idd}'}}",
            "undo uses {charge_idd}, which is not a param, context value or outcome identifier",
        ),
        (
            "{action: a, request: {method: POST, url: u}, aws: {service: s, operation: o}}",
            "undo has either 'request' or 'aws', not both",
        ),
        ("{action: a, request: {method: POST, url: u, auth: {scheme: Bearer}}}", "env"),
    ],
)
def test_an_undo_naming_something_undefined_is_a_load_error(
    tmp_path: Path, undo: str, message: str
) -> None:
    (tmp_path / "pay.yaml").write_text(
        textwrap.dedent(f"""\
            provider: pay
            hosts: [api.pay.example]
            mappings:
              - id: pay.charge
                action: create_charge
                method: POST
                path: /charges
                outcome:
                  charge_id: $.response.body.id
                undo: {undo}
            """)
    )
    with pytest.raises(ConfigError) as raised:
        load_mappings(tmp_path, catalog=None)
    assert message in str(raised.value)
    assert str(raised.value).startswith(f"{tmp_path / 'pay.yaml'}:")
