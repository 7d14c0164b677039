"""Simulation in the pipeline: who is simulated (agent, role, mode, rule), what stays a read,
and what a simulated write would have been."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import tutils

from airlock.pipeline.agents import hash_key, load_agents
from airlock.pipeline.document import build_document
from airlock.pipeline.evaluation import Config, evaluate
from airlock.pipeline.mappings import load_mappings
from airlock.pipeline.policies import load_policies
from airlock.pipeline.simulation import SIMULATED, simulated, synthetic_response
from airlock.pipeline.yaml_source import ConfigError
from tests.helpers.proxy import PROJECT_ROOT

MAPPINGS = load_mappings(PROJECT_ROOT / "mappings")
BASELINE = Config(MAPPINGS, load_policies(PROJECT_ROOT / "policies"))


def stripe(path: str, form: str, method: str = "POST") -> dict[str, Any]:
    request = tutils.treq(
        method=method.encode(), host="api.stripe.com", port=443, scheme=b"https",
        authority=b"", path=path.encode(), content=form.encode(),
        headers=[(b"Content-Type", b"application/x-www-form-urlencoded")],
    )  # fmt: skip
    return build_document(request, "trial-bot")


@pytest.mark.parametrize(
    ("amount", "would"), [(2500, "ALLOW"), (250000, "REQUIRE_APPROVAL"), (2000000, "BLOCK")]
)
def test_a_simulated_write_is_judged_and_records_what_it_would_have_been(
    amount: int, would: str
) -> None:
    document = stripe("/v1/charges", f"amount={amount}&currency=usd")
    evaluation = simulated(evaluate(document, BASELINE), True)
    verdict = evaluation.verdict
    assert verdict.decision == SIMULATED
    assert verdict.shadow is not None and verdict.shadow.decision == would
    assert verdict.reason.startswith("simulated (would be")


def test_reads_and_model_calls_still_go_upstream_and_failures_still_block() -> None:
    read = evaluate(stripe("/v1/customers/cus_1", "", "GET"), BASELINE)
    assert simulated(read, True) is read
    failed = evaluate({**stripe("/v1/charges", "amount=1"), "request_error": "bad"}, BASELINE)
    assert simulated(failed, True).verdict.decision == "BLOCK"
    not_simulating = evaluate(stripe("/v1/charges", "amount=2500&currency=usd"), BASELINE)
    assert simulated(not_simulating, False).verdict.decision == "ALLOW"


def test_a_simulate_rule_simulates_what_it_matches(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        textwrap.dedent("""\
            rules:
              - id: refunds-in-trial
                when: {action: create_refund}
                decision: SIMULATE
            """)
    )
    config = Config(MAPPINGS, load_policies(tmp_path))
    refund = simulated(evaluate(stripe("/v1/refunds", "charge=ch_1"), config), False)
    assert refund.verdict.decision == SIMULATED and "refunds-in-trial" in refund.verdict.rules
    charge = simulated(evaluate(stripe("/v1/charges", "amount=5"), config), False)
    assert charge.verdict.decision == "ALLOW"


def test_an_agent_or_its_role_can_be_in_simulation(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text(
        textwrap.dedent(f"""\
            agents:
              - {{id: trial-bot, roles: [payments], key_hash: "{hash_key("k")}", simulate: true}}
              - {{id: new-bot, roles: [trial], key_hash: "{hash_key("k")}"}}
              - {{id: live-bot, roles: [payments], key_hash: "{hash_key("k")}"}}
            roles:
              payments: {{egress: [api.stripe.com]}}
              trial: {{egress: [api.stripe.com], simulate: true}}
            """)
    )
    agents = load_agents(tmp_path)
    assert [agents.simulates(a) for a in ("trial-bot", "new-bot", "live-bot")] == [
        True,
        True,
        False,
    ]
    (tmp_path / "agents.yaml").write_text("agents: []\nroles: {trial: {simulate: yes-please}}\n")
    with pytest.raises(ConfigError, match="'simulate' must be true or false"):
        load_agents(tmp_path)


def test_synthetic_answers_echo_the_request_in_the_vendors_shape() -> None:
    charge = synthetic_response(stripe("/v1/charges", "amount=2500&currency=usd"), None)
    body = json.loads(charge.body)
    assert (charge.status, body["object"], body["amount"], body["currency"]) == (
        200,
        "charge",
        2500,
        "usd",
    )
    assert body["id"].startswith("ch_")
    deleted = json.loads(synthetic_response(stripe("/v1/customers/cus_9", "", "DELETE"), None).body)
    assert deleted == {"id": "cus_9", "object": "customer", "deleted": True}
    ec2 = {"host": "ec2.us-east-1.amazonaws.com", "method": "POST", "path": "/",
           "body": {"Action": "RunInstances", "MaxCount": "4", "ImageId": "ami-1"}}  # fmt: skip
    launched = synthetic_response(ec2, "aws.ec2.RunInstances").body.decode()
    assert launched.count("<instanceId>i-") == 4 and "<imageId>ami-1</imageId>" in launched


def test_a_rule_may_hold_a_simulated_write_for_a_reviewer(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        textwrap.dedent("""\
            rules:
              - id: charges-held-in-trials
                when: {action: create_charge}
                decision: REQUIRE_APPROVAL
                in_simulation: hold
            """)
    )
    config = Config(MAPPINGS, load_policies(tmp_path))
    held = simulated(evaluate(stripe("/v1/charges", "amount=5"), config), True)
    assert held.verdict.decision == "REQUIRE_APPROVAL"
    assert held.action.context["simulated"] is True
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - {id: r, when: {action: create_charge}, decision: BLOCK, in_simulation: hold}\n"
    )
    with pytest.raises(ConfigError, match="on REQUIRE_APPROVAL rules only"):
        load_policies(tmp_path)
