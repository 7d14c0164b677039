"""What Airlock judges is what the upstream runs: requests the vendor reads otherwise than their
headers declare are read as the vendor reads them, and ambiguous ones are refused (BLOCK, with
the ambiguity named). Each case was a parser differential that let a request through unjudged;
each is evaluated with the shipped mappings and policies.
"""

from __future__ import annotations

from typing import Any

import pytest

from airlock.pipeline.document import WireRequest, build_document
from airlock.pipeline.evaluation import Config, evaluate
from airlock.pipeline.mappings import load_mappings
from airlock.pipeline.policies import load_policies
from tests.helpers.proxy import PROJECT_ROOT

CONFIG = Config(load_mappings(PROJECT_ROOT / "mappings"), load_policies(PROJECT_ROOT / "policies"))
FORM = ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
STRIPE = [("Authorization", "Bearer sk_live_x")]
ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"
READ_ONLY = "arn:aws:iam::aws:policy/ReadOnlyAccess"
IAM = "iam.amazonaws.com"
EC2 = "ec2.us-east-1.amazonaws.com"
BUCKET = "prod-bucket.s3.us-east-1.amazonaws.com"


def sigv4(service: str) -> tuple[str, str]:
    scope = f"AKIAEXAMPLE/20260101/us-east-1/{service}/aws4_request"
    return (
        "Authorization",
        f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=x",
    )


def judged(method: str, host: str, path: str, headers: list[tuple[str, str]], body: bytes = b""):
    request = WireRequest(method, "https", host, 443, path, headers, body)
    document = build_document(request, "agent")
    return document, evaluate(document, CONFIG)


def refused(evaluation: Any, *words: str) -> None:
    assert evaluation.verdict.decision == "BLOCK", evaluation.verdict
    for word in words:
        assert word in evaluation.verdict.reason, evaluation.verdict.reason


# --- H3, M1: X-Amz-Target only where the service reads it ---------------------------------


def test_a_rest_service_ignores_x_amz_target() -> None:
    _, evaluation = judged("DELETE", BUCKET, "/", [sigv4("s3"), ("X-Amz-Target", "x.GetObject")])
    assert evaluation.action.operation == "aws.s3.DeleteBucket"
    assert evaluation.verdict.decision == "BLOCK"


@pytest.mark.parametrize(
    ("host", "service", "target", "body"),
    [
        (IAM, "iam", "AWSIdentityManagementV20100508.ListUsers",
         f"Action=AttachUserPolicy&Version=2010-05-08&UserName=bot&PolicyArn={ADMIN}"),
        (EC2, "ec2", "x.DescribeInstances",
         "Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-1"),
    ],
)  # fmt: skip
def test_a_query_service_refuses_a_target_that_disagrees_with_its_action(
    host: str, service: str, target: str, body: str
) -> None:
    _, evaluation = judged(
        "POST", host, "/", [sigv4(service), FORM, ("X-Amz-Target", target)], body.encode()
    )
    refused(evaluation, "X-Amz-Target", "different operations")


def test_a_json_service_needs_its_own_target_prefix() -> None:
    document, _ = judged(
        "POST",
        "dynamodb.us-east-1.amazonaws.com",
        "/",
        [("Content-Type", "application/x-amz-json-1.0"), ("X-Amz-Target", "Other.DeleteTable")],
        b'{"TableName": "prod"}',
    )
    from airlock.pipeline.operations import load_catalog

    assert load_catalog().identify(document) is None


def test_an_identity_header_sent_twice_is_refused() -> None:
    headers = [
        ("Content-Type", "application/x-amz-json-1.0"),
        ("X-Amz-Target", "DynamoDB_20120810.DescribeTable"),
        ("X-Amz-Target", "DynamoDB_20120810.DeleteTable"),
    ]
    _, evaluation = judged(
        "POST", "dynamodb.us-east-1.amazonaws.com", "/", headers, b'{"TableName": "prod"}'
    )
    refused(evaluation, "x-amz-target header more than once")


# --- H4, M2: the query protocol reads the query string and the body ---------------------------


