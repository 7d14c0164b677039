"""Refusals and "approval pending" in each AWS protocol's own error format: boto3 raises its own
ClientError with the code and Airlock's reason (not ResponseParserError, not a bare
"Forbidden"), and retries a pending call by itself until a reviewer approves it."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e.test_catalog_aws import AWS_HOSTS
from tests.e2e.test_crash_rounds import decider_of
from tests.e2e.test_gate import Background, airlock, eventually, pending, runs
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e

# Characters XML and JSON must escape, so a reason cannot break the answer's syntax.
REASON = 'Agents never delete <production> resources & "their" data'
POLICY = f"""\
default: ALLOW
rules:
  - id: no-deletions
    when:
      operation:
        - aws.s3.DeleteBucket
        - aws.route53.DeleteHostedZone
        - aws.iam.DeleteRole
        - aws.sns.DeleteTopic
        - aws.ec2.TerminateInstances
        - aws.dynamodb.DeleteTable
        - aws.sqs.DeleteQueue
        - aws.kms.ScheduleKeyDeletion
        - aws.lambda.DeleteFunction
        - aws.eks.DeleteCluster
    decision: BLOCK
    reason: '{REASON.replace("'", "''")}'
  - id: instances-held
    when: {{operation: aws.ec2.RunInstances}}
    decision: REQUIRE_APPROVAL
    reason: Starting instances needs a reviewer.
"""


@pytest.fixture(scope="module")
def proxy(
    start_proxy: Callable[..., Proxy], moto_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Proxy:
    policies: Path = tmp_path_factory.mktemp("answer-policies")
    (policies / "p.yaml").write_text(POLICY)
    return start_proxy(
        "--policies", str(policies), "--hold-timeout", "1", "--approval-timeout", "120",
        routes={host: moto_port for host in AWS_HOSTS},
    )  # fmt: skip


def client(proxy: Proxy, service: str, **config: Any) -> Any:
    return boto3.client(
        service,
        region_name="us-east-1",
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        verify=str(proxy.ca_cert),
        config=Config(proxies={"https": proxy.url}, **config),
    )


CALLS: list[tuple[str, str, str, dict[str, Any], str]] = [
    # (service, protocol, method, params, the code boto3 must raise)
    ("s3", "rest-xml", "delete_bucket", {"Bucket": "b"}, "AccessDenied"),
    ("route53", "rest-xml", "delete_hosted_zone", {"Id": "Z1"}, "AccessDenied"),
    ("iam", "query", "delete_role", {"RoleName": "r"}, "AccessDenied"),
    ("sns", "query", "delete_topic", {"TopicArn": "arn:aws:sns:us-east-1:1:t"}, "AccessDenied"),
    ("ec2", "ec2", "terminate_instances", {"InstanceIds": ["i-1"]}, "UnauthorizedOperation"),
    ("dynamodb", "json 1.0", "delete_table", {"TableName": "t"}, "AccessDeniedException"),
    ("sqs", "json 1.0", "delete_queue", {"QueueUrl": "https://q/1/q"}, "AccessDeniedException"),
    ("kms", "json 1.1", "schedule_key_deletion", {"KeyId": "k"}, "AccessDeniedException"),
    ("lambda", "rest-json", "delete_function", {"FunctionName": "f"}, "AccessDeniedException"),
    ("eks", "rest-json", "delete_cluster", {"name": "c"}, "AccessDeniedException"),
]


@pytest.mark.parametrize(
    ("service", "protocol", "method", "params", "code"),
    CALLS,
    ids=[f"{service}-{protocol}" for service, protocol, *_ in CALLS],
)
def test_a_refusal_is_the_sdks_own_error_with_the_reason(
    proxy: Proxy, service: str, protocol: str, method: str, params: dict[str, Any], code: str
) -> None:
    with pytest.raises(ClientError) as raised:
        getattr(client(proxy, service), method)(**params)
    error = raised.value.response["Error"]
    assert error["Code"] == code
    assert REASON in error["Message"]
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    [run] = [r for r in runs(proxy) if r.id in error["Message"]]
    assert run.decision == "BLOCK"
    assert run.operation.startswith(f"aws.{service}.")


def test_a_pending_call_is_retried_by_boto3_and_released_once_approved(proxy: Proxy) -> None:
    ec2 = client(proxy, "ec2")  # boto3's default retries
    image = "ami-12c6146b"
    call = Background(lambda: ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1))
    [waiting] = eventually(lambda: [p for p in pending(proxy) if p["action"] == "create_instances"])
    assert eventually(
        lambda: any(r.outcome == "pending" for r in runs(proxy) if r.action == "create_instances")
    )
    assert airlock("approve", waiting["id"], *proxy.store).returncode == 0

    started = call.result(timeout=60)
    assert len(started["Instances"]) == 1

    def forwarded() -> list[Any]:
        return [
            r for r in runs(proxy) if r.action == "create_instances" and r.outcome == "forwarded"
        ]

    assert len(eventually(forwarded)) == 1


def test_a_call_that_cannot_wait_says_it_is_pending_and_names_the_approval(proxy: Proxy) -> None:
    ec2 = client(proxy, "ec2", retries={"max_attempts": 1})
    with pytest.raises(ClientError) as raised:
        ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2)
    error = raised.value.response["Error"]
    assert error["Code"] == "RequestLimitExceeded"  # what boto3 retries by itself
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    [waiting] = [p for p in pending(proxy) if p["id"] in error["Message"]]
    assert "approval pending" in error["Message"]
    assert waiting["action"] == "create_instances"


def test_a_request_nothing_decided_is_refused_in_the_services_own_format(proxy: Proxy) -> None:
    """The decider stops answering (here: stopped by a signal): the request is refused after
    the store's timeout with no operation identified, and still as S3 answers, so boto3 raises
    its own error with the reason (it read a JSON body as Code "403")."""
    decider = decider_of(proxy)
    assert decider is not None
    s3 = client(proxy, "s3", retries={"max_attempts": 1}, read_timeout=60)
    os.kill(decider, signal.SIGSTOP)
    try:
        with pytest.raises(ClientError) as raised:
            s3.delete_bucket(Bucket="stalled")
    finally:
        os.kill(decider, signal.SIGCONT)
    error = raised.value.response["Error"]
    assert (error["Code"], raised.value.response["ResponseMetadata"]["HTTPStatusCode"]) == (
        "ServiceUnavailable",
        403,
    )
    assert "the store did not answer within" in error["Message"]
