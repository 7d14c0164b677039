"""A simulated trial through a running `airlock run --mode simulate`: the official SDKs make
their calls as usual; reads reach the upstreams, writes never do, every synthetic answer parses
in its SDK with the request's values echoed, and `airlock report` totals what the trial would
have done."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import stripe
from botocore.config import Config
from botocore.exceptions import ClientError
from slack_sdk import WebClient

from airlock.console.standins import Upstream
from airlock_guard import Blocked, Client, Simulated, guard
from tests.e2e.test_catalog_aws import AWS_HOSTS
from tests.e2e.test_catalog_inference import SDK_PYTHON
from tests.e2e.test_gate import eventually, pending, runs
from tests.e2e.test_guard import RULES as GUARD_RULES
from tests.helpers.proxy import PROJECT_ROOT, Proxy, clean_env, free_port, wait_for_port
from tests.helpers.sdks import stripe_through

pytestmark = pytest.mark.e2e

AGENT = "trial-bot"
STANDIN_HOSTS = (
    "slack.com", "api.github.com", "api.twilio.com", "api.sendgrid.com", "api.openai.com",
    "api.anthropic.com",
)  # fmt: skip
WRITES = ("POST", "PUT", "PATCH", "DELETE")
SIMULATE_INFERENCE = """
rules:
  - id: trial-model-calls-simulated
    when: {action: inference}
    decision: SIMULATE
    reason: The trial answers model calls itself.
  - id: trial-payouts-held
    when: {action: create_payout}
    decision: REQUIRE_APPROVAL
    in_simulation: hold
    reason: Payouts wait for a reviewer, even in a trial.
