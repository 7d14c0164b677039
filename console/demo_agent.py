"""The demo's scripted agent (console/demo.py starts it): official SDKs, configured as any agent
is, only HTTPS_PROXY and Airlock's CA set. One JSON line per call on stdout: what it tried and
what came back. The held calls run side by side, each waiting for its reviewer."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

_print = threading.Lock()


def report(call: str, sdk: str, attempt: Callable[[], str]) -> None:
    try:
        outcome, ok = attempt(), True
    except Exception as e:  # the SDK's own error, carrying Airlock's reason
        outcome, ok = f"{type(e).__name__}: {_first_line(e)}", False
    with _print:
        print(json.dumps({"call": call, "sdk": sdk, "outcome": outcome, "ok": ok}), flush=True)


def _first_line(error: Exception) -> str:
    """Airlock's reason where the SDK's message carries it, else its first line."""
    text = str(getattr(error, "user_message", None) or error).strip()
    start = text.find("Airlock refused")
    if start >= 0:
        return re.split(r"[\"'\n]", text[start:], maxsplit=1)[0][:240]
    return text.splitlines()[0][:240] if text else repr(error)


def stripe_client() -> Any:
    import stripe

    stripe.api_key = "sk_test_demo"
    # stripe-python reads neither the CA variables nor (for its own client) the proxy ones.
    stripe.ca_bundle_path = os.environ["SSL_CERT_FILE"]
    stripe.proxy = os.environ["HTTPS_PROXY"]
    stripe.max_network_retries = 20  # a held call is answered "pending" and retried
    return stripe


def small_charge() -> str:
    charge = stripe_client().Charge.create(amount=500, currency="usd", description="coffee")
    return f"charged: {charge.id}"


def huge_charge() -> str:
    stripe_client().Charge.create(amount=5_000_000, currency="usd", description="a yacht")
    return "charged"


def delete_customer() -> str:
    deleted = stripe_client().Customer.delete("cus_demo")
    return f"deleted: {deleted.id}"


def archive_channel() -> str:
    from slack_sdk import WebClient
    from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler

    client = WebClient(token="xoxb-demo", timeout=60)
    client.retry_handlers.append(ServerErrorRetryHandler(max_retry_count=20))
    client.conversations_archive(channel="C0GENERAL")
    return "archived #general"


def delete_bucket() -> str:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
    s3.delete_bucket(Bucket="customer-backups")
    return "deleted the bucket"


def open_issue() -> str:
    request = urllib.request.Request(
        "https://api.github.com/repos/acme/app/issues", method="POST",
        data=json.dumps({"title": "Flaky test", "body": "seen twice today"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer ghp_demo"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as answer:
        return f"opened: HTTP {answer.status}"


def _ticket() -> urllib.request.Request:
    return urllib.request.Request(
        "https://api.example.com/v1/tickets", method="POST", data=b'{"subject": "refund"}',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip


def unknown_write() -> str:
    for _ in range(20):  # a held call is answered 503 "pending": retry, as SDKs do
        try:  # a fresh Request each time: urllib's proxy handling rewrites the one it sends
            with urllib.request.urlopen(_ticket(), timeout=60) as answer:
                return f"posted: HTTP {answer.status}"
        except urllib.error.HTTPError as e:
            if e.code != 503:
                raise RuntimeError(json.loads(e.read()).get("reason", str(e))) from None
    raise RuntimeError("still pending after 20 tries")


QUICK = [
    ("a $5 charge", "stripe-python", small_charge),
    ("a $50,000 charge", "stripe-python", huge_charge),
    ("delete the S3 bucket customer-backups", "boto3", delete_bucket),
    ("open a GitHub issue", "urllib", open_issue),
]
HELD = [
    ("delete customer cus_demo", "stripe-python", delete_customer),
    ("archive Slack #general", "slack_sdk", archive_channel),
    ("POST to an API no mapping knows", "urllib", unknown_write),
]


def main() -> int:
    for call, sdk, attempt in QUICK:
        report(call, sdk, attempt)
    threads = [threading.Thread(target=report, args=held) for held in HELD]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
