"""The Slack catalog, proven with slack_sdk's WebClient through a running Airlock."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
from slack_sdk import WebClient

from airlock.console.standins import Upstream
from tests.e2e.test_catalog_aws import recorded
from tests.e2e.test_gate import runs
from tests.helpers.proxy import PROJECT_ROOT, Proxy

pytestmark = pytest.mark.e2e

TOKEN = "xoxb-1234567890-0987654321-PlantedSlackBotToken"


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], session_upstream: Upstream) -> Proxy:
    policies = PROJECT_ROOT / "tests" / "e2e" / "policies-allow-all"
    hosts = ("slack.com", "files.slack.com")
    return start_proxy(
        "--policies", str(policies), routes={host: session_upstream.port for host in hosts}
    )


@pytest.fixture
def slack(proxy: Proxy) -> WebClient:
    """A WebClient as an agent sets it up: its proxy and an SSL context trusting the proxy's CA."""
    return WebClient(
        token=TOKEN,
        proxy=proxy.url,
        ssl=ssl.create_default_context(cafile=str(proxy.ca_cert)),
    )


def test_messages_json_and_form_bodies(proxy: Proxy, slack: WebClient) -> None:
    slack.chat_postMessage(channel="C0SUPPORT", text="Refund issued", thread_ts="1.2")
    slack.chat_update(channel="C0SUPPORT", ts="1700000000.000100", text="Refund issued (edited)")
    slack.chat_delete(channel="C0SUPPORT", ts="1700000000.000100")
    slack.chat_scheduleMessage(channel="C0SUPPORT", post_at=1900000000, text="later")

    sent = recorded(proxy, "send_message", thread_ts="1.2")
    assert (sent.provider, sent.target, sent.category) == ("slack", "slack/C0SUPPORT", "messaging")
    assert sent.request["body_format"] == "json"
    assert recorded(proxy, "update_message").target == "slack/C0SUPPORT/1700000000.000100"
    deleted = recorded(proxy, "delete_message")
    assert deleted.request["body_format"] == "form"
    assert deleted.sensitivity == "high"
    assert recorded(proxy, "send_message", post_at=1900000000).target == "slack/C0SUPPORT"


def test_channels_members_files_admin_and_reads(proxy: Proxy, slack: WebClient) -> None:
    slack.conversations_create(name="incident-42", is_private=True)
    slack.conversations_invite(channel="C0INCIDENT", users=["U1", "U2", "U3"])
    slack.conversations_kick(channel="C0INCIDENT", user="U2")
    slack.conversations_archive(channel="C0INCIDENT")
    slack.api_call("admin.users.remove", json={"team_id": "T1", "user_id": "U9"})
    slack.files_upload_v2(channel="C0INCIDENT", content="timeline", filename="timeline.txt")
    slack.conversations_list()
    slack.auth_test()

    created = recorded(proxy, "create_channel")
    assert (created.params["name"], created.params["is_private"]) == ("incident-42", True)
    assert recorded(proxy, "add_members").params["user_count"] == 3
    assert recorded(proxy, "remove_member").params["user"] == "U2"
    archived = recorded(proxy, "archive_channel")
    assert archived.undo == {"action": "unarchive_channel", "params": {"channel": "C0INCIDENT"}}
    admin = recorded(proxy, "admin_change")
    assert (admin.target, admin.sensitivity) == ("slack/admin.users.remove", "critical")
    assert recorded(proxy, "upload_file", filename="timeline.txt").target == "slack/files"
    assert recorded(proxy, "upload_file", channel="C0INCIDENT").category == "messaging"
    assert recorded(proxy, "upload_file", size=8).request["host"] == "files.slack.com"
    assert recorded(proxy, "read").category == "read"
    everything = str([(r.request, r.params, r.reason) for r in runs(proxy)])
    assert "PlantedSlackBotToken" not in everything
    assert "PlantedSlackBotToken" not in proxy.output()
