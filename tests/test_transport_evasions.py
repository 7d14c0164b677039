"""Requests the vendor reads by another transport than the one Airlock read: each was judged as
something other than what the vendor acts on (found by review), and is now read as the vendor
reads it or refused. Evaluated with the shipped mappings and policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials

from airlock.pipeline.document import WireRequest, build_document
from airlock.pipeline.evaluation import Config, Evaluation, evaluate
from airlock.pipeline.mappings import load_mappings
from airlock.pipeline.policies import load_policies
from airlock.pipeline.run_record import request_hash
from tests.helpers.proxy import PROJECT_ROOT
from tests.test_parser_differentials import refused

CONFIG = Config(load_mappings(PROJECT_ROOT / "mappings"), load_policies(PROJECT_ROOT / "policies"))
KEY = bytes(range(32))
CREDENTIALS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
BUCKET = "prod-bucket"
HOST = f"{BUCKET}.s3.us-east-1.amazonaws.com"
ALL_USERS = 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'
EVERY_ACCOUNT = 'id="abc", uri="http://acs.amazonaws.com/groups/global/AuthenticatedUsers"'
DELETE_XML = b"<Delete><Object><Key>a.csv</Key></Object></Delete>"
RETENTION_XML = (
    b"<Retention><Mode>GOVERNANCE</Mode><RetainUntilDate>2026-01-01T00:00:00Z</RetainUntilDate>"
    b"</Retention>"
)


def judged(
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    host: str = HOST,
) -> tuple[dict[str, Any], Evaluation]:
    request = WireRequest(method, "https", host, 443, path, list(headers), body)
    document = build_document(request, "agent")
    return document, evaluate(document, CONFIG)


# --- S3: x-amz-* request headers carried in a presigned URL's query ---------------------------


def boto3_presigned(operation: str, params: dict[str, Any]) -> str:
    """The URL boto3 presigns (SigV2 query auth, its default for S3): it writes the x-amz-*
    headers of the call (ACL, grants, bypass) into the query string."""
    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id=CREDENTIALS.access_key,
        aws_secret_access_key=CREDENTIALS.secret_key,
        config=BotoConfig(s3={"addressing_style": "virtual"}),
    )  # fmt: skip
    return client.generate_presigned_url(operation, Params={"Bucket": BUCKET, **params})


def sigv4_presigned(method: str, url: str) -> str:
    """A SigV4 presigned URL whose query holds what the caller put there (AWS's JS v3 presigner
    hoists every x-amz-* header into it)."""
    request = AWSRequest(method=method, url=url)
    S3SigV4QueryAuth(CREDENTIALS, "s3", "us-east-1", expires=3600).add_auth(request)
    return request.prepare().url


def target_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def as_headers(target: str) -> tuple[str, list[tuple[str, str]]]:
    """The same request with its x-amz-* query fields sent as headers instead."""
    path, _, query = target.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    headers = [(k, v) for k, v in pairs if k.startswith("x-amz-")]
    rest = [(k, v) for k, v in pairs if not k.startswith("x-amz-")]
    return f"{path}?{urlencode(rest)}", headers


# (boto3 operation, its params, method, body, the rule the header form fires): every shipped S3
# rule that reads an x-amz-* request header (ACLs, grants, governance bypass).
S3_HEADER_RULES = [
    ("put_object", {"Key": "r.csv", "ACL": "public-read"}, "PUT", b"a,b",
     "aws-public-exposure-needs-approval"),
    ("put_object", {"Key": "r.csv", "GrantRead": ALL_USERS}, "PUT", b"a,b",
     "aws-public-grants-need-approval"),
    ("create_multipart_upload", {"Key": "big.bin", "ACL": "public-read"}, "POST", b"",
     "aws-public-exposure-needs-approval"),
    ("create_multipart_upload", {"Key": "big.bin", "GrantFullControl": ALL_USERS}, "POST", b"",
     "aws-public-grants-need-approval"),
    ("create_bucket", {"ACL": "public-read-write"}, "PUT", b"",
     "aws-public-exposure-needs-approval"),
    ("put_bucket_acl", {"GrantRead": EVERY_ACCOUNT}, "PUT", b"",
     "aws-public-grants-need-approval"),
    ("put_object_acl", {"Key": "r.csv", "ACL": "authenticated-read"}, "PUT", b"",
     "aws-public-exposure-needs-approval"),
    ("put_object_acl", {"Key": "r.csv", "GrantWriteACP": ALL_USERS}, "PUT", b"",
     "aws-public-grants-need-approval"),
    ("delete_object", {"Key": "locked.csv", "VersionId": "v1", "BypassGovernanceRetention": True},
     "DELETE", b"", "aws-governance-bypass-blocked"),
    ("delete_objects", {"Delete": {"Objects": [{"Key": "a.csv"}]},
                        "BypassGovernanceRetention": True}, "POST", DELETE_XML,
     "aws-governance-bypass-blocked"),
    ("put_object_retention", {"Key": "locked.csv", "BypassGovernanceRetention": True,
                              "Retention": {"Mode": "GOVERNANCE"}}, "PUT", RETENTION_XML,
     "aws-governance-bypass-blocked"),
]  # fmt: skip
XML = [("Content-Type", "application/xml")]


@pytest.mark.parametrize(("operation", "params", "method", "body", "rule"), S3_HEADER_RULES)
def test_s3_reads_x_amz_fields_in_a_presigned_query_as_the_headers_they_name(
    operation: str, params: dict[str, Any], method: str, body: bytes, rule: str
) -> None:
    hoisted = target_of(boto3_presigned(operation, params))
    assert "x-amz-" in hoisted  # boto3 wrote the headers into the query
    path, headers = as_headers(hoisted)
    content = XML if body.startswith(b"<") else []
    _, as_sent = judged(method, hoisted, content, body)
    _, header_form = judged(method, path, headers + content, body)
    assert rule in header_form.verdict.rules
    assert as_sent.verdict.decision == header_form.verdict.decision != "ALLOW"
    assert as_sent.verdict.rules == header_form.verdict.rules
    assert as_sent.action.params == header_form.action.params


def test_a_sigv4_presigned_url_with_the_acl_in_its_query_needs_approval() -> None:
    # the review's case: `?x-amz-acl=public-read` signed with SigV4 query auth, ALLOWed before
    url = sigv4_presigned("PUT", f"https://{HOST}/report.csv?x-amz-acl=public-read")
    _, evaluation = judged("PUT", target_of(url), [], b"secret,data\n")
    assert evaluation.action.params["canned_acl"] == "public-read"
    assert evaluation.verdict.rules == ("aws-public-exposure-needs-approval",)


def test_an_upper_case_query_field_reads_as_its_header() -> None:
    url = sigv4_presigned(
        "DELETE", f"https://{HOST}/locked.csv?X-Amz-Bypass-Governance-Retention=true"
    )
    _, evaluation = judged("DELETE", target_of(url))
    assert evaluation.verdict.decision == "BLOCK"
    assert evaluation.verdict.rules == ("aws-governance-bypass-blocked",)


def test_a_presigned_private_put_stays_allowed() -> None:
    url = boto3_presigned("put_object", {"Key": "r.csv", "ACL": "private"})
    _, evaluation = judged("PUT", target_of(url), [], b"a,b")
    assert evaluation.action.params["canned_acl"] == "private"
    assert evaluation.verdict.decision == "ALLOW"
    sigv4 = sigv4_presigned("PUT", f"https://{HOST}/r.csv")  # its own X-Amz-* fields
    document, evaluation = judged("PUT", target_of(sigv4), [], b"a,b")
    assert not any(name.startswith("x-amz-") for name in document["headers"])
    assert evaluation.verdict.decision == "ALLOW"


def test_an_x_amz_field_as_a_header_and_in_the_query_is_refused() -> None:
    url = sigv4_presigned("PUT", f"https://{HOST}/r.csv?x-amz-acl=private")
    _, evaluation = judged("PUT", target_of(url), [("x-amz-acl", "public-read")], b"a,b")
    refused(evaluation, "x-amz-acl", "both as a header and in the query")


def test_an_x_amz_field_twice_in_the_query_with_different_values_is_refused() -> None:
    url = sigv4_presigned("PUT", f"https://{HOST}/r.csv?x-amz-acl=private&X-Amz-Acl=public-read")
    _, evaluation = judged("PUT", target_of(url), [], b"a,b")
    refused(evaluation, "x-amz-acl", "twice with different values")


def test_a_json_service_reads_its_target_from_the_query_too() -> None:
    _, evaluation = judged(
        "POST", "/?X-Amz-Target=AmazonSQS.PurgeQueue", [("X-Amz-Target", "AmazonSQS.ListQueues")],
        b"{}", host="sqs.us-east-1.amazonaws.com",
    )  # fmt: skip
    refused(evaluation, "x-amz-target", "both as a header and in the query")


def test_query_fields_stay_query_fields_off_aws_and_on_query_protocol_services() -> None:
    document, _ = judged(
        "PUT", "/r?x-amz-acl=public-read", [("x-amz-acl", "private")], host="api.example.com"
    )
    assert document["headers"]["x-amz-acl"] == "private"
    assert "request_error" not in document
    document, _ = judged(
        "GET", "/?Action=ListUsers&Version=2010-05-08&X-Amz-Meta=x", host="iam.amazonaws.com"
    )
    assert "x-amz-meta" not in document["headers"]
    assert "request_error" not in document


def test_an_approval_of_a_presigned_url_does_not_cover_another_acl_in_its_query() -> None:
    private, _ = judged("PUT", "/r.csv?x-amz-acl=private", [], b"a,b")
    public, _ = judged("PUT", "/r.csv?x-amz-acl=public-read", [], b"a,b")
    as_header, _ = judged("PUT", "/r.csv", [("x-amz-acl", "public-read")], b"a,b")
    hashes = {request_hash(document, KEY) for document in (private, public, as_header)}
    assert len(hashes) == 3


# --- SQS: an Action in the query string beside the body's Action or an X-Amz-Target ---------

SQS = "sqs.us-east-1.amazonaws.com"
QUEUE = "QueueUrl=https%3A%2F%2Fsqs.us-east-1.amazonaws.com%2F1%2Fprod-orders"
SIGNED = ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20260101/us-east-1/sqs/"
          "aws4_request, SignedHeaders=host, Signature=x")  # fmt: skip
FORM = ("Content-Type", "application/x-www-form-urlencoded")
AWS_JSON = ("Content-Type", "application/x-amz-json-1.0")


@pytest.mark.parametrize(
    ("path", "headers", "body", "named"),
    [
        (f"/?Action=PurgeQueue&{QUEUE}", [FORM], b"Action=ListQueues", "both send Action"),
        (f"/?Action=DeleteQueue&{QUEUE}", [AWS_JSON, ("X-Amz-Target", "AmazonSQS.ListQueues")],
         b"{}", "X-Amz-Target"),
        (f"/?Action=DeleteQueue&{QUEUE}", [AWS_JSON], b'{"Action": "ListQueues"}', "in the body"),
        (f"/?Action=DeleteQueue&X-Amz-Target=AmazonSQS.ListQueues&{QUEUE}", [AWS_JSON], b"{}",
         "X-Amz-Target"),
        (f"/?Action=DeleteQueue&Action=ListQueues&{QUEUE}", [AWS_JSON], b"{}",
         "in the query string"),
        # agreeing, still two places: which one's parameters SQS reads is not documented
        (f"/?Action=PurgeQueue&{QUEUE}", [FORM], b"Action=PurgeQueue", "both send Action"),
        (f"/?Action=PurgeQueue&{QUEUE}", [AWS_JSON, ("X-Amz-Target", "AmazonSQS.PurgeQueue")],
         b'{"QueueUrl": "https://sqs.us-east-1.amazonaws.com/1/staging"}', "X-Amz-Target"),
    ],
    ids=["form-action", "target", "json-action", "target-in-query", "two-query-actions",
         "same-form-action", "same-target"],
)  # fmt: skip
def test_sqs_refuses_a_query_action_beside_another_name_for_the_operation(
    path: str, headers: list[tuple[str, str]], body: bytes, named: str
) -> None:
    _, evaluation = judged("POST", path, [SIGNED, *headers], body, host=SQS)
    refused(evaluation, "Action", named)


def test_sqs_refuses_a_parameter_in_both_the_query_and_the_form() -> None:
    _, evaluation = judged(
        "POST", f"/?{QUEUE}", [SIGNED, FORM], f"Action=PurgeQueue&{QUEUE}x".encode(), host=SQS
    )
    refused(evaluation, "both send QueueUrl")


@pytest.mark.parametrize(
    ("method", "path", "headers", "body"),
    [
        ("GET", f"/?Action=PurgeQueue&{QUEUE}", [], b""),  # the query protocol, in the URL
        ("POST", f"/?Action=PurgeQueue&{QUEUE}", [FORM], b""),
        ("POST", "/", [FORM], f"Action=PurgeQueue&{QUEUE}".encode()),  # in a form
        ("POST", "/", [AWS_JSON, ("X-Amz-Target", "AmazonSQS.PurgeQueue")],  # the JSON protocol
         b'{"QueueUrl": "https://sqs.us-east-1.amazonaws.com/1/prod-orders"}'),
    ],
    ids=["get-query", "post-query", "form", "json"],
)  # fmt: skip
def test_sqs_judges_each_protocol_s_own_request(
    method: str, path: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    _, evaluation = judged(method, path, [SIGNED, *headers], body, host=SQS)
    assert evaluation.action.operation == "aws.sqs.PurgeQueue"
    assert evaluation.verdict.decision == "REQUIRE_APPROVAL"


def test_a_query_service_s_presigned_url_keeps_its_action() -> None:
    path = "/?Action=ListUsers&Version=2010-05-08&X-Amz-Algorithm=AWS4-HMAC-SHA256"
    _, evaluation = judged("GET", path, host="iam.amazonaws.com")
    assert evaluation.action.operation == "aws.iam.ListUsers"
    assert evaluation.verdict.decision == "ALLOW"


# --- Form APIs: keys whose brackets Rack reads as another key ----------------------------------

STRIPE = "api.stripe.com"
STRIPE_KEY = ("Authorization", "Bearer sk_live_x")


@pytest.mark.parametrize(
    "extra",
    ["amount]=5000000", "[amount]=5000000", "amount]]=5000000", "amount[=5000000",
     "metadata[a=1", "metadata[a]b=1", "metadata]a[b]=1", "metadata[a[b]]=1", "[]=1"],
)  # fmt: skip
def test_a_form_key_with_misplaced_brackets_is_refused(extra: str) -> None:
    # Rack 2 reads `amount]`, `[amount]` and `amount]]` as `amount`, the last value counting:
    # Stripe would charge 5,000,000 where Airlock read 500
    body = f"amount=500&currency=usd&{extra}".encode()
    _, evaluation = judged("POST", "/v1/charges", [STRIPE_KEY, FORM], body, host=STRIPE)
    refused(evaluation, repr(extra.split("=")[0]), "misplaced brackets")


def test_misplaced_brackets_are_refused_in_the_query_and_in_multipart_fields() -> None:
    _, evaluation = judged(
        "POST", "/v1/refunds?amount]]=900000", [STRIPE_KEY, FORM], b"charge=ch_1&amount=100",
        host=STRIPE,
    )  # fmt: skip
    refused(evaluation, "'amount]]'", "misplaced brackets")
    multipart = (
        b'--b\r\nContent-Disposition: form-data; name="amount"\r\n\r\n500\r\n'
        b'--b\r\nContent-Disposition: form-data; name="[amount]"\r\n\r\n5000000\r\n--b--\r\n'
    )
    _, evaluation = judged(
        "POST", "/v1/charges", [STRIPE_KEY, ("Content-Type", "multipart/form-data; boundary=b")],
        multipart, host=STRIPE,
    )  # fmt: skip
    refused(evaluation, "'[amount]'", "misplaced brackets")


def test_stripe_s_own_bracketed_keys_are_read() -> None:
    body = (
        b"amount=500&currency=usd&metadata[order]=42&expand[]=customer&expand[]=invoice"
        b"&items[0][price]=price_1&items[0][quantity]=2"
    )
    document, evaluation = judged("POST", "/v1/charges", [STRIPE_KEY, FORM], body, host=STRIPE)
    assert "request_error" not in document
    assert document["body"]["metadata"] == {"order": "42"}
    assert document["body"]["expand"] == ["customer", "invoice"]
    assert document["body"]["items"] == [{"price": "price_1", "quantity": "2"}]
    assert evaluation.action.params["amount"] == 500
    assert evaluation.verdict.decision != "BLOCK"
