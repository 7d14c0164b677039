"""Requests the vendor reads otherwise than their headers declare, through a running Airlock
with the shipped policies: judged as the vendor reads them, or refused, and never relayed
unjudged. boto3 sends them (an event hook reshapes its request as an agent could), and a raw
client (requests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from airlock.console.standins import Upstream
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e

BUCKET_HOST = "prod-bucket.s3.us-east-1.amazonaws.com"
ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], session_upstream: Upstream) -> Proxy:
    hosts = (BUCKET_HOST, "iam.amazonaws.com")
    return start_proxy(routes={host: session_upstream.port for host in hosts})


def client(proxy: Proxy, service: str) -> Any:
    return boto3.client(
        service,
        region_name="us-east-1",
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        verify=str(proxy.ca_cert),
        config=Config(proxies={"https": proxy.url}, retries={"max_attempts": 1}),
    )


def test_boto3_delete_bucket_with_a_read_target_is_judged_as_the_delete(
    proxy: Proxy, upstream: Upstream
) -> None:
    s3 = client(proxy, "s3")

    def disguise(request: Any, **_: Any) -> None:
        request.headers["X-Amz-Target"] = "x.GetObject"  # S3 never reads it

    s3.meta.events.register("before-sign.s3.DeleteBucket", disguise)
    with pytest.raises(ClientError) as raised:
        s3.delete_bucket(Bucket="prod-bucket")
    assert "never delete S3 buckets" in str(raised.value)
    assert upstream.received == []


def test_boto3_iam_parameters_moved_to_the_query_string_are_read(
    proxy: Proxy, upstream: Upstream
) -> None:
    iam = client(proxy, "iam")

    def to_query(request: Any, **_: Any) -> None:  # IAM reads them there too
        request.url += "?" + request.body.decode() if isinstance(request.body, bytes) else ""
        request.data = b""

    iam.meta.events.register("before-sign.iam.AttachUserPolicy", to_query)
    with pytest.raises(ClientError) as raised:
        iam.attach_user_policy(UserName="bot", PolicyArn=ADMIN)
    assert "administrator" in str(raised.value)
    assert upstream.received == []


@pytest.mark.parametrize(
    ("headers", "body", "why"),
    [
        ({"Content-Type": "multipart/form-data; boundary=XX"},
         b'--XX\r\nContent-Disposition: form-data; name="amount"\r\n\r\n5000000\r\n'
         b'--XX\r\nContent-Disposition: form-data; name="currency"\r\n\r\nusd\r\n--XX--\r\n',
         "never made by an agent"),
        ({"Content-Type": "application/x-www-form-urlencoded"},
         b"amount=1&amount=5000000&currency=usd", "repeats the key 'amount'"),
        ({"Content-Type": "application/x-www-form-urlencoded", "X-HTTP-Method-Override": "GET"},
         b"amount=5000000&currency=usd", "x-http-method-override header"),
    ],
    ids=["multipart", "repeated-amount", "method-override"],
)  # fmt: skip
def test_a_raw_stripe_charge_read_otherwise_is_not_relayed(
    proxy: Proxy, upstream: Upstream, headers: dict[str, str], body: bytes, why: str
) -> None:
    answer = proxy.session().post(
        "https://api.stripe.com/v1/charges",
        headers={"Authorization": "Bearer sk_live_abcdefghijkl", **headers},
        data=body,
        timeout=20,
    )
    assert answer.status_code == 403, answer.text
    assert why in answer.text
    assert upstream.received == []
