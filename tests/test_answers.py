"""Every catalog service's answers, read by botocore's own response parser for its protocol:
the error code and Airlock's message come out as the SDK will raise them."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.parsers import create_parser

from airlock.pipeline.answers import BLOCKED, FAILED, PENDING, load_answers, situation_of
from airlock.pipeline.operations import load_catalog

ANSWERS = load_answers()
CATALOG = load_catalog()
MESSAGE = 'Airlock refused delete_bucket: never <delete> & "drop" (request r1)'


@pytest.mark.parametrize(
    "service", sorted(n for n, s in CATALOG.services.items() if s.provider == "aws")
)
@pytest.mark.parametrize("situation", [BLOCKED, PENDING, FAILED])
def test_botocore_reads_the_code_and_the_reason(service: str, situation: str) -> None:
    model = botocore.session.get_session().get_service_model(service)
    name = next(n for n in model.operation_names if CATALOG.services[service].operations[n].write)
    answer = ANSWERS.format_for(f"aws.{service}.{name}")
    assert answer is not None
    headers, body = answer.render(situation, MESSAGE, "r1", "a1")
    status = 503 if situation == PENDING else 403
    parsed = create_parser(model.protocol).parse(
        # Header names are read case-insensitively by the HTTP client before the parser.
        {
            "status_code": status,
            "headers": {k.lower(): v for k, v in headers.items()},
            "body": body,
        },
        model.operation_model(name).output_shape,
    )
    assert parsed["Error"]["Code"] == answer.codes[situation]
    assert parsed["Error"]["Message"] == MESSAGE


def test_non_aws_requests_keep_the_generic_json_body() -> None:
    assert ANSWERS.format_for("stripe.PostCharges") is None
    assert ANSWERS.format_for(None) is None


@pytest.mark.parametrize(
    ("host", "format_name"),
    [
        ("s3.amazonaws.com", "aws-rest-xml"),
        ("agent-data.s3.us-east-1.amazonaws.com", "aws-rest-xml"),
        ("dynamodb.us-east-1.amazonaws.com", "aws-json"),
        ("ec2.eu-west-1.amazonaws.com", "aws-ec2"),
        ("IAM.amazonaws.com.", "aws-query"),
        ("api.stripe.com", None),
        ("my-lb-1.us-east-1.elb.amazonaws.com", None),  # a customer's server on an AWS name
    ],
)
def test_with_nothing_decided_the_hosts_aws_service_chooses_the_format(
    host: str, format_name: str | None
) -> None:
    """The decider did not answer or the store failed: no operation, yet boto3 must still read
    its own error (an S3 refusal in JSON was Code "403", the reason lost)."""
    found = ANSWERS.format_for(None, host)
    assert (found.name if found else None) == format_name
    assert ANSWERS.format_for("stripe.PostCharges", host) is None  # identified: not by host


def test_situations() -> None:
    assert situation_of(403, None, recorded=True) == BLOCKED
    assert situation_of(403, {"state": "DENIED"}, recorded=True) == BLOCKED
    assert situation_of(503, {"state": "PENDING"}, recorded=True) == PENDING
    assert situation_of(503, None, recorded=True) == FAILED  # shutting down: retry
    assert situation_of(403, None, recorded=False) == FAILED  # the store failed