@pytest.mark.parametrize(
    ("method", "headers", "body"),
    [("GET", [], b""), ("POST", [], b""), ("POST", [("Content-Type", "text/plain")], b"x")],
)
def test_query_protocol_parameters_in_the_query_string_are_read(
    method: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    query = f"Action=AttachUserPolicy&Version=2010-05-08&UserName=bot&PolicyArn={ADMIN}"
    _, evaluation = judged(method, IAM, "/?" + query, [sigv4("iam"), *headers], body)
    assert evaluation.action.params["policy_arn"] == ADMIN
    assert evaluation.verdict.decision == "BLOCK"
    assert "administrator" in evaluation.verdict.reason


@pytest.mark.parametrize(
    ("query", "body", "key"),
    [
        ("Action=TerminateInstances&InstanceId.1=i-1", "Action=DescribeInstances", "Action"),
        (f"PolicyArn={ADMIN}", f"Action=AttachUserPolicy&UserName=b&PolicyArn={READ_ONLY}",
         "PolicyArn"),
    ],
)  # fmt: skip
def test_a_query_protocol_parameter_in_both_query_and_body_is_refused(
    query: str, body: str, key: str
) -> None:
    host, service = (EC2, "ec2") if "Instance" in query else (IAM, "iam")
    _, evaluation = judged("POST", host, "/?" + query, [sigv4(service), FORM], body.encode())
    refused(evaluation, f"both send {key}")


@pytest.mark.parametrize(
    ("host", "path", "body"),
    [
        ("api.stripe.com", "/v1/charges?amount=5000000", "amount=100&currency=usd"),
        ("slack.com", "/api/chat.delete?channel=C1", "channel=C2&ts=1.2"),
        ("api.twilio.com", "/2010-04-01/Accounts/AC1/Messages.json?To=%2B15550001", "To=%2B1555"),
    ],
)
def test_a_form_api_field_in_both_query_and_body_is_refused(
    host: str, path: str, body: str
) -> None:
    """Form APIs merge the query into the form, but which one counts when both send a field is
    theirs to say and not documented: judging the body's could let the query's through."""
    _, evaluation = judged("POST", host, path, [FORM], body.encode())
    refused(evaluation, "both send")


def test_github_reads_a_json_body_whatever_its_content_type() -> None:
    """`curl -d '{…}'` sends a form's Content-Type; GitHub parses the body as JSON, as its own
    examples send it: a reviewer must see the permission GitHub will grant, not the default."""
    body = b'{"permission": "admin"}'
    for content_type in ("application/x-www-form-urlencoded", "text/plain", ""):
        headers = [("Content-Type", content_type)] if content_type else []
        path = "/repos/octo/hello/collaborators/mallory"
        _, evaluation = judged("PUT", "api.github.com", path, headers, body)
        assert evaluation.action.params["permission"] == "admin", content_type
    text = [("Content-Type", "text/plain")]
    document, _ = judged("POST", "api.github.com", "/markdown/raw", text, b"# hello")
    assert document["body"] == "# hello" and "body_error" not in document  # its text, as sent


# --- H6: S3 reads its XML and JSON bodies whatever their Content-Type -----------------------

POLICY = (
    b'{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*",'
    b'"Action":"s3:GetObject","Resource":"arn:aws:s3:::prod-bucket/*"}]}'
)
DELETE_500 = (
    b"<Delete>"
    + b"".join(b"<Object><Key>k%d</Key></Object>" % i for i in range(500))
    + b"</Delete>"
)


@pytest.mark.parametrize(
    "content_type",
    # a form label (curl -d's default) turned every body-based S3 rule off (found by review)
    ["text/plain", "application/octet-stream", "application/x-www-form-urlencoded"],
)
@pytest.mark.parametrize(
    ("query", "body", "operation"),
    [("policy", POLICY, "aws.s3.PutBucketPolicy"), ("delete", DELETE_500, "aws.s3.DeleteObjects")],
)
def test_s3_bodies_declared_as_another_type_are_read_as_s3_reads_them(
    content_type: str, query: str, body: bytes, operation: str
) -> None:
    method = "POST" if query == "delete" else "PUT"
    headers = [sigv4("s3"), ("Content-Type", content_type)]
    _, evaluation = judged(method, BUCKET, f"/?{query}", headers, body)
    assert evaluation.action.operation == operation
    assert evaluation.verdict.decision == "REQUIRE_APPROVAL", evaluation.verdict
    assert "unreadable" not in " ".join(evaluation.verdict.rules)


def test_an_s3_configuration_body_that_does_not_parse_is_held() -> None:
    broken = POLICY[:-3]  # not JSON: S3 refuses it, or reads it otherwise than Airlock could
    headers = [sigv4("s3"), ("Content-Type", "text/plain")]
    document, evaluation = judged("PUT", BUCKET, "/?policy", headers, broken)
    assert "PutBucketPolicy" in document["body_error"]
    assert evaluation.verdict.decision == "REQUIRE_APPROVAL"


def test_an_s3_object_is_not_taken_for_a_configuration() -> None:
    """An object upload is whatever text it is: stored as sent, not held for not parsing."""
    headers = [sigv4("s3"), ("Content-Type", "text/plain")]
    document, evaluation = judged("PUT", BUCKET, "/logs/a.jsonl", headers, b'{"a": 1}\n{"b": 2}\n')
    assert evaluation.action.operation == "aws.s3.PutObject"
    assert "body_error" not in document


# --- H7: Stripe's amount wherever Stripe reads it -------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/v1/charges", [("Content-Type", "multipart/form-data; boundary=XX")],
         b'--XX\r\nContent-Disposition: form-data; name="amount"\r\n\r\n5000000\r\n'
         b'--XX\r\nContent-Disposition: form-data; name="currency"\r\n\r\nusd\r\n--XX--\r\n'),
        ("/v1/charges?amount=5000000&currency=usd", [("Content-Type", "text/plain")], b"x"),
        ("/v1/charges?amount=5000000&currency=usd", [("Content-Type", "application/json")], b"{}"),
        ("/v1/charges", [], b"amount=5000000&currency=usd&description=a b"),
    ],
    ids=["multipart", "query-beside-text", "query-beside-json", "no-content-type-with-space"],
)  # fmt: skip
def test_a_stripe_amount_is_read_wherever_stripe_reads_it(
    path: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    _, evaluation = judged("POST", "api.stripe.com", path, STRIPE + headers, body)
    assert evaluation.action.params["amount"] == 5000000
    assert evaluation.verdict.decision == "BLOCK"


# --- H9, L3: one value per field ---------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "headers", "body", "key"),
    [
        (IAM, [sigv4("iam"), FORM],
         f"Action=AttachUserPolicy&UserName=bot&PolicyArn={READ_ONLY}&PolicyArn={ADMIN}",
         "PolicyArn"),
        (EC2, [sigv4("ec2"), FORM],
         "Action=TerminateInstances&InstanceId.1=i-1&InstanceId.1=i-2", "InstanceId.1"),
        ("api.stripe.com", [FORM], "amount=1&amount=5000000&currency=usd", "amount"),
        ("api.stripe.com", [FORM], "metadata[a]=1&metadata[a]=2&amount=1", "metadata[a]"),
    ],
)  # fmt: skip
def test_a_form_field_sent_twice_is_refused(
    host: str, headers: list[tuple[str, str]], body: str, key: str
) -> None:
    _, evaluation = judged("POST", host, "/v1/charges" if "stripe" in host else "/", headers,
                           body.encode())  # fmt: skip
    refused(evaluation, f"repeats the key {key!r}")


