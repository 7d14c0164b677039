"""`airlock doctor`: what an agent's machine needs to go through Airlock, checked line by line.

Each client family reads its own variables: requests REQUESTS_CA_BUNDLE, httpx/urllib/slack_sdk
SSL_CERT_FILE, boto3 AWS_CA_BUNDLE, Node NODE_EXTRA_CA_CERTS (and NODE_USE_ENV_PROXY=1, read from
Node 22.21 and 24.5, for its fetch), curl CURL_CA_BUNDLE and only the lower-case http_proxy;
stripe-python reads none of them (it is told in code). A line per check says what is right or
what to run to fix it.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

CA_VARIABLES = (
    ("REQUESTS_CA_BUNDLE", "requests"),
    ("SSL_CERT_FILE", "httpx, urllib, slack_sdk"),
    ("AWS_CA_BUNDLE", "boto3"),
    ("NODE_EXTRA_CA_CERTS", "Node"),
    ("CURL_CA_BUNDLE", "curl"),
)
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    fix: str | None = None  # a command or a line of code, when not ok

    def __str__(self) -> str:
        mark = "ok " if self.ok else "FIX"
        return f"{mark} {self.what}" + (f"\n    → {self.fix}" if self.fix else "")


def diagnose(
    env: Mapping[str, str],
    ca_cert: Path,
    store_problem: Callable[[], str | None],
    node_version: Callable[[], str | None] | None = None,
) -> list[Finding]:
    """node_version: the `node --version` of this shell's PATH, None without Node (by default
    it is run)."""
    findings = [_ca_exists(ca_cert)]
    proxy = env.get("HTTPS_PROXY") or env.get("https_proxy")
    findings += _proxy_variables(env, proxy)
    if proxy:
        findings.append(_reachable(proxy))
    airlock_pem = _pem(ca_cert)
    for variable, clients in CA_VARIABLES:
        findings.append(_trusts(env, variable, clients, ca_cert, airlock_pem))
    findings.append(_node_proxy(env, (node_version or installed_node_version)()))
    findings.append(
        Finding(True, "stripe-python reads none of these variables: set it in code, "
                f'stripe.proxy = "{proxy or "http://127.0.0.1:8080"}"; '
                f'stripe.ca_bundle_path = "{ca_cert}"')
    )  # fmt: skip
    problem = store_problem()
    findings.append(Finding(problem is None, "the store is reachable", problem))
    return findings


# Node reads HTTPS_PROXY (with NODE_USE_ENV_PROXY=1) from 22.21 on the 22 line and from 24.5:
# before, its fetch and its http agents go straight out, whatever the variables say (measured
# with openai, @anthropic-ai/sdk, stripe, @slack/web-api, @aws-sdk/client-s3 and the MCP SDK).
NODE_ENV_PROXY = {22: (22, 21), 24: (24, 5)}
NODE_AGENTS = "stripe-node and @aws-sdk/* bring their own http agent: give them one in code"


def installed_node_version() -> str | None:
    try:
        done = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _node_proxy(env: Mapping[str, str], version: str | None) -> Finding:
    if version is None:
        return Finding(True, "no Node here (node is not on the PATH): nothing to check for it")
    if not _reads_env_proxy(version):
        return Finding(
            False, f"Node {version} ignores HTTPS_PROXY whatever NODE_USE_ENV_PROXY says: its "
            "SDKs (openai, @anthropic-ai/sdk, @slack/web-api, MCP, stripe, AWS) reach APIs "
            "directly, unjudged",
            "use Node ≥ 22.21 or ≥ 24.5 with NODE_USE_ENV_PROXY=1, or give each SDK a proxy "
            "agent in code (README: Node agents)",
        )  # fmt: skip
    if env.get("NODE_USE_ENV_PROXY") == "1":
        fetching = "openai, @anthropic-ai/sdk, @slack/web-api, MCP"
        return Finding(True, f"Node {version}, NODE_USE_ENV_PROXY=1: its fetch uses HTTPS_PROXY "
                             f"({fetching}); {NODE_AGENTS}")  # fmt: skip
    return Finding(
        False, f"NODE_USE_ENV_PROXY is not 1: Node {version} ignores HTTPS_PROXY",
        f"export NODE_USE_ENV_PROXY=1   # {NODE_AGENTS}",
    )  # fmt: skip


def _reads_env_proxy(version: str) -> bool:
    try:
        major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
    except ValueError:
        return False  # a version it cannot read: said, rather than taken as enough
    if major > max(NODE_ENV_PROXY):
        return True
    first = NODE_ENV_PROXY.get(major)
    return first is not None and (major, minor) >= first


def _ca_exists(ca_cert: Path) -> Finding:
    if ca_cert.is_file():
        return Finding(True, f"Airlock's CA is at {ca_cert}")
    return Finding(
        False, f"Airlock's CA is not at {ca_cert}",
        "start the proxy once (airlock run) to generate it, or give --data-dir",
    )  # fmt: skip


def _proxy_variables(env: Mapping[str, str], proxy: str | None) -> list[Finding]:
    if not proxy:
        fix = "export HTTPS_PROXY=http://127.0.0.1:8080 https_proxy=$HTTPS_PROXY"
        return [Finding(False, "no HTTPS_PROXY: agents connect directly, past Airlock", fix)]
    missing = [name for name in PROXY_VARIABLES if env.get(name) != proxy]
    if not missing:
        return [Finding(True, f"the proxy variables (upper and lower case) name {proxy}")]
    exports = " ".join(f"{name}={proxy}" for name in missing)
    return [
        Finding(False, f"{', '.join(missing)} not set to {proxy} (curl reads only the lower "
                "case http_proxy; some clients only the upper case)", f"export {exports}")
    ]  # fmt: skip


def _reachable(proxy: str) -> Finding:
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host, port = parts.hostname or "127.0.0.1", parts.port or 8080
    try:
        with socket.create_connection((host, port), timeout=2):
            return Finding(True, f"the proxy answers at {host}:{port}")
    except OSError as e:
        return Finding(False, f"nothing answers at {host}:{port} ({e.strerror or e})",
                       "start it: airlock run (or make run)")  # fmt: skip


def _trusts(
    env: Mapping[str, str], variable: str, clients: str, ca_cert: Path, airlock_pem: str | None
) -> Finding:
    fix = f"export {variable}={ca_cert}"
    value = env.get(variable)
    if not value:
        return Finding(False, f"{variable} is not set: {clients} will not trust Airlock", fix)
    bundle = Path(value)
    if not bundle.is_file():
        return Finding(False, f"{variable}={value} is not a file", fix)
    if airlock_pem is None:  # nothing to look for: not a pass
        what = f"cannot check {variable}: Airlock's CA not found at {ca_cert} ({clients})"
        return Finding(False, what, "give --data-dir (the proxy's), or start the proxy once")
    if airlock_pem not in bundle.read_text(errors="replace"):
        return Finding(False, f"{variable}={value} does not hold Airlock's CA ({clients})", fix)
    return Finding(True, f"{variable} trusts Airlock's CA ({clients})")


def _pem(ca_cert: Path) -> str | None:
    """The first line of the certificate's base64 body: found inside any bundle that holds
    the certificate, whatever else the bundle holds."""
    if not ca_cert.is_file():
        return None
    lines = ca_cert.read_text().strip().splitlines()
    body = [line for line in lines if line and not line.startswith("-----")]
    return body[0] if body else None
