"""`airlock explain`: a request from curl, raw HTTP or HAR, judged without the proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.console.explain import RequestFormatError, explain, parse_request
from airlock.pipeline.evaluation import Config
from tests.helpers.proxy import PROJECT_ROOT, clean_env

CONFIG = Config.load(PROJECT_ROOT / "mappings", PROJECT_ROOT / "policies")


def test_curl_with_form_data_and_a_live_key() -> None:
    request = parse_request(
        "curl -sS https://api.stripe.com/v1/charges"
        " -H 'Authorization: Bearer sk_live_abcdefghij123'"
        " -d amount=2500000 -d currency=usd -d 'metadata[order]=42'"
    )
    report = explain(request, CONFIG, agent="billing-bot").as_json()

    assert report["mapping"] == "stripe.create_charge"
    assert (report["action"], report["decision"]) == ("create_charge", "BLOCK")
    assert report["rules"] == ["stripe-charge-needs-approval", "stripe-charge-too-large"]
    assert report["params"]["amount"] == 2500000
    assert report["context"] == {"environment": "production"}
    assert report["request"]["body"]["metadata"] == {"order": "42"}
    assert report["request"]["headers"]["authorization"] == "Bearer [REDACTED]"
    assert report["request"]["agent"] == "billing-bot"


def test_the_mappings_tried_first_say_why_they_did_not_match() -> None:
    request = parse_request("curl -X POST https://api.stripe.com/v1/payouts -d amount=5")
    report = explain(request, CONFIG).as_json()
    why = dict((item["mapping"], item["why"]) for item in report["not_matched"])
    assert why["stripe.create_charge"] == "path /v1/payouts does not fit /v1/charges"
    assert why["stripe.update_charge"] == "path /v1/payouts does not fit /v1/charges/{id}"
    assert report["mapping"] == "stripe.create_payout"
    cancel = explain(
        parse_request("curl -X DELETE https://api.stripe.com/v1/subscriptions/s1"), CONFIG
    )
    assert ("stripe.create_charge", "method DELETE is not POST") in cancel.others
    assert cancel.matched == "stripe.cancel_subscription"


def test_match_conditions_are_explained_too() -> None:
    raw = (
        "POST / HTTP/1.1\r\nHost: ec2.us-east-1.amazonaws.com\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n\r\n"
        "Action=CreateVpc&CidrBlock=10.0.0.0/16"
    )
    report = explain(parse_request(raw), CONFIG).as_json()
    assert report["not_matched"][0] == {
        "mapping": "aws.ec2.reads",
        "why": "match $.body.Action failed (found 'CreateVpc')",
    }
    assert report["mapping"] is None  # derived: the catalog's own meaning of the operation


def test_operations_are_identified_before_any_url_mapping() -> None:
    raw = (
        "POST / HTTP/1.1\r\nHost: ec2.us-east-1.amazonaws.com\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n\r\n"
        "Action=TerminateInstances&InstanceId.1=i-1&InstanceId.2=i-2"
    )
    report = explain(parse_request(raw), CONFIG).as_json()
    assert report["operation"] == "aws.ec2.TerminateInstances"
    assert report["mapping"] == "aws.ec2.terminate_instances"
    assert report["not_matched"] == []
    assert (report["action"], report["params"]["instance_count"]) == ("terminate_instances", 2)


def test_har_entries_and_fallbacks() -> None:
    har = {
        "log": {
            "entries": [
                {"request": {"method": "GET", "url": "https://api.unknown.io/x", "headers": []}},
                {
                    "request": {
                        "method": "POST",
                        "url": "https://slack.com/api/chat.postMessage",
                        "headers": [{"name": ":authority", "value": "slack.com"}],
                        "postData": {"mimeType": "application/json", "text": '{"channel": "C1"}'},
                    }
                },
            ]
        }
    }
    first = explain(parse_request(json.dumps(har)), CONFIG).as_json()
    assert (first["mapping"], first["action"], first["decision"]) == (None, "http.read", "ALLOW")
    second = explain(parse_request(json.dumps(har), har_entry=1), CONFIG).as_json()
    assert (second["action"], second["target"]) == ("send_message", "slack/C1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("curl -s", "no URL"),
        ("GARBAGE", "raw HTTP request"),
        ('{"log": {"entries": []}}', "HAR file with an entry 0"),
        ("GET /x HTTP/1.1\n\n", "neither an absolute URL nor a Host header"),
        (f"curl https://{'a' * 70}.example.com/x", "cannot read the URL .*label empty or too long"),
        (f"curl https://{'.'.join(['a' * 60] * 5)}/x", "cannot read the URL .*Invalid Host"),
    ],
)
def test_unreadable_requests_say_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(RequestFormatError, match=message):
        parse_request(text)


def test_cli_reads_a_file_and_prints_json(tmp_path: Path) -> None:
    raw = tmp_path / "delete.http"
    raw.write_text("DELETE /v1/customers/cus_1 HTTP/1.1\nHost: api.stripe.com\n\n")
    done = subprocess.run(
        [sys.executable, "-m", "airlock.console.cli", "explain", str(raw), "--json"],
        cwd=PROJECT_ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["decision"], report["rules"]) == (
        "REQUIRE_APPROVAL",
        ["stripe-customer-deletion-needs-approval"],
    )
