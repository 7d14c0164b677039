"""Operation identity from the generated catalog, judged against the whole of each AWS service:
every operation's request built by botocore exactly as boto3 sends it, captured before it leaves.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import tutils

from airlock.console.catalog_build import openapi_sensitivity
from airlock.console.catalog_coverage import aws_coverage, aws_request, report
from airlock.pipeline.document import build_document
from airlock.pipeline.evaluation import Config, evaluate
from airlock.pipeline.mappings import load_mappings
from airlock.pipeline.operations import LEADING, MAX_CACHED_HOST, load_catalog, parse_aws_host
from airlock.pipeline.policies import load_policies
from airlock.pipeline.yaml_source import ConfigError
from tests.helpers.proxy import PROJECT_ROOT

CATALOG = load_catalog()
SHIPPED = load_mappings(PROJECT_ROOT / "mappings")
BASELINE = Config(SHIPPED, load_policies(PROJECT_ROOT / "policies"))


def identify(service: str, operation: str, params: dict[str, Any], **config: Any) -> Any:
    return CATALOG.identify(build_document(aws_request(service, operation, params, **config), "a"))


def evaluated(service: str, operation: str, params: dict[str, Any], **config: Any) -> Any:
    request = aws_request(service, operation, params, **config)
    return evaluate(build_document(request, "agent"), BASELINE)


# --- the whole of each service ---------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        {},
        {"use_fips_endpoint": True},
        {"use_dualstack_endpoint": True},
        {"s3": {"addressing_style": "path"}},
    ],
    ids=["regional", "fips", "dualstack", "s3-path-style"],
)
def test_every_write_operation_is_identified_as_itself(endpoint: dict[str, Any]) -> None:
    results = aws_coverage(CATALOG, endpoint)
    text = report(results)
    print(text)
    assert [r.service for r in results] == sorted(json.loads(sources())["aws"]["services"])
    for result in results:
        assert result.wrong == [], text  # identified as another operation: never
        assert result.share >= 0.99, text
        # What botocore itself cannot build here (S3 Object Lambda has no dualstack form).
        assert len(result.missed) == 0, text


def sources() -> str:
    return (PROJECT_ROOT / "catalog" / "sources.json").read_text()


def test_the_catalog_names_its_source_and_every_file_is_generated_from_the_pin() -> None:
    import botocore

    pinned = json.loads(sources())["aws"]["version"]
    assert botocore.__version__ == pinned, "the tests build requests with the pinned botocore"
    for path in (PROJECT_ROOT / "catalog" / "aws").glob("*.json"):
        assert json.loads(path.read_text())["source"].startswith(f"botocore {pinned}: ")


def test_every_openapi_operation_is_rated_as_the_build_rates_it_now() -> None:
    """The generated files agree with the rules in console/catalog_build.py: a rule changed
    without `make catalog` would leave operations rated by the old one."""
    stale = [
        (path.name, operation["name"], operation["sensitivity"])
        for path in sorted((PROJECT_ROOT / "catalog" / "openapi").glob("*.json"))
        for operation in json.loads(path.read_text())["operations"]
        if operation["sensitivity"]
        != openapi_sensitivity(operation["name"], operation["method"].lower(), operation["write"])
    ]
    assert stale == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("PostInvoices", "medium"),  # "invoices" holds "voice": not a cloned voice
        ("PostInvoicesInvoiceSend", "medium"),
        ("PostInvoiceitems", "medium"),
        ("createVoice", "high"),  # a cloned voice (OpenAI)
        ("updateVoiceConsent", "high"),
        ("PostWebhookEndpoints", "high"),  # "hook" inside a word is meant
        ("PostTransfers", "high"),
        ("Getinputtokencounts", "medium"),  # a model's input tokens counted (OpenAI)
        ("messages.count_tokens", "medium"),  # (Anthropic)
        ("apps/create-installation-access-token", "high"),  # a credential
        ("POST_v3-teammates-pending-token-resend", "high"),
        ("post_account_tokens", "high"),  # "count_" inside "account_": a credential still
    ],
)
def test_risky_words_are_read_where_they_mean_what_they_say(name: str, expected: str) -> None:
    assert openapi_sensitivity(name, "post", write=True) == expected


# --- hosts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("ec2.us-east-1.amazonaws.com", ("ec2", "")),
        ("ec2-fips.us-east-1.amazonaws.com", ("ec2", "")),
        ("ec2.us-east-1.api.aws", ("ec2", "")),
        ("iam.global.api.aws", ("iam", "")),
        ("stream-logs.us-east-1.amazonaws.com", ("stream-logs", "")),
        ("iam.amazonaws.com", ("iam", "")),
        ("iam-fips.amazonaws.com", ("iam", "")),
        ("rds-fips.us-gov-west-1.amazonaws.com", ("rds", "")),
        ("s3.dualstack.eu-west-1.amazonaws.com", ("s3", "")),
        ("my-bucket.s3.dualstack.eu-west-1.amazonaws.com", ("s3", "my-bucket")),
        ("my-bucket.s3-us-west-2.amazonaws.com", ("s3", "my-bucket")),
        ("my-bucket.s3-fips.us-east-1.amazonaws.com", ("s3", "my-bucket")),
        ("dotted.bucket.s3.amazonaws.com", ("s3", "dotted.bucket")),
        ("ec2.s3.amazonaws.com", ("s3", "ec2")),  # a bucket named like a service
        ("123456789012.ddb.us-east-1.amazonaws.com", ("ddb", "123456789012")),
        ("bejing.s3.cn-north-1.amazonaws.com.cn", ("s3", "bejing")),
        ("example.com", None),
    ],
)
def test_aws_hosts_name_their_service_read_from_the_right(host: str, expected: Any) -> None:
    assert parse_aws_host(host) == expected


def test_a_host_that_names_no_service_is_identified_by_the_signature_scope() -> None:
    request = aws_request(
        "ec2",
        "TerminateInstances",
        {"InstanceIds": ["i-1"]},
    )
    document = build_document(request, "a")
    document["host"] = "vpce-0a1b2c3d-4e5f.ec2.us-east-1.vpce.amazonaws.com"
    assert CATALOG.identify(document).name == "aws.ec2.TerminateInstances"
    del document["headers"]["authorization"]
    assert CATALOG.identify(document) is None


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "api.internal.example",
        "my-lb-1.us-east-1.elb.amazonaws.com",  # a customer's server on an AWS name
        "ec2-1-2-3-4.compute-1.amazonaws.com",
    ],
)
def test_the_scope_names_no_service_on_any_other_host(host: str) -> None:
    request = aws_request("ec2", "TerminateInstances", {"InstanceIds": ["i-1"]})
    document = build_document(request, "a")
    document["host"] = host
    assert CATALOG.identify(document) is None
    assert not SHIPPED.is_vendor_host(document)


def test_dynamodb_account_endpoints_and_sqs_in_both_protocols() -> None:
    found = identify("dynamodb", "DeleteTable", {"TableName": "orders"})
    assert found.name == "aws.dynamodb.DeleteTable"
    request = aws_request("dynamodb", "DeleteTable", {"TableName": "orders"})
    document = build_document(request, "a")
    document["host"] = "123456789012.ddb.us-east-1.amazonaws.com"
    assert evaluate(document, BASELINE).action.action == "delete_table"
    # SQS moved to JSON; older SDKs still send the query protocol.
    assert identify("sqs", "PurgeQueue", {"QueueUrl": "q"}).name == "aws.sqs.PurgeQueue"
    legacy = {
        "method": "POST", "scheme": "https", "host": "sqs.us-east-1.amazonaws.com", "port": 443,
        "path": "/", "query": {}, "headers": {}, "body": {"Action": "PurgeQueue"},
        "body_format": "form", "body_size": 18, "agent": "a",
    }  # fmt: skip
    assert CATALOG.identify(legacy).name == "aws.sqs.PurgeQueue"


# --- the misreadings the URL mappings made ---------------------------------------------------

BUCKET = {"Bucket": "agent-data"}


def test_s3_bucket_configuration_writes_are_not_bucket_creation() -> None:
    lifecycle = {
        "Rules": [{"ID": "all", "Status": "Enabled", "Filter": {}, "Expiration": {"Days": 1}}]
    }
    result = evaluated(
        "s3",
        "PutBucketLifecycleConfiguration",
        {**BUCKET, "LifecycleConfiguration": lifecycle},
    )
    assert result.action.operation == "aws.s3.PutBucketLifecycleConfiguration"
    assert result.action.action == "change_bucket_lifecycle"
    assert result.action.params["expiration_days"] == 1
    assert result.verdict.decision == "REQUIRE_APPROVAL"
    # Every bucket-level PUT other than CreateBucket: none is read as create_bucket.
    s3 = CATALOG.services["s3"]
    puts = [s for s in s3.operations.values() if s.method == "PUT" and s.path.pattern.startswith(
        r"/([^/]+)/?")]  # fmt: skip
    assert len(puts) >= 24
    for spec in puts:
        if spec.name == "CreateBucket":
            continue
        document = build_document(
            aws_request("s3", spec.name, _example(s3, spec.name)), "agent"
        )  # fmt: skip
        action = evaluate(document, BASELINE).action
        if not spec.deprecated:  # a deprecated twin reads as its successor
            assert action.operation == f"aws.s3.{spec.name}", spec.name
        assert action.action != "create_bucket", spec.name


def test_s3_bucket_sub_resource_deletions_are_not_bucket_deletion() -> None:
    s3 = CATALOG.services["s3"]
    deletes = [s.name for s in s3.rest_by_method["DELETE"] if s.query and "Key" not in str(s.path)]
    assert len(deletes) >= 14
    for name in deletes:
        result = evaluated("s3", name, _example(s3, name))
        assert result.action.operation == f"aws.s3.{name}"
        assert result.action.action != "delete_bucket", name
    assert evaluated("s3", "DeleteBucket", BUCKET).verdict.decision == "BLOCK"


def test_s3_acls_on_objects_are_visible_to_policy() -> None:
    acl = evaluated("s3", "PutObjectAcl", {**BUCKET, "Key": "k", "ACL": "public-read"})
    assert (acl.action.action, acl.action.params["canned_acl"]) == (
        "change_object_acl",
        "public-read",
    )
    put = evaluated("s3", "PutObject", {**BUCKET, "Key": "k", "Body": b"x", "ACL": "public-read"})
    assert (put.action.action, put.action.params["canned_acl"]) == ("write_object", "public-read")
    off = {
        "BlockPublicAcls": False,
        "IgnorePublicAcls": False,
        "BlockPublicPolicy": False,
        "RestrictPublicBuckets": False,
    }
    block = evaluated(
        "s3", "PutPublicAccessBlock", {**BUCKET, "PublicAccessBlockConfiguration": off}
    )
    assert block.action.params["disabled_protections"] == 4
    versioning = evaluated(
        "s3", "PutBucketVersioning", {**BUCKET, "VersioningConfiguration": {"Status": "Suspended"}}
    )
    assert versioning.action.params["status"] == "Suspended"


def test_ec2_ingress_in_its_top_level_form_counts_world_open_ranges() -> None:
    top_level = {"GroupId": "sg-1", "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                 "CidrIp": "0.0.0.0/0"}  # fmt: skip
    result = evaluated("ec2", "AuthorizeSecurityGroupIngress", top_level)
    assert result.action.params["world_open_ranges"] == 1
    assert result.action.params["from_port"] == 22
    assert result.verdict.decision == "REQUIRE_APPROVAL"


@pytest.mark.parametrize(
    "endpoint", [{"use_fips_endpoint": True}, {"use_dualstack_endpoint": True}]
)
def test_endpoint_variants_keep_their_block_rules(endpoint: dict[str, Any]) -> None:
    admin = {"UserName": "u", "PolicyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}
    if "use_dualstack_endpoint" not in endpoint:  # IAM has no dualstack endpoint
        assert evaluated("iam", "AttachUserPolicy", admin, **endpoint).verdict.decision == "BLOCK"
    database = {"DBInstanceIdentifier": "prod", "SkipFinalSnapshot": True}
    assert evaluated("rds", "DeleteDBInstance", database, **endpoint).verdict.decision == "BLOCK"
    assert evaluated("s3", "DeleteBucket", BUCKET, **endpoint).verdict.decision == "BLOCK"


def _example(service: Any, name: str) -> dict[str, Any]:
    """Required members with example values, the Bucket named."""
    import botocore.session

    from airlock.console.catalog_coverage import example_value

    model = botocore.session.get_session().get_service_model(service.name)
    shape = model.operation_model(name).input_shape
    return {**example_value(shape, "", 0), **BUCKET}


# --- mappings and policies that name operations ----------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "mappings"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(textwrap.dedent(text))
    return folder


def test_a_mapping_naming_an_unknown_operation_is_a_load_error(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "m.yaml",
        """\
        provider: aws
        mappings:
          - action: drop
            operation: aws.s3.DeleteBuckt
        """,
    )
    with pytest.raises(ConfigError) as error:
        load_mappings(folder)
    assert "m.yaml:4:" in str(error.value)
    assert "unknown operation 'aws.s3.DeleteBuckt'" in str(error.value)
    assert "did you mean 'aws.s3.DeleteBucket'" in str(error.value)


def test_an_operation_mapping_cannot_also_name_a_url(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        "m.yaml",
        """\
        provider: aws
        mappings:
          - action: drop
            operation: aws.s3.DeleteBucket
            path: /x
        """,
    )
    with pytest.raises(ConfigError, match="cannot be combined with 'operation'"):
        load_mappings(folder)


def test_policies_can_name_operations_and_globs_of_them(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(
        textwrap.dedent(
            """\
            default: ALLOW
            rules:
              - id: no-lifecycle
                when: {operation: aws.s3.PutBucketLifecycleConfiguration}
                decision: BLOCK
              - id: iam-held
                when: {operation: "aws.iam.*"}
                decision: REQUIRE_APPROVAL
              - id: deletes-held
                when: {operation: "aws.*.Delete*"}
                decision: REQUIRE_APPROVAL
            """
        )
    )
    config = Config(SHIPPED, load_policies(policies))

    def decision(service: str, operation: str, params: dict[str, Any]) -> tuple[str, ...]:
        request = aws_request(service, operation, params)
        verdict = evaluate(build_document(request, "a"), config).verdict
        return (verdict.decision, *verdict.rules)

    lifecycle = {**BUCKET, "LifecycleConfiguration": {"Rules": []}}
    assert decision("s3", "PutBucketLifecycleConfiguration", lifecycle) == ("BLOCK", "no-lifecycle")
    assert decision("iam", "TagUser", {"UserName": "u", "Tags": []}) == (
        "REQUIRE_APPROVAL",
        "iam-held",
    )
    assert decision("logs", "DeleteLogGroup", {"logGroupName": "g"})[:2] == (
        "REQUIRE_APPROVAL",
        "deletes-held",
    )
    assert decision("s3", "PutObject", {**BUCKET, "Key": "k", "Body": b""}) == ("ALLOW",)


# --- OpenAPI providers -----------------------------------------------------------------------


def test_every_openapi_write_is_identified_as_itself() -> None:
    """GitHub (Octokit's description), OpenAI, SendGrid, Slack, Twilio (repositories, pinned),
    Stripe and Anthropic (their Python SDKs' calls)."""
    from airlock.console.catalog_coverage import openapi_coverage

    covered = openapi_coverage(CATALOG)
    text = report(covered)
    assert {c.service: c.writes for c in covered} == {
        "anthropic": 148,
        "github": 584,
        "openai": 166,
        "sendgrid": 179,
        "slack": 94,
        "stripe": 358,
        "twilio": 94,
    }, text
    assert all(c.wrong == [] and c.missed == [] for c in covered), text
    # Unencoded slashes (curl users): a label may then fit another template, never wrongly.
    assert all(c.wrong == [] for c in openapi_coverage(CATALOG, encode_slashes=False))


def test_openai_beta_operations_are_told_apart_by_their_query() -> None:
    from airlock.pipeline.document import WireRequest, build_document

    def operation(path: str) -> str | None:
        request = WireRequest("POST", "https", "api.openai.com", 443, path,
                              [("content-type", "application/json")], b"{}")  # fmt: skip
        found = CATALOG.identify(build_document(request, "agent"))
        return found.name if found else None

    assert operation("/v1/responses") == "openai.createResponse"
    assert operation("/v1/responses?beta=true") == "openai.beta_createResponse"


def github(method: str, path: str) -> Any:
    request = (
        f"curl -X {method} https://api.github.com{path} "
        "-H 'Content-Type: application/json' -d '{}'"
    )
    from airlock.console.explain import explain, parse_request

    return explain(parse_request(request), BASELINE).as_json()


def test_branch_names_with_slashes_keep_their_meaning() -> None:
    encoded = github("DELETE", "/repos/octo/app/branches/release%2Fv1/protection")
    assert encoded["operation"] == "github.repos/delete-branch-protection"
    assert encoded["action"] == "remove_branch_protection"
    assert encoded["params"]["branch"] == "release/v1"
    plain = github("DELETE", "/repos/octo/app/branches/release/v1/protection")
    assert plain["operation"] == "github.repos/delete-branch-protection"
    assert plain["action"] == "remove_branch_protection"
    assert github("DELETE", "/repos/octo/app")["operation"] == "github.repos/delete"


def test_uncurated_github_writes_get_derived_actions() -> None:
    report_ = github("PUT", "/repos/octo/app/actions/permissions")
    assert report_["operation"] == "github.actions/set-github-actions-permissions-repository"
    assert report_["action"] == "actions_set_github_actions_permissions_repository"
    assert (report_["sensitivity"], report_["decision"]) == ("high", "REQUIRE_APPROVAL")
    label = github("POST", "/repos/octo/app/labels")
    assert (label["action"], label["decision"]) == ("issues_create_label", "ALLOW")


def test_the_console_line_names_the_operation() -> None:
    import io

    from airlock.addons.decision_log import DecisionLog
    from airlock.pipeline.run_record import RunSummary

    out = io.StringIO()
    run = RunSummary(
        "r1",
        "REQUIRE_APPROVAL",
        "change_bucket_lifecycle",
        [],
        agent="bot",
        provider="aws",
        operation="aws.s3.PutBucketLifecycleConfiguration",
        target="s3://b",
    )
    DecisionLog(out).decision("REQUIRE_APPROVAL", run, 1.0)
    assert "change_bucket_lifecycle (aws.s3.PutBucketLifecycleConfiguration) aws → s3://b" in (
        out.getvalue()
    )


def test_the_console_line_escapes_and_cuts_what_the_agent_chose() -> None:
    """An MCP tool's name (the action), a target or a param carrying terminal escapes or 900 KB
    reach the operator's console as visible escapes, cut: neither a redrawn terminal nor a
    900 KB line (found by review)."""
    import io

    from airlock.addons.decision_log import DecisionLog
    from airlock.pipeline.run_record import RunSummary

    out = io.StringIO()
    run = RunSummary(
        "r1", "BLOCK", "mcp.gh." + "x" * 900_000, [], agent="bot\x1b[2J",
        provider="mcp", target="mcp/gh/\x1b]0;owned\x07", params={"note\r": "ok\x1b[1A" * 50},
    )  # fmt: skip
    DecisionLog(out).decision("BLOCK", run, 1.0)
    line = out.getvalue()
    assert "\x1b" not in line and "\r" not in line and "\x07" not in line
    assert "bot\\x1b[2J" in line and "mcp/gh/\\x1b]0;owned\\x07" in line
    assert len(line) < 1_000


def test_creating_a_custom_voice_is_not_read_as_inference() -> None:
    """POST /v1/audio/voices clones a voice from a recording: held, not allowed as a model call."""
    from airlock.pipeline.document import WireRequest, build_document
    from airlock.pipeline.evaluation import evaluate

    def judged(path: str) -> tuple[str | None, str, str]:
        headers = [("content-type", "application/json")]
        request = WireRequest("POST", "https", "api.openai.com", 443, path, headers, b"{}")
        evaluation = evaluate(build_document(request, "agent"), BASELINE)
        return evaluation.action.operation, evaluation.action.action, evaluation.verdict.decision

    assert judged("/v1/audio/voices") == ("openai.createVoice", "create_voice", "REQUIRE_APPROVAL")
    assert judged("/v1/audio/speech") == ("openai.createSpeech", "inference", "ALLOW")


def test_s3_uploads_framed_aws_chunked_are_read_as_the_object_they_carry() -> None:
    """boto3 frames uploads as `aws-chunked` (its flexible checksums): undone, the object is
    what is judged, whatever its own type or encoding; a body not framed so is refused."""
    import gzip

    def uploaded(body: bytes, **extra: str) -> dict[str, Any]:
        request = aws_request("s3", "PutObject", {**BUCKET, "Key": "k", "Body": body, **extra})
        return build_document(request, "a")

    assert uploaded(b'{"a": 1}', ContentType="application/json")["body"] == {"a": 1}
    zipped = uploaded(gzip.compress(b'{"a": 2}'), ContentType="application/json",
                      ContentEncoding="gzip")  # fmt: skip
    assert zipped["body"] == {"a": 2}
    stored = uploaded(b"not gzip", ContentType="application/json", ContentEncoding="gzip")
    assert "request_error" not in stored  # the object's own encoding: S3 stores it as sent
    request = aws_request("s3", "PutObject", {**BUCKET, "Key": "k", "Body": b"{}"})
    request = replace(request, raw_content=b"zz\r\n{}\r\n0\r\n\r\n")
    assert "not framed" in build_document(request, "a")["request_error"]


def test_a_derived_target_is_never_a_field_that_holds_a_secret() -> None:
    """An operation no mapping curates is targeted by its first field: IAM ChangePassword's is
    OldPassword, which would then stand in the record, the console line and webhooks."""
    from airlock.pipeline.run_record import run_row

    old, new = "Tr0ub4dor&3-old", "c0rrect-h0rse-new"
    request = aws_request("iam", "ChangePassword", {"OldPassword": old, "NewPassword": new})
    document = build_document(request, "agent")
    evaluation = evaluate(document, BASELINE)
    row = run_row("r1", "i", document, evaluation, 1.0, None).as_row()
    assert evaluation.action.operation == "aws.iam.ChangePassword"
    assert old not in json.dumps(row) and new not in json.dumps(row)


def _get(host: str, path: str, method: str = "GET") -> dict[str, Any]:
    request = tutils.treq(
        method=method.encode(), host=host, port=443, scheme=b"https", authority=b"",
        path=path.encode(), headers=[], content=b"",
    )  # fmt: skip
    return build_document(request, "agent")


def test_long_path_segments_hosts_and_methods_are_identified_as_before_and_cached_short() -> None:
    """The operation caches are keyed by what a request names: segments longer than every
    template's leading literal match none, and share one key; hosts past a DNS name's length
    and methods no operation has are not cached. What is identified does not change."""
    catalog = load_catalog()
    long = "o" * 30_000
    paths = [f"/repos/{long}/r", f"/{long}/{long}", f"/repos{long}/x", f"/gists/{long}", "/a//b"]
    for service in catalog.services.values():
        for method, templates in service.rest_by_method.items():
            for path in paths:
                segments = tuple(path.split("/", LEADING + 1)[1 : LEADING + 1])
                uncached = [t for t in templates if t.leading == segments[: len(t.leading)]]
                assert service.rest_candidates(method, path) == uncached, (service.name, path)
    found = catalog.identify(_get("api.github.com", f"/repos/{long}/r"))
    assert found is not None and found.name == "github.repos/get"
    assert found.fields["owner"] == long
    github = catalog.services["github"]
    for i in range(200):  # 12 MB of segments, each pair unique
        assert catalog.identify(_get("api.github.com", f"/{i}{long}/{long}{i}")) is None
    assert catalog.identify(_get("api.github.com", "/repos/a/b", "X" * 10_000)) is None
    keys = [(method, *segments) for method, segments in github._rest_candidates]
    assert sum(len(text) for key in keys for text in key) < 1_000, keys

    bucket = "x" * 5_000
    deleted = catalog.identify(_get(f"{bucket}.s3.amazonaws.com", "/k", "DELETE"))
    assert deleted is not None and deleted.name == "aws.s3.DeleteObject"
    assert deleted.fields["Bucket"] == bucket
    assert max(len(host) for host in catalog._hosts) <= MAX_CACHED_HOST
