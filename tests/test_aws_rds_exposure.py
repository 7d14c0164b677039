"""A database made reachable from the internet, or stripped of its deletion protection, is held
as the SDK really sends it (RDS's query protocol: booleans as text, lists named by member)."""

from __future__ import annotations

from typing import Any

import pytest

from airlock.pipeline.policies import ALLOW, REQUIRE_APPROVAL
from tests.test_aws_baseline_gaps import fired, judged

INSTANCE = {"DBInstanceIdentifier": "orders"}
CLUSTER = {"DBClusterIdentifier": "orders"}
NEW = {**INSTANCE, "DBInstanceClass": "db.t3.micro", "Engine": "postgres"}


@pytest.mark.parametrize(
    ("operation", "params", "rule"),
    [
        ("ModifyDBInstance", {**INSTANCE, "PubliclyAccessible": True},
         "aws-public-database-needs-approval"),
        ("ModifyDBInstance", {**INSTANCE, "DeletionProtection": False},
         "aws-database-deletion-protection-off-needs-approval"),
        ("ModifyDBCluster", {**CLUSTER, "DeletionProtection": False},
         "aws-database-deletion-protection-off-needs-approval"),
        ("CreateDBInstance", {**NEW, "PubliclyAccessible": True},
         "aws-public-database-needs-approval"),
    ],
)  # fmt: skip
def test_a_database_exposed_as_boto3_sends_it_needs_approval(
    operation: str, params: dict[str, Any], rule: str
) -> None:
    evaluation = judged("rds", operation, params)
    assert evaluation.verdict.decision == REQUIRE_APPROVAL
    assert fired(evaluation) == {rule}


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("ModifyDBInstance", {**INSTANCE, "DBInstanceClass": "db.m5.large",
                              "ApplyImmediately": True}),
        ("ModifyDBInstance", {**INSTANCE, "PubliclyAccessible": False,
                              "DeletionProtection": True}),
        ("ModifyDBInstance", {**INSTANCE, "VpcSecurityGroupIds": ["sg-1", "sg-2"]}),
        ("ModifyDBCluster", {**CLUSTER, "DeletionProtection": True}),
        ("CreateDBInstance", NEW),
        ("CreateDBInstance", {**NEW, "PubliclyAccessible": False}),
    ],
)  # fmt: skip
def test_ordinary_database_changes_stay_allowed(operation: str, params: dict[str, Any]) -> None:
    evaluation = judged("rds", operation, params)
    assert evaluation.verdict.decision == ALLOW
    assert fired(evaluation) == set()
