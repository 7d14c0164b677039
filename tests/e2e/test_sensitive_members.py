"""A SecureString through a running Airlock: boto3 sends it, the baseline lets it through, and
neither the database (with its WAL) nor the proxy's log holds it afterwards."""

from __future__ import annotations

from collections.abc import Callable

import boto3
import pytest
from botocore.config import Config

from tests.e2e.test_catalog_aws import AWS_HOSTS
from tests.e2e.test_gate import eventually, runs
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e

CANARY = "SecureString-canary-8d41f0c2"


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], moto_port: int) -> Proxy:
    return start_proxy(routes={host: moto_port for host in AWS_HOSTS})  # shipped policies


def test_put_parameter_secure_string_is_not_stored(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As an agent is set up: the proxy and its CA from the environment.
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(proxy.ca_cert))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    ssm = boto3.client("ssm", region_name="us-east-1", config=Config(retries={"max_attempts": 1}))
    ssm.put_parameter(Name="/prod/billing/endpoint", Value=CANARY, Type="SecureString")

    def put() -> object:
        found = [r for r in runs(proxy) if r.operation == "aws.ssm.PutParameter"]
        return found[-1] if found and found[-1].outcome else None

    run = eventually(put)
    assert run is not None, "PutParameter was not recorded"
    assert (run.decision, run.outcome, run.status) == ("ALLOW", "forwarded", 200)
    assert run.params["Value"] == "[REDACTED]"
    assert run.params["Name"] == "/prod/billing/endpoint"
    assert run.request["body"]["Value"] == "[REDACTED]"

    # The decision's log line is written after the record is read back here: awaited, so that
    # the log checked below is the one that names the call
    assert eventually(lambda: "PutParameter" in proxy.log_file.read_text())
    database = sorted(proxy.workdir.glob("airlock.db*"))  # the file, its WAL and shared memory
    assert database
    for path in [*database, proxy.log_file]:
        assert CANARY.encode() not in path.read_bytes(), path.name