def test_lists_in_the_vendors_notations_still_read() -> None:
    document, _ = judged(
        "POST", "api.stripe.com", "/v1/charges", [FORM], b"expand[]=a&expand[]=b&amount=5"
    )
    assert document["body"]["expand"] == ["a", "b"]
    body = b"Action=TerminateInstances&InstanceId.1=i-1&InstanceId.2=i-2"
    document, _ = judged("POST", EC2, "/", [sigv4("ec2"), FORM], body)
    assert document["body"]["InstanceId"] == ["i-1", "i-2"]
    twilio = b"To=%2B1&MediaUrl=https%3A%2F%2Fa&MediaUrl=https%3A%2F%2Fb"
    document, _ = judged("POST", "api.twilio.com", "/2010-04-01/Accounts/A/Messages.json",
                         [FORM], twilio)  # fmt: skip
    assert document["body"]["MediaUrl"] == ["https://a", "https://b"]


@pytest.mark.parametrize(
    ("host", "path", "body", "key"),
    [  # Twilio's list notation on its other hosts (notify's Identity as twilio-python sends it)
        ("notify.twilio.com", "/v1/Services/IS1/Notifications", b"Body=x&Identity=a&Identity=b",
         "Identity"),
        ("NOTIFY.twilio.com.", "/v1/Services/IS1/Notifications", b"Body=x&Identity=a&Identity=b",
         "Identity"),
        ("conversations.twilio.com", "/v1/Conversations/CH1/Participants",
         b"Identity=a&MessagingBinding.Address=%2B1&Attributes=x&Attributes=y", "Attributes"),
        ("verify.twilio.com", "/v2/Services/VA1/Verifications",
         b"To=%2B1&Channel=sms&TemplateCustomSubstitutions=a&TemplateCustomSubstitutions=b",
         "TemplateCustomSubstitutions"),
    ],
)  # fmt: skip
def test_twilios_repeated_keys_are_lists_on_every_twilio_host(
    host: str, path: str, body: bytes, key: str
) -> None:
    document, _ = judged("POST", host, path, [FORM], body)
    assert "request_error" not in document, document.get("request_error")
    assert isinstance(document["body"][key], list)


