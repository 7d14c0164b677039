"""No secret at rest: strip credentials from anything before it is stored, printed or sent.

Whatever policy needs from a secret (Stripe live vs test mode, say) is derived before this runs.
"""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from typing import Any

REDACTED = "[REDACTED]"

# Headers whose whole value is a credential.
_SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-amz-security-token",
        "x-goog-api-key",
        "stripe-account-token",
    }
)
# Headers that only describe the message; their values are kept as they are, unscanned.
_PLAIN_HEADERS = frozenset(
    {
        "host",
        "content-type",
        "content-length",
        "accept",
        "accept-encoding",
        "connection",
        "idempotency-key",
        "stripe-version",
        "x-amz-date",
        "x-amz-content-sha256",
        "x-amz-target",
        "amz-sdk-invocation-id",
        "amz-sdk-request",
    }
)
# Any field or header whose name says it holds a secret.
_SECRET_NAME = re.compile(
    # "token" only at the end: access_token, x-auth-token, but not max_tokens or token_count.
    r"(?i)(pass(word|wd)|secret|token$|api[-_]?key|access[-_]?key|private[-_]?key|credential"
    r"|signature|^auth(orization)?$|^cvc$|^cvv$|card[-_]?number|^sig$)"
)
# Tokens recognisable by their shape wherever they appear (bodies, paths, query strings).
# No leading word boundary: after "%3D" or "%20" a token starts right behind a letter.
_SECRET_VALUE = re.compile(
    r"(?:"
    r"[sr]k_(?:live|test)_[A-Za-z0-9]{6,}"  # Stripe secret and restricted keys
    r"|whsec_[A-Za-z0-9]{6,}"  # Stripe webhook secrets
    r"|xox[abposre]-[A-Za-z0-9-]{6,}"  # Slack tokens
    r"|xapp-[A-Za-z0-9-]{6,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|SG\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # SendGrid
    r"|sk-(?:ant-)?[A-Za-z0-9_-]{16,}"  # OpenAI / Anthropic
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}"  # AWS access key ids
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    r"|\d{8,10}:[A-Za-z0-9_-]{35}"  # Telegram bot tokens
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r")"
)
# AWS SigV4 fields and generic key=value credentials inside longer strings.
_SECRET_ASSIGNMENT = re.compile(
    r"((?i:Signature|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Credential"
    r"|password|api_key|apikey|token|secret)=)[^&,\s]+"
)


# Both kinds in one pass: group 1 is set for an assignment (keep its name), else a bare token.
_SECRET_ANY = re.compile(f"{_SECRET_ASSIGNMENT.pattern}|{_SECRET_VALUE.pattern}")
_SHORTEST_SECRET = 8  # no token or `name=value` credential above is shorter


def _replace(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED if match.group(1) else REDACTED


# Strings found to hold no secret, so that the ones every request repeats (a user agent, a
# path, a reason) are scanned once, not each time (~2 µs a scan). Never a string that held
# one: nothing secret is kept here.
_CLEAN: dict[str, None] = {}
_CLEAN_LIMIT = 16_384
_CLEAN_LONGEST = 512


def redact_text(text: str) -> str:
    if len(text) < _SHORTEST_SECRET or text in _CLEAN:
        return text
    redacted = _SECRET_ANY.sub(_replace, text)
    if redacted == text and len(text) <= _CLEAN_LONGEST:
        if len(_CLEAN) >= _CLEAN_LIMIT:
            _CLEAN.clear()
        _CLEAN[text] = None
    return redacted


@lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Header and field names repeat endlessly: decide each once."""
    return name.lower() in _SECRET_HEADERS or _SECRET_NAME.search(name) is not None


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    clean: dict[str, str] = {}
    for name, value in headers.items():
        if name in _PLAIN_HEADERS:
            clean[name] = value
        elif is_secret_name(name):
            scheme = (
                value.split(" ", 1)[0] if " " in value and name.endswith("authorization") else ""
            )
            clean[name] = f"{scheme} {REDACTED}" if scheme else REDACTED
        else:
            clean[name] = redact_text(value)
    return clean


def redact_value(value: Any) -> Any:
    """Redact a JSON-shaped value: secret-named fields entirely, secret-shaped strings anywhere."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            # A key can be the secret itself (`?sk_live_…`, a JSON object keyed by tokens).
            redact_text(key) if isinstance(key, str) else key: REDACTED
            if is_secret_name(str(key)) and value[key] not in (None, "")
            else redact_value(value[key])
            for key in value
        }
    if isinstance(value, list):
        return [redact_value(item) for item in value]
    return value


def redact_document(document: dict[str, Any]) -> dict[str, Any]:
    clean = dict(document)
    clean["headers"] = redact_headers(document["headers"])
    clean["path"] = redact_text(document["path"])
    clean["query"] = redact_value(document["query"])
    clean["body"] = redact_body(document["body"])
    for note in ("request_error", "body_error", "authority"):  # they quote what was sent
        if note in document:
            clean[note] = redact_text(str(document[note]))
    # The path as sent (kept when it held %2F, for identification) is not stored: a secret in
    # it may be percent-encoded past the redactor, and `path` already records it, redacted.
    clean.pop("raw_path", None)
    return clean


def redact_body(body: Any) -> Any:
    """A text body may still be JSON sent with another content type: redact it as JSON then."""
    if isinstance(body, str) and body[:1] in ("{", "["):
        try:
            return json.dumps(redact_value(json.loads(body)), ensure_ascii=False)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to walk: as text
            return redact_text(body)
    return redact_value(body)


class RedactingFilter(logging.Filter):
    """mitmproxy logs the raw request line of a request it cannot parse (`Bad HTTP request
    line: b'GET /?api_key=sk_live_…'`): redact what it prints, as everything Airlock prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def redact_mitmproxy_logs() -> None:
    """Once per process: the logger of mitmproxy's connection handlers."""
    logger = logging.getLogger("mitmproxy.proxy.server")
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
