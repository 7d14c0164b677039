"""Members the vendor's API description marks sensitive are never stored (pipeline/sensitive.py).

Pure pipeline: the request as boto3 sends it, decided with the shipped mappings and policies,
then the run record. The decision sees the real value; the record holds "[REDACTED]".
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from airlock.console.catalog_build import openapi_sensitive
from airlock.console.catalog_coverage import aws_request, captured_request, capturing_client
from airlock.pipeline.document import build_document
from airlock.pipeline.evaluation import Config, evaluate
from airlock.pipeline.operations import load_catalog
from airlock.pipeline.run_record import run_row
from airlock.pipeline.sensitive import REDACTED, compile_members, scrub
from airlock.store.locations import shipped

CANARY = "canary-4f1c9e7a"


@pytest.fixture(scope="module")
def config() -> Config:
    return Config.load(shipped("mappings"), shipped("policies"))


def decided(config: Config, service: str, operation: str, params: dict[str, Any]) -> Any:
    document = build_document(aws_request(service, operation, params), "agent-1")
    evaluation = evaluate(document, config)
    return document, evaluation, run_row("run-1", "test", document, evaluation, 1.0)


def stored(row: Any) -> str:
    return json.dumps(row.as_row(), default=str)


def test_ssm_put_parameter_secure_string(config: Config) -> None:
    document, evaluation, row = decided(
        config, "ssm", "PutParameter", {"Name": "/prod/db", "Value": CANARY,
                                        "Type": "SecureString"},
    )  # fmt: skip
    assert evaluation.action.operation == "aws.ssm.PutParameter"
    assert evaluation.action.params["Value"] == CANARY  # policies read the real value
    assert document["body"]["Value"] == CANARY  # the document is left as it was
    assert row.decision == "ALLOW" == evaluation.verdict.decision
    assert row.params["Value"] == REDACTED
    assert row.params["Name"] == "/prod/db"
    assert row.request["body"]["Value"] == REDACTED
    assert row.request["body"]["Type"] == "SecureString"
    assert CANARY not in stored(row)
    assert CANARY not in json.dumps(row.summary().params)  # the console line's params


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("PutSecretValue", {"SecretId": "prod/db", "SecretString": CANARY}),
        ("PutSecretValue", {"SecretId": "prod/db", "SecretBinary": CANARY.encode()}),
        ("CreateSecret", {"Name": "prod/db", "SecretString": json.dumps({"dsn": CANARY})}),
        ("CreateSecret", {"Name": "prod/db", "SecretBinary": CANARY.encode()}),
    ],
)
def test_secretsmanager_secret_values(
    config: Config, operation: str, params: dict[str, Any]
) -> None:
    _, evaluation, row = decided(config, "secretsmanager", operation, params)
    assert row.decision == evaluation.verdict.decision
    text = stored(row)
    assert CANARY not in text
    assert base64.b64encode(CANARY.encode()).decode() not in text


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        ("CreateDBInstance", {"DBInstanceIdentifier": "prod-db", "DBInstanceClass": "db.t3.micro",
                              "Engine": "postgres", "MasterUserPassword": CANARY}),
        # query protocol, lists in lists (OptionSettings.OptionSetting.1.Value)
        ("ModifyOptionGroup", {"OptionGroupName": "tde", "OptionsToInclude": [
            {"OptionName": "NATIVE_NETWORK_ENCRYPTION", "OptionSettings": [
                {"Name": "SQLNET.ENCRYPTION_SERVER", "Value": CANARY}]}]}),
    ],
)  # fmt: skip
def test_rds_passwords_in_the_query_protocol(
    config: Config, operation: str, params: dict[str, Any]
) -> None:
    _, evaluation, row = decided(config, "rds", operation, params)
    assert row.decision == evaluation.verdict.decision
    assert row.request["body"]["Action"] == operation
    assert CANARY not in stored(row)


def test_rds_password_sent_in_the_query_string(config: Config) -> None:
    """The query protocol reads the URL's query too: its form keys are redacted there."""
    from airlock.pipeline.document import WireRequest

    query = (
        "Action=ModifyOptionGroup&Version=2014-10-31&OptionGroupName=tde&OptionsToInclude."
        "OptionConfiguration.1.OptionName=N&OptionsToInclude.OptionConfiguration.1."
        f"OptionSettings.OptionSetting.1.Value={CANARY}"
    )
    request = WireRequest(
        method="POST", scheme="https", host="rds.us-east-1.amazonaws.com", port=443,
        path="/?" + query, authority="", headers=[("Host", "rds.us-east-1.amazonaws.com")],
        raw_content=b"",
    )  # fmt: skip
    document = build_document(request, "agent-1")
    evaluation = evaluate(document, config)
    assert evaluation.action.operation == "aws.rds.ModifyOptionGroup"
    row = run_row("run-1", "test", document, evaluation, 1.0)
    assert CANARY not in stored(row)