"""
GUARD_PORT = free_port()


@pytest.fixture(scope="module")
def proxy(
    start_proxy: Callable[..., Proxy], moto_port: int, session_upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Proxy:  # fmt: skip
    policies = tmp_path_factory.mktemp("trial-policies")
    shutil.copy(PROJECT_ROOT / "policies" / "baseline.yaml", policies)
    (policies / "trial.yaml").write_text(SIMULATE_INFERENCE)
    (policies / "tools.yaml").write_text(GUARD_RULES)  # the Guard API's tests' own rules
    routes = {host: moto_port for host in AWS_HOSTS}
    routes |= {host: session_upstream.port for host in STANDIN_HOSTS}
    proxy = start_proxy(
        "--mode", "simulate", "--policies", str(policies), "--guard-port", str(GUARD_PORT),
        routes=routes,
    )  # fmt: skip
    assert proxy.process is not None  # the Guard API listens after mitmproxy's own port
    wait_for_port(GUARD_PORT, proxy.process, proxy.log_file)
    return proxy


@pytest.fixture(scope="module")
def upstream_writes(session_upstream: Upstream) -> Iterator[Callable[[], list[str]]]:
    """What reached the stand-in upstreams that was not a read, from here on."""
    start = len(session_upstream.received)

    def writes() -> list[str]:
        seen = session_upstream.received[start:]
        return [f"{r.method} {r.host}{r.path}" for r in seen if r.method in WRITES]

    yield writes


def aws(proxy: Proxy, service: str) -> Any:
    return boto3.client(
        service, region_name="us-east-1", aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        verify=str(proxy.ca_cert),
        config=Config(proxies={"https": proxy.url.replace("//", f"//{AGENT}:x@")},
                      retries={"max_attempts": 1}),
    )  # fmt: skip


def test_stripe_charges_and_refunds_are_answered_and_never_sent(
    proxy: Proxy, upstream_writes: Callable[[], list[str]], session_upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    stripe_through(proxy, monkeypatch, AGENT)
    charge = stripe.Charge.create(amount=2500, currency="usd", customer="cus_trial")
    assert (charge.object, charge.amount, charge.currency, charge.status) == (
        "charge", 2500, "usd", "succeeded",
    )  # fmt: skip
    assert charge.id.startswith("ch_")
    refund = stripe.Refund.create(charge=charge.id, amount=1000)
    assert refund.id.startswith("re_") and refund.amount == 1000
    large = stripe.Charge.create(amount=250000, currency="eur", customer="cus_trial")  # held
    assert large.amount == 250000
    with pytest.raises(stripe.error.PermissionError, match="never made by an agent"):
        stripe.Charge.create(amount=2000000, currency="usd", customer="cus_trial")
    before = len(session_upstream.received)
    stripe.Customer.retrieve("cus_trial")  # a read: the real upstream answers it
    assert [r.path for r in session_upstream.received[before:]] == ["/v1/customers/cus_trial"]
    assert not [w for w in upstream_writes() if "stripe" in w]


def test_aws_writes_are_answered_in_each_protocol_and_never_sent(proxy: Proxy) -> None:
    ec2 = aws(proxy, "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]  # a read: moto
    launched = ec2.run_instances(ImageId=image, MinCount=3, MaxCount=3, InstanceType="t3.micro")
    ids = [i["InstanceId"] for i in launched["Instances"]]
    assert len(ids) == 3 and all(i.startswith("i-") for i in ids)
    with pytest.raises(ClientError, match="InvalidInstanceID"):
        ec2.describe_instances(InstanceIds=ids)  # moto never launched them
    s3 = aws(proxy, "s3")
    s3.create_bucket(Bucket="trial-bucket")
    put = s3.put_object(Bucket="trial-bucket", Key="report.csv", Body=b"a,b\n")
    assert put["ETag"].startswith('"')
    s3.delete_object(Bucket="trial-bucket", Key="old.csv")
    deleted = s3.delete_objects(
        Bucket="trial-bucket", Delete={"Objects": [{"Key": "a"}, {"Key": "b"}]}
    )
    assert [d["Key"] for d in deleted["Deleted"]] == ["a", "b"]
    with pytest.raises(ClientError, match=r"404|NoSuchBucket|Not Found"):
        s3.head_bucket(Bucket="trial-bucket")  # never created
    user = aws(proxy, "iam").create_user(UserName="trial-user")["User"]
    assert user["UserName"] == "trial-user" and user["Arn"].endswith(":user/trial-user")
    aws(proxy, "dynamodb").put_item(TableName="orders", Item={"id": {"S": "o-1"}})
    invoked = aws(proxy, "lambda").invoke(FunctionName="refund-worker", Payload=b"{}")
    assert invoked["StatusCode"] == 200 and json.loads(invoked["Payload"].read())["simulated"]


def test_any_aws_write_is_answered_from_its_output_shape(proxy: Proxy) -> None:
    """Writes with no answer of their own get one cut from the operation's output shape (the
    catalog's skeleton): the members an agent reads next, echoing the request, in each
    protocol (query, ec2, json, rest-json, rest-xml)."""
    topic = aws(proxy, "sns").create_topic(Name="trial-alerts")
    assert topic["TopicArn"].startswith("arn:aws:sns:")
    role = aws(proxy, "iam").create_role(RoleName="trial-role", AssumeRolePolicyDocument="{}")
    assert role["Role"]["RoleName"] == "trial-role" and role["Role"]["Arn"].startswith("arn:")
    vpc = aws(proxy, "ec2").create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]
    assert vpc["VpcId"].startswith("sim-") and vpc["State"]
    table = aws(proxy, "dynamodb").create_table(
        TableName="trial-orders", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    )["TableDescription"]  # fmt: skip
    assert table["TableName"] == "trial-orders"
    key = aws(proxy, "kms").create_key(Description="trial")["KeyMetadata"]
    assert key["KeyId"].startswith("sim-")
    function = aws(proxy, "lambda").create_function(
        FunctionName="trial-fn", Role="arn:aws:iam::000000000000:role/r", Runtime="python3.12",
        Handler="h.h", Code={"ZipFile": b"PK"},
    )  # fmt: skip
    assert function["FunctionName"] == "trial-fn"
    upload = aws(proxy, "s3").create_multipart_upload(Bucket="trial-bucket", Key="big.bin")
    assert upload["UploadId"].startswith("sim-")  # rest-xml: parsed from the XML body


def test_messages_and_code_writes_are_answered_and_never_sent(
    proxy: Proxy, upstream_writes: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sendgrid import SendGridAPIClient
    from sendgrid.helpers.mail import Mail
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    agent_proxy = proxy.url.replace("//", f"//{AGENT}:x@")
    monkeypatch.setenv("HTTPS_PROXY", agent_proxy)
    monkeypatch.setenv("SSL_CERT_FILE", str(proxy.ca_cert))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(proxy.ca_cert))
    slack = WebClient(token="xoxb-trial", proxy=agent_proxy,
                      ssl=ssl.create_default_context(cafile=str(proxy.ca_cert)))  # fmt: skip
    posted = slack.chat_postMessage(channel="C0OPS", text="rolling back")
    assert posted["ok"] and posted["channel"] == "C0OPS" and posted["ts"]
    twilio = Client("AC0000000000000000000000000000000a", "trial-auth",
                    http_client=TwilioHttpClient(proxy={"https": agent_proxy}))  # fmt: skip
    sms = twilio.messages.create(to="+15551230001", from_="+15559870000", body="code 1234")
    assert sms.sid.startswith("SM") and sms.to == "+15551230001" and sms.status == "queued"
    mail = Mail("ops@acme.test", ["a@acme.test", "b@acme.test"], "Trial", "<p>hi</p>")
    assert SendGridAPIClient("SG.TrialKey00.TrialKey0000").send(mail).status_code == 202
    github = proxy.session(agent=AGENT)
    issue = github.post("https://api.github.com/repos/acme/api/releases",
                        json={"tag_name": "v9.9.9"}, timeout=30)  # fmt: skip
    assert issue.status_code == 201 and issue.json()["tag_name"] == "v9.9.9"
    assert github.delete("https://api.github.com/repos/acme/api/releases/1").status_code == 204
    assert upstream_writes() == []


def test_model_sdks_parse_simulated_answers(proxy: Proxy) -> None:
    if not SDK_PYTHON.exists():
        message = f"the SDK virtualenv is missing ({SDK_PYTHON}); `make test` builds it"
        if os.environ.get("AIRLOCK_REQUIRE_SDKS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    env = clean_env() | {
        "HTTPS_PROXY": f"http://{AGENT}:x@127.0.0.1:{proxy.port}",
        "SSL_CERT_FILE": str(proxy.ca_cert),
    }
    script = Path(__file__).parent / "sdk_clients" / "model_calls.py"
    done = subprocess.run([str(SDK_PYTHON), str(script)], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout)
    assert all(text.startswith("(simulated by Airlock") for text in answers.values())


def test_the_report_totals_what_the_trial_would_have_done(proxy: Proxy) -> None:
    names = ("create_charge", "create_refund", "create_instances", "send_message")

    def trial_recorded() -> Any:
        done = {r.action for r in runs(proxy) if r.agent == AGENT and r.outcome}
        return set(names) <= done

    assert eventually(trial_recorded, timeout=20)
    done = subprocess.run(
        [sys.executable, "-m", "airlock.console.cli", "report", "--agent", AGENT, "--json",
         "--db", proxy.db_url],
        cwd=PROJECT_ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # The blocked charge would not have moved; the refund names no currency (its charge's).
    assert report["money"] == {"usd": 2500, "eur": 250000, "unstated": 1000}
    assert report["instances"] == 3
    assert report["recipients"] == 1 + 1 + 2  # Slack, the SMS, the two addressees of the mail
    assert report["by_action"]["create_charge"] == 3
    assert report["deletions"] >= 3  # the object, the objects, the release
    assert [b["action"] for b in report["would_block"]] == ["create_charge"]
    assert "create_charge" in [h["action"] for h in report["would_hold"]]
    simulated = [r for r in runs(proxy) if r.agent == AGENT and r.decision == "SIMULATED"]
    assert all(r.outcome in ("simulated", "blocked") for r in simulated)
    charge = next(r for r in simulated if r.action == "create_charge" and r.outcome == "simulated")
    assert charge.outcome_detail["synthetic"]["amount"] == charge.params["amount"]


def test_a_rule_can_hold_a_simulated_write_for_a_reviewer(
    proxy: Proxy, upstream_writes: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`in_simulation: hold`: the reviewer decides, and the approved write is still answered
    by Airlock, never sent."""
    stripe_through(proxy, monkeypatch, AGENT)
    payouts: list[Any] = []
    agent = threading.Thread(
        target=lambda: payouts.append(stripe.Payout.create(amount=5000, currency="usd")),
        daemon=True,
    )
    agent.start()
    [held] = eventually(lambda: pending(proxy), timeout=30)
    assert held["action"] == "create_payout"
    approved = subprocess.run(
        [sys.executable, "-m", "airlock.console.cli", "approve", held["id"][:12], "--reviewer",
         "alice", "--reason", "trial", *proxy.store],
        cwd=PROJECT_ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    agent.join(30)
    [payout] = payouts
    assert payout.id.startswith("po_") and payout.amount == 5000
    assert not [w for w in upstream_writes() if "payouts" in w]


def test_guarded_tool_calls_on_trial_are_recorded_and_never_run(proxy: Proxy) -> None:
    """The Guard API simulates as the proxy does: the SDK does not run the code (a decorated
    function returns its stand-in), and a call that would be blocked is refused."""
    tools = Client(f"http://127.0.0.1:{GUARD_PORT}", "trial-tools", "key")
    ran: list[str] = []

    @guard("run_shell", target="host-1", params=lambda cmd: {"command": cmd}, client=tools,
           simulated=lambda cmd: f"(not run: {cmd})")  # fmt: skip
    def shell(cmd: str) -> str:
        ran.append(cmd)
        return "listing"

    assert shell("ls /srv") == "(not run: ls /srv)"
    rotate = guard("rotate_keys", target="vault", client=tools)  # no rule: a reviewer, it would
    with pytest.raises(Simulated) as on_trial, rotate:
        ran.append("rotate")
    assert on_trial.value.would == "REQUIRE_APPROVAL"
    drop = guard("run_sql", target="prod", params={"statement": "DROP TABLE users"}, client=tools)
    with pytest.raises(Blocked) as blocked, drop:
        ran.append("drop")
    assert "would be blocked" in blocked.value.reason
    assert ran == []
    recorded = {r.action: r for r in runs(proxy) if r.agent == "trial-tools"}
    assert {a: (r.decision, r.shadow_decision, r.outcome) for a, r in recorded.items()} == {
        "run_shell": ("SIMULATED", "ALLOW", "simulated"),
        "rotate_keys": ("SIMULATED", "REQUIRE_APPROVAL", "simulated"),
        "run_sql": ("SIMULATED", "BLOCK", "blocked"),
    }
    assert not pending(proxy)