@pytest.mark.parametrize(
    "host",
    ["api.twilio.com", "conversations.twilio.com", "verify.twilio.com", "Notify.Twilio.com."],
)
def test_every_twilio_host_reads_its_query_beside_any_body(host: str) -> None:
    """Twilio merges the query into the form on all its hosts, not only api.twilio.com: a
    parameter there beside a body that is not a form is what Twilio acts on, so it is judged."""
    document, _ = judged("POST", host, "/v1/Services/MG1/Messages?To=%2B15550100",
                         [("content-type", "text/plain")], b"hello")  # fmt: skip
    assert document["body"]["To"] == "+15550100"


def test_a_host_that_only_ends_like_twilios_is_not_twilio() -> None:
    _, evaluation = judged("POST", "eviltwilio.com", "/v1/x", [FORM], b"a=1&a=2")
    refused(evaluation, "repeats the key")


def test_a_rack_style_semicolon_separator_is_refused() -> None:
    _, evaluation = judged(
        "POST", "api.stripe.com", "/v1/charges", [FORM], b"currency=usd;amount=5000000"
    )
    refused(evaluation, "';'")


# --- L1, L2 ---------------------------------------------------------------------------------


def test_two_s3_sub_resources_are_refused() -> None:
    _, evaluation = judged("PUT", BUCKET, "/?acl&policy", [sigv4("s3")], POLICY)
    refused(evaluation, "PutBucketAcl", "PutBucketPolicy")


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([("X-HTTP-Method-Override", "DELETE")], b""),
        ([("X-HTTP-Method", "DELETE")], b""),
        ([("X-Method-Override", "DELETE")], b""),
        ([FORM], b"_method=delete"),
    ],
)
def test_a_method_override_that_disagrees_is_refused(
    headers: list[tuple[str, str]], body: bytes
) -> None:
    _, evaluation = judged("POST", "api.stripe.com", "/v1/customers/cus_1", headers, body)
    refused(evaluation, "DELETE" if not body else "'delete'", "POST")


def test_a_method_override_that_agrees_is_judged_as_sent() -> None:
    document, _ = judged(
        "POST", "api.stripe.com", "/v1/charges", [FORM, ("X-HTTP-Method-Override", "post")],
        b"amount=5&currency=usd",
    )  # fmt: skip
    assert "request_error" not in document


# --- a SigV4 credential scope names a service only on a VPC endpoint ------------------------

SCOPED = "X-Amz-Credential=a/20260101/us-east-1/{}/aws4_request"
GET_ITEM = ("X-Amz-Target", "DynamoDB_20120810.GetItem")
JSON = ("Content-Type", "application/json")
DELETE_DATABASE = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"delete_database","arguments":{"name":"prod"}}}'
)


@pytest.mark.parametrize(
    ("method", "host", "path", "headers", "body", "action"),
    [
        (
            "POST", "mcp.internal.example", "/mcp?" + SCOPED.format("dynamodb"), [JSON, GET_ITEM],
            DELETE_DATABASE, "mcp.mcp.internal.example.delete_database",
        ),
        (
            "POST", "mcp.internal.example", "/mcp", [JSON, GET_ITEM, sigv4("dynamodb")],
            DELETE_DATABASE, "mcp.mcp.internal.example.delete_database",
        ),
        (
            "POST", "api.internal.example", "/v1/wire-transfer?" + SCOPED.format("dynamodb"),
            [JSON, GET_ITEM], b'{"amount":1000000}', "http.write",
        ),
        (
            "DELETE", "api.internal.example", "/v1/accounts/1?" + SCOPED.format("s3"), [], b"",
            "http.write",
        ),
        (  # an AWS name that is a customer's own server (a load balancer)
            "POST", "my-lb-1.us-east-1.elb.amazonaws.com", "/v1/wire-transfer",
            [JSON, GET_ITEM, sigv4("dynamodb")], b'{"amount":1000000}', "http.write",
        ),
    ],
)  # fmt: skip
def test_a_credential_scope_does_not_make_a_host_an_aws_service(
    method: str, host: str, path: str, headers: list[tuple[str, str]], body: bytes, action: str
) -> None:
    _, evaluation = judged(method, host, path, headers, body)
    assert evaluation.action.operation is None
    assert evaluation.action.action == action
    assert evaluation.verdict.decision == "REQUIRE_APPROVAL", evaluation.verdict