@pytest.mark.parametrize("signature", ["s3", "s3v4"])
def test_an_s3_customer_key_in_a_presigned_url_is_not_stored(
    config: Config, signature: str
) -> None:
    """boto3's presigned URL (SigV2, its default for S3) carries the SSE-C key in the query
    string, where S3 reads it as the header: it was stored as sent (the header form was not)."""
    from urllib.parse import urlsplit

    import boto3
    from botocore.config import Config as BotoConfig

    from airlock.pipeline.document import WireRequest

    s3 = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="x" * 40, config=BotoConfig(signature_version=signature),
    )  # fmt: skip
    key = CANARY.ljust(32, "k")
    url = urlsplit(s3.generate_presigned_url("put_object", Params={
        "Bucket": "b", "Key": "k", "SSECustomerKey": key, "SSECustomerAlgorithm": "AES256",
    }))  # fmt: skip
    assert "customer-key=" in url.query or signature == "s3v4"  # SigV4 signs it as a header
    request = WireRequest(
        method="PUT", scheme="https", host=str(url.hostname), port=443,
        path=f"{url.path}?{url.query}", authority="",
        headers=[("content-type", "application/octet-stream")], raw_content=b"hello",
    )  # fmt: skip
    document = build_document(request, "agent-1")
    evaluation = evaluate(document, config)
    assert evaluation.action.operation == "aws.s3.PutObject"
    row = run_row("run-1", "test", document, evaluation, 1.0)
    encoded = base64.b64encode(key.encode()).decode()
    assert CANARY not in stored(row) and encoded not in stored(row)


def test_lambda_environment_variables(config: Config) -> None:
    _, evaluation, row = decided(
        config, "lambda", "CreateFunction",
        {"FunctionName": "billing", "Role": "arn:aws:iam::123456789012:role/x",
         "Code": {"ZipFile": b"PK..."}, "Runtime": "python3.12", "Handler": "app.main",
         "Environment": {"Variables": {"APP_CONFIG": CANARY, "REGION_NAME": "eu-west-1"}}},
    )  # fmt: skip
    assert row.decision == evaluation.verdict.decision
    assert row.request["body"]["Environment"] == {"Variables": REDACTED}
    assert row.request["body"]["FunctionName"] == "billing"
    assert CANARY not in stored(row)


def test_iam_login_profile_password(config: Config) -> None:
    _, evaluation, row = decided(
        config, "iam", "CreateLoginProfile", {"UserName": "ops", "Password": CANARY}
    )
    assert row.decision == evaluation.verdict.decision
    assert row.request["body"]["Password"] == REDACTED
    assert CANARY not in stored(row)


def test_a_param_reading_the_member_under_another_name_loses_it_too() -> None:
    members = compile_members(["body:Value"])
    assert members is not None
    document = {"body": {"Name": "n", "Value": CANARY}, "query": {}, "headers": {}}
    redacted, secrets = members.redact(document)
    assert redacted["body"] == {"Name": "n", "Value": REDACTED}
    assert document["body"]["Value"] == CANARY
    params = {"secure_value": CANARY, "note": f"set to {CANARY}", "n": ["x", CANARY]}
    assert scrub(params, secrets) == {
        "secure_value": REDACTED, "note": f"set to {REDACTED}", "n": ["x", REDACTED],
    }  # fmt: skip


def test_a_body_that_did_not_parse_is_not_stored_for_such_an_operation() -> None:
    members = compile_members(["body:Value"])
    assert members is not None
    redacted, _ = members.redact({"body": '{"Value": "' + CANARY, "query": {}, "headers": {}})
    assert CANARY not in redacted["body"]


def test_openapi_format_password_and_x_sensitive() -> None:
    description = {
        "components": {
            "schemas": {
                "Login": {
                    "type": "object",
                    "properties": {
                        "user": {"type": "string"},
                        "password": {"type": "string", "format": "password"},
                        "keys": {"type": "array", "items": {"type": "string", "x-sensitive": True}},
                    },
                }
            }
        }
    }
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Login"}}}}
    parameters = [{"name": "X-Token", "in": "header", "schema": {"format": "password"}}]
    assert openapi_sensitive(description, parameters, body) == [
        "header:x-token", "body:password", "body:keys[]",
    ]  # fmt: skip


# --- every sensitive member botocore marks, for every shipped AWS service ----------------------


def _raw_sensitive(model: dict[str, Any], shape: str, seen: frozenset[str]) -> int:
    """Sensitive places in a shape, counted on the raw service-2.json (not botocore.model):
    a member reference or a shape marked `"sensitive": true` counts once, whatever it holds."""
    definition = model["shapes"][shape]
    if definition.get("sensitive"):
        return 1
    if shape in seen:
        return 0
    seen = seen | {shape}
    refs = []
    if definition["type"] == "structure":
        refs = list(definition.get("members", {}).values())
    elif definition["type"] == "list":
        refs = [definition["member"]]
    elif definition["type"] == "map":
        refs = [definition["key"], definition["value"]]
    return sum(
        1 if ref.get("sensitive") or model["shapes"][ref["shape"]].get("sensitive")
        else _raw_sensitive(model, ref["shape"], seen)
        for ref in refs
    )  # fmt: skip


