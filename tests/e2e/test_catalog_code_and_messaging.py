"""GitHub (its REST API through requests), SendGrid and Twilio (their official SDKs)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from airlock.console.standins import Upstream
from tests.e2e.test_catalog_aws import recorded
from tests.e2e.test_gate import runs
from tests.helpers.proxy import PROJECT_ROOT, Proxy

pytestmark = pytest.mark.e2e

HOSTS = ("api.github.com", "api.sendgrid.com", "api.twilio.com")


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy], session_upstream: Upstream) -> Proxy:
    policies = PROJECT_ROOT / "tests" / "e2e" / "policies-allow-all"
    return start_proxy(
        "--policies", str(policies), routes={host: session_upstream.port for host in HOSTS}
    )


@pytest.fixture
def agent_environment(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an agent's shell exports: HTTPS_PROXY and the CA for requests and urllib."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(proxy.ca_cert))
    monkeypatch.setenv("SSL_CERT_FILE", str(proxy.ca_cert))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def test_github_repository_writes(proxy: Proxy) -> None:
    github = proxy.session(agent="release-bot")
    github.headers.update(
        {
            "Authorization": "Bearer ghp_PlantedGitHubToken0000000000000000000",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
    )
    api = "https://api.github.com/repos/acme/payments"
    github.put(
        f"{api}/contents/src/app.py", json={"message": "fix", "content": "eA==", "branch": "main"}
    )
    github.delete(f"{api}/contents/old.txt", json={"message": "rm", "sha": "abc", "branch": "dev"})
    github.put(f"{api}/pulls/42/merge", json={"merge_method": "squash"})
    github.post(f"{api}/releases", json={"tag_name": "v1.2.0", "prerelease": True})
    github.post(f"{api}/actions/workflows/deploy.yml/dispatches", json={"ref": "main"})
    github.put(
        f"{api}/branches/main/protection",
        json={"required_pull_request_reviews": {"required_approving_review_count": 0},
              "enforce_admins": False, "required_status_checks": None, "restrictions": None},
    )  # fmt: skip
    github.delete(f"{api}/branches/main/protection/required_status_checks")
    github.put(f"{api}/collaborators/mallory", json={"permission": "admin"})
    github.patch(api, json={"private": False})
    github.delete(api)

    assert recorded(proxy, "write_file").target == "github/acme/payments/src/app.py"
    assert recorded(proxy, "delete_file").params["branch"] == "dev"
    merged = recorded(proxy, "merge_pull_request")
    assert (merged.params["number"], merged.params["merge_method"]) == (42, "squash")
    assert recorded(proxy, "create_release").params["prerelease"] is True
    assert (
        recorded(proxy, "dispatch_workflow").target == "github/acme/payments/workflows/deploy.yml"
    )
    protection = recorded(proxy, "change_branch_protection", enforce_admins=False)
    assert protection.params["required_reviews"] == 0
    [sub_rule] = [
        r for r in runs(proxy) if r.operation == "github.repos/remove-status-check-protection"
    ]
    assert (sub_rule.action, sub_rule.sensitivity) == ("change_branch_protection", "high")
    assert sub_rule.params["branch"] == "main"
    assert recorded(proxy, "change_permissions").params["permission"] == "admin"
    assert recorded(proxy, "update_repository").params["private"] is False
    deleted = recorded(proxy, "delete_repository")
    assert (deleted.sensitivity, deleted.agent) == ("critical", "release-bot")
    assert "PlantedGitHubToken" not in str([r.request for r in runs(proxy)])


def test_sendgrid_counts_every_recipient(proxy: Proxy, agent_environment: None) -> None:
    from sendgrid import SendGridAPIClient
    from sendgrid.helpers.mail import Bcc, Cc, Mail, To

    mail = Mail(
        from_email="billing@acme.example",
        to_emails=[To("a@example.com"), To("b@example.com")],
        subject="Your invoice",
        plain_text_content="Attached.",
    )
    mail.add_cc(Cc("c@example.com"))
    mail.add_bcc(Bcc("d@example.com"))
    SendGridAPIClient("SG.PlantedSendGridKey00.PlantedSendGridKey0000").send(mail)

    sent = recorded(proxy, "send_message", channel="email")
    assert sent.provider == "sendgrid"
    assert sent.params["recipient_count"] == 4
    assert (sent.params["sender"], sent.target) == (
        "billing@acme.example",
        "email/billing@acme.example",
    )
    assert "PlantedSendGridKey" not in str([r.request for r in runs(proxy)])


def test_twilio_sms_and_calls(proxy: Proxy, agent_environment: None) -> None:
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    http = TwilioHttpClient(proxy={"https": proxy.url})
    twilio = Client("AC0000000000000000000000000000000a", "planted-twilio-auth", http_client=http)
    twilio.messages.create(to="+15551230001", from_="+15559870000", body="Your code is 1234")
    twilio.calls.create(to="+15551230002", from_="+15559870000", url="https://example.com/twiml")

    sms = recorded(proxy, "send_message", channel="sms")
    assert (sms.provider, sms.target, sms.params["recipient_count"]) == (
        "twilio",
        "sms/+15551230001",
        1,
    )
    assert recorded(proxy, "place_call").target == "call/+15551230002"
    assert "planted-twilio-auth" not in str([r.request for r in runs(proxy)])


@pytest.fixture(scope="module")
def refusing(
    start_proxy: Callable[..., Proxy],
    session_upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Proxy:
    policies = tmp_path_factory.mktemp("refusing")
    (policies / "p.yaml").write_text(
        "rules:\n"
        "  - {id: no-mail, when: {action: send_message}, decision: BLOCK, reason: no mail today}\n"
    )
    return start_proxy(
        "--policies", str(policies), routes={host: session_upstream.port for host in HOSTS}
    )


def test_sendgrid_and_twilio_raise_their_own_errors_with_the_reason(
    refusing: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from python_http_client.exceptions import HTTPError
    from sendgrid import SendGridAPIClient
    from sendgrid.helpers.mail import Mail
    from twilio.base.exceptions import TwilioRestException
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    monkeypatch.setenv("HTTPS_PROXY", refusing.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(refusing.ca_cert))
    monkeypatch.setenv("SSL_CERT_FILE", str(refusing.ca_cert))
    mail = Mail(from_email="a@acme.example", to_emails="b@example.com", subject="s",
                plain_text_content="t")  # fmt: skip
    with pytest.raises(HTTPError) as refused:
        SendGridAPIClient("SG.PlantedSendGridKey00.PlantedSendGridKey0000").send(mail)
    [error] = json.loads(refused.value.body)["errors"]
    assert refused.value.status_code == 403 and "no mail today" in error["message"]

    http = TwilioHttpClient(proxy={"https": refusing.url})
    twilio = Client("AC0000000000000000000000000000000a", "planted-twilio-auth", http_client=http)
    with pytest.raises(TwilioRestException) as blocked:
        twilio.messages.create(to="+15551230001", from_="+15559870000", body="code 1234")
    assert blocked.value.status == 403 and "no mail today" in blocked.value.msg