def test_a_vpc_endpoint_is_read_by_its_credential_scope() -> None:
    host = "vpce-0a1b2c3d-4e5f.dynamodb.us-east-1.vpce.amazonaws.com"
    target = ("X-Amz-Target", "DynamoDB_20120810.DeleteTable")
    document, evaluation = judged(
        "POST", host, "/", [sigv4("dynamodb"), target, ("Content-Type", "text/plain")],
        b'{"TableName": "orders"}',
    )  # fmt: skip
    assert document["body_format"] == "json"  # read as DynamoDB reads it
    assert evaluation.action.operation == "aws.dynamodb.DeleteTable"


# --- multipart: one name per part, delimiters that start a line ----------------------------


def multipart(*parts: bytes, boundary: bytes = b"b") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--b--\r\n"


def field(disposition: bytes, value: bytes) -> bytes:
    return b"Content-Disposition: form-data; " + disposition + b"\r\n\r\n" + value


CHARGE_REST = (field(b'name="currency"', b"usd"), field(b'name="source"', b"tok_visa"))


@pytest.mark.parametrize(
    ("content_type", "body", "words"),
    [
        (  # Rack reads the last name: 99999999 is the amount Stripe charges
            "multipart/form-data; boundary=b",
            multipart(
                field(b'name="amount"; name="x1"', b"100"),
                field(b'name="x2"; name="amount"', b"99999999"), *CHARGE_REST,
            ),
            ("names its field twice",),
        ),
        (  # a name inside another parameter's quotes, found by Rack's `.*;\s*name=`
            "multipart/form-data; boundary=b",
            multipart(
                field(b'name="amount"', b"100"),
                field(b'x="a; name=amount"; name="x2"', b"99999999"), *CHARGE_REST,
            ),
            ("names its field twice",),
        ),
        (
            "multipart/form-data; boundary=b",
            multipart(field(b"name=amount", b"99999999"), *CHARGE_REST),
            ("not one quoted string",),
        ),
        (
            "multipart/form-data; boundary=b",
            multipart(field(b"name*=UTF-8''amount", b"99999999"), *CHARGE_REST),
            ("not one quoted string",),
        ),
        (
            "multipart/form-data; boundary=b",
            multipart(
                b'Content-Disposition: form-data; name="x"\r\n' + field(b'name="amount"', b"9"),
                *CHARGE_REST,
            ),
            ("two Content-Disposition lines",),
        ),
        (
            "multipart/form-data; boundary=b; boundary=c",
            multipart(field(b'name="amount"', b"100"), *CHARGE_REST),
            ("boundary twice",),
        ),
    ],
    ids=["two-names", "name-in-quotes", "unquoted", "name-star", "two-dispositions", "boundaries"],
)  # fmt: skip
def test_a_multipart_part_whose_name_upstreams_read_differently_is_refused(
    content_type: str, body: bytes, words: tuple[str, ...]
) -> None:
    headers = [*STRIPE, ("Content-Type", content_type)]
    document, evaluation = judged("POST", "api.stripe.com", "/v1/charges", headers, body)
    refused(evaluation, *words)
    assert "request_error" in document


def test_a_multipart_delimiter_inside_a_line_is_content() -> None:
    body = multipart(field(b'name="description"', b"x--b\r\nz--b"), field(b'name="amount"', b"5"))
    headers = [*STRIPE, ("Content-Type", "multipart/form-data; boundary=b")]
    document, _ = judged("POST", "api.stripe.com", "/v1/charges", headers, body)
    assert document["body"] == {"description": "x--b\r\nz--b", "amount": "5"}


def test_the_sdks_multipart_uploads_still_read() -> None:
    import io

    from stripe._multipart_data_generator import MultipartDataGenerator
    from urllib3 import encode_multipart_formdata

    generator = MultipartDataGenerator()
    generator.add_params({"purpose": "dispute_evidence", "file": io.BytesIO(b"%PDF")})
    content_type = f"multipart/form-data; boundary={generator.boundary}"
    document, _ = judged(
        "POST", "files.stripe.com", "/v1/files", [*STRIPE, ("Content-Type", content_type)],
        generator.get_post_data(),
    )  # fmt: skip
    assert "request_error" not in document
    assert document["body"]["purpose"] == "dispute_evidence"
    # httpx (the openai SDK's) frames a file upload as urllib3 does
    body, content_type = encode_multipart_formdata(
        {"purpose": "fine-tune", "file": ("data.jsonl", b"{}\n", "application/jsonl")}
    )
    document, _ = judged(
        "POST", "api.openai.com", "/v1/files",
        [("Authorization", "Bearer sk-x"), ("Content-Type", content_type)], body,
    )  # fmt: skip
    assert "request_error" not in document
    assert document["body"]["purpose"] == "fine-tune"
