"""Official SDK clients set up as an agent's process would be: through the proxy, trusting its
CA, with nothing left over from another test's client."""

from __future__ import annotations

import pytest
import stripe

from tests.helpers.proxy import Proxy


def stripe_through(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch, agent: str, key: str = "sk_test_AgentKey00000"
) -> None:
    """stripe-python ignores the CA variables and keeps the HTTP client of its first request
    (and that client's proxy): give it its own proxy, CA and a fresh client."""
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(stripe, "api_key", key)
    monkeypatch.setattr(stripe, "proxy", f"http://{agent}:x@127.0.0.1:{proxy.port}")
    monkeypatch.setattr(stripe, "ca_bundle_path", str(proxy.ca_cert))
    monkeypatch.setattr(stripe, "default_http_client", None)
    monkeypatch.setattr(stripe, "max_network_retries", 0)
