"""No secret at rest: strip credentials from anything before it is stored, printed or sent.

Whatever policy needs from a secret (Stripe live vs test mode, say) is derived before this runs.
Three layers: names (headers and fields that say they hold a secret), the shapes of the
vendors' tokens Airlock knows (below), and detect-secrets' detectors (Yelp's, maintained and
widely used: AWS, GitLab, npm, PyPI, Azure, Discord, IBM, Mailchimp, …), plus card numbers
(Luhn-valid, masked to their last four digits as PCI DSS allows), PEM private keys and URL
userinfo.
"""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from typing import Any

from airlock.pipeline.patterns import Found, PatternError, _matchable, linear

REDACTED = "[REDACTED]"
_SCHEME = re.compile(r"(?i)(Basic|Bearer|Digest|AWS4-HMAC-SHA256|token|Negotiate) ")

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
        "x-airlock-undo-of",  # `airlock undo`'s signed link (pipeline/undo.py): not for readers
        # look-alikes of Authorization and Cookie that gateways and SDKs use
        "x-authorization",
        "authentication",
        "x-authentication",
        "x-auth",
        "x-forwarded-authorization",
        "cookie2",
        "set-cookie2",
        "x-session",
        "x-registry-auth",  # Docker: base64 of JSON with the registry password
        "x-registry-config",
        "x-sentry-auth",  # sentry_key=…, sentry_secret=…
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
    # "token" only at the end: access_token, x-auth-token, but not max_tokens or token_count;
    # "pass" only as a word of the name: db_pass, pass, but not passenger_count or bypass.
    r"(?i)(pass(word|wd|phrase)|(^|[-_])pass($|[-_])|^pwd$|[-_]pwd$|secret|token$|api[-_]?key"
    r"|access[-_]?key|private[-_]?key|credential|signature|^auth(orization)?$|^cvc$|^cvv2?$"
    r"|card[-_]?number|^sig$|session[-_]?id$|^sid$|^otp$|otp[-_]?code|^totp$|mfa[-_]?code"
    r"|^pin$|^pin[-_]?code$|security[-_]?code|passcode|^pw$|[-_]pw$|code[-_]?verifier"
    r"|authori[sz]ation$|^(x-)?authentication$|^x-auth$|registry[-_]auth"
    # keys named for whose they are: Azure's Ocp-Apim-Subscription-Key and storage account
    # key, Datadog's DD-Application-Key, x-functions-key, Cloudflare's X-Auth-Key, license keys
    r"|(subscription|application|functions?|auth|license|master|admin|client|account|sentry)"
    r"[-_]?key$"
    r"|^x-honeycomb-team$)"
)
# Tokens recognisable by their shape wherever they appear (bodies, paths, query strings).
# No leading word boundary: after "%3D" or "%20" a token starts right behind a letter.
# Matched by RE2 (pipeline/patterns.py): in Python's re a run such as `passwordpassword…` or
# `eyJeyJ…` is scanned again from each occurrence, time growing with the square of its length
# (40 ms for 16 KB, measured); RE2's is linear. RE2's \s is ASCII: a credential is taken up to
# the next ASCII space, never less than before.
_SECRET_VALUE = (
    r"(?:"
    # PEM private keys, the whole block (detect-secrets names only their first line)
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END[A-Z0-9 ]*PRIVATE KEY"
    r"(?: BLOCK)?-----|[\s\S]*)"  # without its END line (cut short): to the end
    # URL userinfo: https://user:pass@host, redis://:pass@host
    r"|(?P<keep_scheme>://)[^/\s@:]*:[^/\s@]+(?P<tail_at>@)"
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|npm_[A-Za-z0-9]{36}"  # npm
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{6,}"  # Stripe secret and restricted keys
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
# URLs whose path is the credential (whoever knows it can post): the secret segment goes, the
# ids before it stay. With their host (a path redacted with its host: redact_path, and URLs in
# text), and by their shape alone where no host is in view (a console line's params.path,
# mitmproxy's log of a request line it could not parse).
_SEGMENT = r"[^/\s?#\"'<>]+"
_SECRET_PATH = (
    r"(?:"
    # Slack incoming webhooks, workflow and trigger webhooks: the last segment
    rf"(?P<keep_slack>(?i:hooks\.slack(?:-gov)?\.com)(?:/{_SEGMENT})+/){_SEGMENT}"
    r"|(?P<keep_slack_path>/(?:services|workflows|triggers)/T[A-Z0-9]+/(?:[A-Z0-9]+/){1,2})"
    r"[A-Za-z0-9]{8,}"
    # Discord webhooks: /api[/v10]/webhooks/<id>/<token>
    r"|(?P<keep_discord>/webhooks/\d{5,20}/)[A-Za-z0-9_-]{20,}"
    rf"|(?P<keep_discord_host>(?i:discord(?:app)?\.com)/api/(?:v\d+/)?webhooks/{_SEGMENT}/)"
    rf"{_SEGMENT}"
    # Zapier catch hooks: /hooks/catch/<account>/<hook>
    rf"|(?P<keep_zapier>/hooks/(?:catch|standard)/\d+/){_SEGMENT}"
    # Microsoft Teams / Office 365 connectors: …/IncomingWebhook/<secret>/<owner>[/V2…]
    r"|(?P<keep_office>/IncomingWebhook/)[^\s?#\"'<>]+"
    # IFTTT Webhooks: maker.ifttt.com/trigger/<event>/with/key/<key>, /use/<key>
    rf"|(?P<keep_ifttt>/with/key/|(?i:maker\.ifttt\.com)/use/){_SEGMENT}"
    r")"
)
# AWS SigV4 fields, key=value credentials inside longer strings (any name that says it holds
# a secret: aws_secret_access_key=, db_password = , Api-Key:, token%3D), HTTP credentials after
# their scheme, and a secret said in words (`Your new API key is …`, `initial password was …`).
# Keyword first, then what may follow it: a pattern that starts with a literal is ruled out at
# a position in one step (measured: `[\w-]*password=` cost 6 µs a string, this 0.4 µs); the
# name's start (`aws_`, `X-Amz-`) stays, its value goes.
_SECRET_ASSIGNMENT = (
    r"(?:(?P<keep>(?i:(?:password|passwd|passphrase|secret|api[-_]?key|access[-_]?key)[\w-]*"
    r"|(?:api|access|secret) key|signature|credential|token|pwd)"
    r"(?:[ \t]*=[ \t]*|%(?:25)?3[Dd]|[ \t]*:[ \t]*)"
    r"|(?:Basic|Bearer|Digest|bearer|BEARER) )[^&,\s\"']+"
    r"|(?P<keep_said>(?i:password|passphrase|passcode|pin|api[ _-]?key|secret(?:[ _-]?key)?"
    r"|token|access[ _-]?key)[ \t]+(?i:is|was)[ \t]+)[^\s,;&]+)"
)
_SECRET_ANY = linear(f"{_SECRET_ASSIGNMENT}|{_SECRET_PATH}|{_SECRET_VALUE}")
_SECRET_SHAPE = linear(_SECRET_VALUE)  # a token known by its shape alone (sk_live_…, AKIA…)
_GROUPS = _SECRET_ANY.regexp.groupindex
_KEPT = tuple(number for name, number in _GROUPS.items() if name.startswith("keep"))
_SAID = _GROUPS["keep_said"]
_TAIL = _GROUPS["tail_at"]
_SHORTEST_SECRET = 8  # no token or `name=value` credential above is shorter
# Words that follow `password is` in messages about a password rather than in the password
# itself: the message stays readable.
_NOT_SAID = frozenset({
    "required", "invalid", "incorrect", "wrong", "missing", "empty", "blank", "expired",
    "revoked", "too", "not", "set", "unset", "correct", "valid", "ready", "reset",
    "changed", "updated", "disabled", "enabled", "null", "none", "the", "a", "an", "being",
    "now", "still", "also", "stored", "saved", "hidden", "redacted", "shown", "optional",
    "mandatory", "weak", "strong",
})  # fmt: skip


# AWS's service prefix for Secrets Manager, in IAM actions (`secretsmanager:GetSecretValue`) and
# ARNs (`arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf`): it reads as a
# field named like a secret, but what follows says which permission or which secret, which a
# reviewer deciding an IAM policy or a DeleteSecret must see. Only an action, a condition key or
# an ARN's tail is kept, whole; anything else after it goes, as any value named like a secret.
_SECRETS_MANAGER = "secretsmanager:"
_SECRETS_MANAGER_NAMES = re.compile(
    r"\*|(?:[A-Z][a-z]+)+\*?"  # an action (GetSecretValue, Describe*) or a condition key (Name)
    r"|(?:ResourceTag|resource)/[\w.-]+"  # ResourceTag/env, resource/AllowRotationLambdaArn
    # an ARN's region:account:secret:name (`=` and `+` left out: base64 is no name)
    r"|[a-z0-9*?-]*:(?:\d{12}|[*?]+)?:secret:[\w/.@*-]*"
)


def _replace(found: Found) -> str:
    """The secret goes; its name or scheme (`password=`, `Bearer `, `://`…`@`, a webhook's ids)
    stays."""
    said = found.group(_SAID)
    if said is not None:
        value = found.group()[len(said) :]
        if value.lower().rstrip(".!,:;)") in _NOT_SAID:
            return found.group()
    keep = next((kept for kept in map(found.group, _KEPT) if kept), "")
    if _names_in_secrets_manager(keep, found.group()[len(keep) :]):
        return found.group()
    return f"{keep}{REDACTED}{found.group(_TAIL) or ''}"


# Secrets Manager's IAM condition keys (its Service Authorization Reference), as keys of a
# policy's Condition: their values say which secret or setting, not a secret.
_CONDITION_KEY = re.compile(
    r"secretsmanager:(?:AddReplicaRegions|BlockPublicPolicy|Description|"
    r"ForceDeleteWithoutRecovery|ForceOverwriteReplicaSecret|KmsKeyId|ModifyRotationRules|Name|"
    r"RecoveryWindowInDays|RotateImmediately|RotationLambdaARN|SecretId|SecretPrimaryRegion|"
    r"VersionId|VersionStage|ResourceTag/[\w.:/=+@-]+|resource/AllowRotationLambdaArn)"
)


def _names_in_secrets_manager(name_and_colon: str, value: str) -> bool:
    return (
        name_and_colon == _SECRETS_MANAGER  # as AWS writes it
        and _SECRETS_MANAGER_NAMES.fullmatch(value) is not None
        and _SECRET_SHAPE.search(value) is None
    )


# Secrets on a command line: `mysql -pSECRET`, `docker login -p SECRET`, `psql --password X`,
# `curl -u user:SECRET`, `redis-cli -a SECRET`, `vault login TOKEN`,
# `aws configure set aws_secret_access_key SECRET`. A pass of its own, after the others: what it
# keeps (the command up to the flag) was redacted already.
_VALUE = r"""(?:"[^"\n]*"|'[^'\n]*'|[^\s"'-][^\s"']*)"""
_SECRET_ARGUMENT = linear(
    r"(?P<keep>(?:"
    r"\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlsh|mariadb|mariadb-dump)\b[^\n|;&]*?"
    r"[ \t]-p"
    r"|\b(?:login|sshpass)\b[^\n|;&]*?[ \t](?:-p|--password|--pass)[ \t]+"
    r"|\bredis-cli\b[^\n|;&]*?[ \t]-a[ \t]+"
    r"|(?:^|[\s\"'])--(?:[\w-]*[-_])?(?i:password|passwd|pass|pwd|token|secret|api-?key"
    r"|access-key|secret-key|private-key|credentials?|auth)[ \t]+"
    r"|(?:^|[\s\"'])(?:-u|--user|--proxy-user)[ \t]*[\"']?[^\s:\"']*:"
    r"|\bvault login[ \t]+"
    r"|\bconfigure set[ \t]+[\w.]*(?i:secret|token|password|key)[\w.]*[ \t]+"
    rf")){_VALUE}"
)


def _has_argument(text: str) -> bool:
    """What every command line above has (tested apart: ~0.1 µs, a scan ~2 µs)."""
    return (
        "-p" in text
        or "-u" in text
        or "--" in text
        or "redis-cli" in text
        or "login" in text
        or "configure set" in text
    )


def _redact_argument(found: Found) -> str:
    keep = found.group(1) or ""
    value = found.group()[len(keep) :]
    quote = value[:1] if value[:1] in ("'", '"') else ""
    return f"{keep}{quote}{REDACTED}{quote}"


def _maintained_patterns() -> tuple[list[str], list[str]]:
    """detect-secrets' own detector patterns: (those RE2 takes, those only Python's re takes:
    lookarounds, or a verbose pattern that needs its flag). Left out: its public-IP detector (an
    address is not a credential) and Twilio's `AC…` account SID (an identifier in every Twilio
    URL, which reviewers need to see); its API key `SK…` pattern stays."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    left_out = {"IPPublicDetector"}
    linear_ones, others = [], []
    for plugin in get_mapping_from_secret_type_to_class().values():
        if plugin.__name__ in left_out:
            continue
        for pattern in getattr(plugin, "denylist", None) or ():
            if pattern.pattern == "AC[a-z0-9]{32}":
                continue
            flags = "i" if pattern.flags & re.IGNORECASE else ""
            if pattern.flags & re.VERBOSE and re.search(r"[\s#]", pattern.pattern):
                others.append(f"(?{flags}x:{pattern.pattern})")
                continue
            text = f"(?{flags}:{pattern.pattern})" if flags else f"(?:{pattern.pattern})"
            try:
                linear(text)
            except PatternError:
                others.append(text)
            else:
                linear_ones.append(text)
    return linear_ones, others


# Measured: the maintained set as one alternation through Python's re cost ~140 µs per 280
# characters of plain text, so it runs only on strings with something token-shaped in them (a
# 20-character run of token characters, a URL, a PEM or PuTTY header, a JWT or Artifactory
# prefix): ~1.5 µs to rule out an ordinary value. Those RE2 takes run through it: three of them
# (npm's, OpenAI's, JWTs') take time that grows with the square of a run of `://`, `sk-` or
# `eyJ` in Python's re (0.5 s for 16 KB), linearly in RE2. The rest (lookarounds) are bounded.
_LINEAR_ONES, _OTHERS = _maintained_patterns()
_MAINTAINED = linear("|".join(_LINEAR_ONES))
_MAINTAINED_OTHERS = re.compile("|".join(_OTHERS)) if _OTHERS else None
_MAINTAINED_HINT = re.compile(r"[\w+/=.-]{20}|://|BEGIN|PuTTY|AKC|eyJ", re.ASCII)
# Card numbers of the major networks' ranges (13-19 digits, spaces or dashes allowed), masked
# when Luhn-valid: a millisecond timestamp or an id does not start like a card and pass both.
_CARD = re.compile(
    r"(?<![\d-])(?:4\d|5[1-5]|2[2-7]|3[47]|6[05]|3[0689])\d(?:[ -]?\d){10,16}(?![\d-])"
)


_DIGIT = re.compile(r"\d").search


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    if not 13 <= len(digits) <= 19 or not _luhn(digits):
        return match.group()
    return f"[CARD …{digits[-4:]}]"


def _redact_all(text: str) -> str:
    named = "=" in text or ":" in text or "%3" in text or "<" in text
    redacted = _redact_named_values(text) if named else text
    redacted = _SECRET_ANY.replace_all(redacted, _replace)
    if _MAINTAINED_HINT.search(redacted):
        redacted = _MAINTAINED.replace_all(redacted, REDACTED)
        if _MAINTAINED_OTHERS is not None:
            redacted = _MAINTAINED_OTHERS.sub(REDACTED, redacted)
    if _DIGIT(redacted):
        redacted = _CARD.sub(_mask_card, redacted)
    if _has_argument(redacted):
        redacted = _SECRET_ARGUMENT.replace_all(redacted, _redact_argument)
    return redacted


# A field named like a secret inside text (YAML, a config file, JSON kept as a string, a header
# line in a curl command, `KEY = value`, an escaped `\"password\": \"…\"`), its name quoted or
# not, then `:`, `=` or a percent-encoded `=`; an XML attribute pair (`name="password"
# value="…"`); or an XML element (`<Password>…</Password>`, `<sts:SecretAccessKey>`: STS's and
# IAM's answers, XML kept as text). Only the name is found by the pattern (RE2, over the whole
# text), and only a name
# with a word of _SECRET_NAME's in it (is_secret_name decides): any other name takes nothing
# after it, so `url=https://x/?pw=…` still has its `pw=` found, and a text with no such word
# costs one scan (measured: finding every `name:` in a short JSON text cost ~20 µs, this ~2).
_NAME_WORD = (
    r"(?i:pass|pw|secret|token|key|cred|sig|auth|cv[cv]|card|session|sid|otp|mfa|pin|security"
    r"|code|cookie|honeycomb)"
)
_FIELD_NAME = linear(
    rf"""(?:name|key)=\\{{0,8}}["']?(?P<attribute>[\w.-]*{_NAME_WORD}[\w.-]*)\\{{0,8}}["']?"""
    r"""[ \t]+value="""
    rf"""|(?P<name>[\w.-]*{_NAME_WORD}[\w.-]*)(?:\\{{0,8}}["'])?"""
    r"""(?:[ \t]*[:=][ \t]*|%(?:25)?3[Dd])"""
    # an element's start tag, its local name (after a namespace prefix) named like a secret
    rf"""|<(?:[\w.-]+:)?(?P<element>[\w.-]*{_NAME_WORD}[\w.-]*)(?:\s[^<>]*)?>"""
)
_NAME = _FIELD_NAME.regexp.groupindex["name"]
_ATTRIBUTE = _FIELD_NAME.regexp.groupindex["attribute"]
_ELEMENT = _FIELD_NAME.regexp.groupindex["element"]
# Its value, from where the name ends: quoted (the quote kept), or up to a separator (a scheme
# word before it goes with it). Each alternative starts on its own character and ends in a
# repetition with nothing after it: matched in one pass, never backtracked over.
_FIELD_VALUE = re.compile(
    r"""(?P<open>\\{0,8}")(?:[^"\\\r\n]|\\[^"\\\r\n])*"""
    r"""|(?P<single>\\{0,8}')(?:[^'\\\r\n]|\\[^'\\\r\n])*"""
    r"""|(?P<scheme>(?:Basic|Bearer|Digest|Token|Bot|bearer|basic|token)[ \t]+)?"""
    r"""(?:\[REDACTED\]|[^\s,;&}\]"'\\]+)"""
)
# An element's text, to the next tag; or a CDATA section, to its end (without one: to the end).
_ELEMENT_TEXT = re.compile(r"<!\[CDATA\[(?:[\s\S]*?\]\]>|[\s\S]*)|[^<]+")


def _redact_named_values(text: str) -> str:
    parts: list[str] = []
    last = kept_until = 0
    for match in _FIELD_NAME.regexp.finditer(_matchable(text)):
        start, end = match.span()
        if start < max(last, kept_until):  # inside a value already redacted, or kept whole
            continue
        name_start, name_end = match.span(_NAME)
        if name_start < 0:
            name_start, name_end = match.span(_ATTRIBUTE)
        element = name_start < 0
        if element:
            name_start, name_end = match.span(_ELEMENT)
        if not is_secret_name(text[name_start:name_end]):
            continue
        if element:
            value = _ELEMENT_TEXT.match(text, end)
            # an empty element (`<Password/>`), or one holding only other elements
            if text[end - 2] == "/" or value is None or value.group().isspace():
                continue
            parts += (text[last:end], REDACTED)
            last = value.end()
            continue
        value = _FIELD_VALUE.match(text, end)
        if value is None:
            continue
        if _names_in_secrets_manager(text[name_start:end], value.group()):
            kept_until = value.end()
            continue
        kept = value.group("open") or value.group("single") or value.group("scheme") or ""
        parts += (text[last:end], kept, REDACTED)
        last = value.end()
    if not parts:
        return text
    parts.append(text[last:])
    return "".join(parts)


# Strings found to hold no secret, so that the ones every request repeats (a user agent, a
# path, a reason) are scanned once, not each time (~2 µs a scan). Never a string that held
# one: nothing secret is kept here.
_CLEAN: dict[str, None] = {}
_CLEAN_LIMIT = 16_384
_CLEAN_LONGEST = 512


def redact_text(text: str) -> str:
    if len(text) < _SHORTEST_SECRET or text in _CLEAN:
        return text
    redacted = _redact_all(text)
    if redacted == text and len(text) <= _CLEAN_LONGEST:
        if len(_CLEAN) >= _CLEAN_LIMIT:
            _CLEAN.clear()
        _CLEAN[text] = None
    return redacted


# Names with a secret's word that hold no secret: which secret (Secrets Manager's SecretId,
# SecretName; a reviewer deciding a DeleteSecret must see which one) and where a listing goes on
# (NextToken, ContinuationToken, page_token) or which retry it is (IdempotencyToken). Whole
# names only: ClientSecretId, SessionToken stay secrets. (A secret's ARN: _SECRETS_MANAGER.)
_ONLY_NAMES = re.compile(
    r"(?i)(secrets?[-_]?(id|arn|name|version[-_]?id|version[-_]?stage)s?"
    r"|(next|continuation|pagination|page|next[-_]?page|starting|idempotency)[-_]?token)"
)


@lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Header and field names repeat endlessly: decide each once. An environment variable's
    name in capitals ending in `_KEY` (STRIPE_KEY, OPENAI_KEY) holds one too."""
    if _CONDITION_KEY.fullmatch(name):  # secretsmanager:Name, as a policy's condition names it
        return False
    return (
        name.lower() in _SECRET_HEADERS
        or (_SECRET_NAME.search(name) is not None and _ONLY_NAMES.fullmatch(name) is None)
        or (name.endswith("_KEY") and name.isupper())
    )


def redact_authority(value: str) -> str:
    """A Host header or :authority with user info (`admin:pw@host`), which the text patterns
    match only after `://`: what stands before the last `@` goes."""
    userinfo, at, host = value.rpartition("@")
    return f"{REDACTED}@{host}" if at and userinfo else value


def redact_path(host: str, path: str) -> str:
    """A path redacted with its host in view: a webhook's path is its credential
    (hooks.slack.com/services/T…/B…/<secret>, discord.com/api/webhooks/<id>/<token>)."""
    joined = redact_text(f"{host}{path}")
    if joined.startswith(host):
        return joined[len(host) :]
    return redact_text(path)


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    clean: dict[str, str] = {}
    for name, value in headers.items():
        if name == "host":
            clean[name] = redact_text(redact_authority(value))
        elif name in _PLAIN_HEADERS:
            clean[name] = value
        elif is_secret_name(name):
            scheme = value.split(" ", 1)[0] if " " in value and _SCHEME.match(value) else ""
            clean[name] = f"{scheme} {REDACTED}" if scheme else REDACTED
        else:
            clean[name] = redact_text(value)
    return clean


# A name and its value as siblings (ECS and Kubernetes environments, HAR headers, XML
# <Key>/<Value>, CloudFormation parameters): the value goes when the name is a secret's.
_PAIR_NAMES = ("name", "Name", "key", "Key", "ParameterKey")
_PAIR_VALUES = ("value", "Value", "ParameterValue")
_PAIR_NAME_SET = frozenset(_PAIR_NAMES)
# An OAuth authorization code (and PKCE verifier) is a credential in a token request and a
# redirect; a field named `code` elsewhere (an error code, a country code, a program) is not.
_OAUTH_SIBLINGS = frozenset({"grant_type", "code_verifier", "redirect_uri", "client_secret"})
# How deep a JSON document kept in a string is read, with what holds it: as deep as a body
# (pipeline/document.py MAX_DEPTH); deeper, it is redacted as text.
_MAX_DEPTH = 64


def redact_value(value: Any) -> Any:
    """Redact a JSON-shaped value: secret-named fields entirely, secret-shaped strings anywhere,
    JSON kept in a string as JSON."""
    return _redact_value(value, 0)


def _redact_value(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _redact_string(value, depth)
    if isinstance(value, dict):
        secret_siblings = _secret_siblings(value)
        return {
            # A key can be the secret itself (`?sk_live_…`, a JSON object keyed by tokens).
            redact_text(key) if isinstance(key, str) else key: REDACTED
            if (is_secret_name(str(key)) or key in secret_siblings) and value[key] not in (None, "")
            else _redact_value(value[key], depth + 1)
            for key in value
        }
    if isinstance(value, list):
        return [_redact_value(item, depth + 1) for item in value]
    return value


def _secret_siblings(value: dict[Any, Any]) -> tuple[str, ...]:
    """The keys of `value` that hold a secret because of another key: a name/value pair's
    value, an OAuth request's code."""
    found: tuple[str, ...] = ()
    if not _PAIR_NAME_SET.isdisjoint(value):
        for name in _PAIR_NAMES:
            named = value.get(name)
            if isinstance(named, str) and is_secret_name(named):
                found = _PAIR_VALUES
                break
    if "code" in value and not _OAUTH_SIBLINGS.isdisjoint(value):
        found = (*found, "code")
    return found


class _TooDeep(Exception):
    pass


def _redact_string(text: str, depth: int) -> str:
    """A string that holds a JSON object or array (a payload, a config file, a tool's
    arguments) is read and redacted as JSON, written back only if something in it went."""
    if len(text) < _SHORTEST_SECRET:
        return text
    first = text[0]
    if first == "{" or first == "[" or (first.isspace() and text.lstrip()[:1] in ("{", "[")):
        try:
            parsed = json.loads(text)
            _within(parsed, _MAX_DEPTH - depth)
        except (ValueError, RecursionError, _TooDeep):
            return redact_text(text)
        redacted = _redact_value(parsed, depth + 1)
        if redacted == parsed:
            return redact_text(text)  # parsed, nothing named: its text may still hold a shape
        return json.dumps(redacted, ensure_ascii=False)
    return redact_text(text)


def _within(value: Any, depth: int) -> None:
    """Raise _TooDeep if `value` nests deeper than `depth` (without recursion)."""
    level: list[Any] = [value]
    for _ in range(max(depth, 0)):
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return
    if any(isinstance(node, dict | list) for node in level):
        raise _TooDeep


def redact_document(document: dict[str, Any]) -> dict[str, Any]:
    clean = dict(document)
    clean["headers"] = redact_headers(document["headers"])
    clean["path"] = redact_path(str(document.get("host", "")), document["path"])
    clean["query"] = redact_value(document["query"])
    clean["body"] = redact_body(document["body"])
    for note in ("request_error", "body_error"):  # they quote what was sent
        if note in document:
            clean[note] = redact_text(str(document[note]))
    if "authority" in document:
        clean["authority"] = redact_text(redact_authority(str(document["authority"])))
    # The path as sent (kept when it held %2F, for identification) is not stored: a secret in
    # it may be percent-encoded past the redactor, and `path` already records it, redacted. Nor
    # are the digests of the target and body as sent (they bind approvals, in memory): unkeyed,
    # they would let a reader of the store test guesses of a field redacted here.
    for unstored in ("raw_path", "target_sha256", "body_sha256"):
        clean.pop(unstored, None)
    return clean


def redact_body(body: Any) -> Any:
    """A text body may still be JSON sent with another content type: redact it as JSON then.
    Any other text (multipart, YAML, JSON that does not parse, lines of JSON) also loses the
    values of fields whose name says they hold a secret, as parsed bodies do."""
    if isinstance(body, str) and body.lstrip()[:1] in ("{", "["):
        try:
            return json.dumps(redact_value(json.loads(body)), ensure_ascii=False)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to walk: as text
            return redact_text(_redact_multipart_fields(body))
    if isinstance(body, str):
        return redact_text(_redact_multipart_fields(body))
    return redact_value(body)


_PART_NAME = re.compile(r'name="([^"\r\n]{1,80})"')
_PART_HEADERS = 8  # lines a multipart part's headers may take before the blank line


def _redact_multipart_fields(text: str) -> str:
    """A multipart part named like a secret loses its value: the line after the blank line
    that ends its headers. Line by line rather than one regex: a regex that looks ahead over
    the following lines from every `name="` takes time that grows with the square of a body
    made of them (2 s for 40 KB, measured)."""
    if 'name="' not in text:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        found = _PART_NAME.search(line) if 'name="' in line else None
        if found is None or not is_secret_name(found.group(1)):
            continue
        for j in range(i + 1, min(i + 2 + _PART_HEADERS, len(lines) - 1)):
            if lines[j] in ("", "\r"):  # the blank line after the part's headers
                _redact_line(lines, j + 1)
                break
    return "\n".join(lines)


def _redact_line(lines: list[str], index: int) -> None:
    value = lines[index]
    end = "\r" if value.endswith("\r") else ""
    value = value.removesuffix(end)
    if value:
        quote = value[:1] if value[:1] in ("'", '"') else ""
        lines[index] = f"{quote}{REDACTED}{quote}{end}"


def redacted_prefix(text: str, limit: int) -> str:
    """At most `limit` characters of `text` (a tool's output, an outcome's detail), redacted as
    a text body is (JSON as JSON, else the values of fields named like secrets too, then the
    shapes) before the cut: a secret cut in half has lost the shape it is recognised by. What
    follows the cut is read as far as a PEM block reaches (a 4096-bit key is about 3.3 KB)."""
    return str(redact_body(text[: limit + 8192]))[:limit]


class RedactingFilter(logging.Filter):
    """What a log line says goes through the redactor before a handler writes it: a message's
    arguments (an agent's tool name, a `%r` of an error that quotes a request), the text of an
    exception logged with it (`log.exception`) and a stack, whichever logger it came from
    (Airlock's, mitmproxy's `Bad HTTP request line: b'GET /?api_key=…'`, tornado's, asyncio's).
    On a handler, not a logger: a record reaches a handler whatever logger it was logged on.
    A traceback that held a secret is written redacted after the message, as a formatter would
    write it, and the record no longer carries the exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "airlock_redacted", False):  # another handler's filter did it
            return True
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the message: written as they are, redacted
            message = f"{record.msg} {record.args!r}"
            record.msg, record.args = message, None
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info or record.exc_text:
            said = record.exc_text or logging.Formatter().formatException(record.exc_info)
            redacted = redact_text(said)
            if redacted != said:
                record.msg, record.args = f"{record.msg}\n{redacted}", None
                record.exc_info, record.exc_text = None, None
            else:
                record.exc_text = said
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        record.airlock_redacted = True
        return True


def redact_logs() -> None:
    """Once the handlers Airlock logs through are set up (mitmproxy's master: its terminal,
    start-up error check and log events; the decider worker's basicConfig): the filter on each
    handler of the root logger, once. Only what is written is filtered: no record is logged per
    allowed request (the decision line is written apart, from redacted values)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