class _Canaries:
    def __init__(self) -> None:
        self.placed: list[str] = []

    def text(self) -> str:
        self.placed.append(f"canary{len(self.placed):04d}x7q")
        return self.placed[-1]


def _value(shape: Any, canaries: _Canaries, inside: bool, depth: int) -> Any:
    """Required members, every member that leads to a sensitive one, and, inside a sensitive
    one, every member, each string and blob a canary of its own."""
    inside = inside or bool(shape.metadata.get("sensitive"))
    kind = shape.type_name
    if depth > 8:
        return {} if kind == "structure" else "x"
    if kind == "structure":
        return {
            name: _value(member, canaries, inside, depth + 1)
            for name, member in shape.members.items()
            if name in shape.required_members
            or (inside and member.type_name in ("string", "blob") and not _located(member))
            or (_holds(member, frozenset()) and not inside)
        }
    if kind == "list":
        return [_value(shape.member, canaries, inside, depth + 1)]
    if kind == "map":
        return {"k1": _value(shape.value, canaries, inside, depth + 1)}
    if kind == "string":
        return canaries.text() if inside else (shape.enum[0] if shape.enum else "example")
    if kind == "blob":
        return canaries.text().encode() if inside else b"data"
    if kind in ("integer", "long"):
        return 1
    if kind in ("float", "double"):
        return 1.0
    if kind == "boolean":
        return True
    if kind == "timestamp":
        import datetime

        return datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return "x"


def _located(shape: Any) -> bool:
    return shape.serialization.get("location") in ("uri", "querystring", "statusCode")


def _holds(shape: Any, seen: frozenset[str]) -> bool:
    if shape.metadata.get("sensitive"):
        return True
    if shape.name in seen:
        return False
    seen = seen | {shape.name}
    if shape.type_name == "structure":
        return any(_holds(m, seen) for m in shape.members.values())
    if shape.type_name == "list":
        return _holds(shape.member, seen)
    if shape.type_name == "map":
        return _holds(shape.key, seen) or _holds(shape.value, seen)
    return False


def test_every_sensitive_member_of_every_shipped_aws_service_is_redacted() -> None:
    """Each operation's request, built by botocore as boto3 sends it with a canary in every
    sensitive member, identified and redacted as run_row redacts it: no canary is left."""
    import botocore.session

    session = botocore.session.get_session()
    index = load_catalog()
    sources = json.loads((shipped("catalog") / "sources.json").read_text())
    counted: Counter[str] = Counter()
    left: list[str] = []
    for service in sources["aws"]["services"]:
        model = session.get_service_model(service)
        raw = session.get_service_data(service)
        client = capturing_client(service)
        for name in model.operation_names:
            operation = model.operation_model(name)
            if operation.input_shape is None:
                continue
            count = _raw_sensitive(raw, raw["operations"][name]["input"]["shape"], frozenset())
            if not count:
                continue
            counted[service] += count
            canaries = _Canaries()
            params = _value(operation.input_shape, canaries, False, 0)
            document = build_document(captured_request(client, name, params), "agent")
            found = index.identify(document)
            assert found is not None and found.short_name == name, (service, name, found)
            members = index.sensitive(found.name)
            assert members is not None, f"{found.name}: the catalog names no sensitive member"
            text = json.dumps(members.redact(document)[0], default=str)
            for canary in canaries.placed:
                encoded = base64.b64encode(canary.encode()).decode()
                if canary in text or encoded in text:
                    left.append(f"{found.name}: {canary}")
            assert canaries.placed, name
    assert left == []
    # the pinned botocore (catalog/sources.json): 172 sensitive places in 19 services' requests
    assert sum(counted.values()) == 172, counted
    assert counted["ssm"] == 24 and counted["s3"] == 26 and counted["ec2"] == 28, counted


def test_the_catalog_lists_sensitive_members_as_data() -> None:
    entry = json.loads((shipped("catalog") / "aws" / "ssm.json").read_text())
    [put] = [op for op in entry["operations"] if op["name"] == "PutParameter"]
    assert put["sensitive"] == ["body:Value"]
    rds = json.loads(Path(shipped("catalog") / "aws" / "rds.json").read_text())
    [option_group] = [op for op in rds["operations"] if op["name"] == "ModifyOptionGroup"]
    assert option_group["sensitive"] == [
        "form:OptionsToInclude.OptionConfiguration.N.OptionSettings.OptionSetting.N.Value"
    ]
