from __future__ import annotations

import json
from typing import Any

import pytest

from airlock.pipeline.redaction import (
    REDACTED,
    redact_body,
    redact_document,
    redact_headers,
    redact_path,
    redact_text,
    redact_value,
    redacted_prefix,
)


def test_credential_headers_are_redacted_keeping_the_scheme() -> None:
    headers = redact_headers(
        {
            "authorization": "Bearer sk_live_abcdef123456",
            "proxy-authorization": "Basic YWdlbnQ6a2V5",
            "cookie": "session=abc",
            "x-api-key": "k-123",
            "x-amz-security-token": "FQoGZXIvYXdzE",
            "stripe-version": "2024-06-20",
        }
    )
    assert headers == {
        "authorization": f"Bearer {REDACTED}",
        "proxy-authorization": f"Basic {REDACTED}",
        "cookie": REDACTED,
        "x-api-key": REDACTED,
        "x-amz-security-token": REDACTED,
        "stripe-version": "2024-06-20",
    }


def test_aws_sigv4_authorization_is_redacted() -> None:
    value = (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240101/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027"
    )
    assert redact_headers({"authorization": value}) == {
        "authorization": f"AWS4-HMAC-SHA256 {REDACTED}"
    }


def test_tokens_are_found_by_shape_anywhere_in_text() -> None:
    text = (
        "keys sk_test_51abcdefGHIJ rk_live_99zzzzzz xoxb-123-456-abcdef ghp_"
        + "a" * 36
        + " AKIAIOSFODNN7EXAMPLE done"
    )
    assert redact_text(text) == (
        f"keys {REDACTED} {REDACTED} {REDACTED} {REDACTED} {REDACTED} done"
    )
    url = "/b/k?X-Amz-Credential=AKIA/x&X-Amz-Signature=abcd&part=1"
    assert redact_text(url) == f"/b/k?X-Amz-Credential={REDACTED}&X-Amz-Signature={REDACTED}&part=1"


def test_secret_named_fields_are_redacted_in_nested_bodies() -> None:
    body = {
        "amount": 100,
        "api_key": "anything",
        "card": {"number": "4242", "cvc": "123"},
        "password": "p",
        "client_secret": "pi_123_secret_456",
        "items": [{"token": "t", "name": "ok"}],
        "author": "kept",
        "empty_token": "",
    }
    assert redact_value(body) == {
        "amount": 100,
        "api_key": REDACTED,
        "card": {"number": "4242", "cvc": REDACTED},
        "password": REDACTED,
        "client_secret": REDACTED,
        "items": [{"token": REDACTED, "name": "ok"}],
        "author": "kept",
        "empty_token": "",
    }


def test_redact_document_covers_headers_path_query_and_body() -> None:
    document = {
        "method": "POST",
        "path": "/hooks/xoxb-123-456-abcdef",
        "query": {"token": ["abc"], "page": ["2"]},
        "headers": {"authorization": "Bearer x"},
        "body": "text with sk_live_abcdef123456",
    }
    clean = redact_document(document)
    assert clean["path"] == f"/hooks/{REDACTED}"
    assert clean["query"] == {"token": REDACTED, "page": ["2"]}
    assert clean["headers"] == {"authorization": f"Bearer {REDACTED}"}
    assert clean["body"] == f"text with {REDACTED}"
    assert document["headers"] == {"authorization": "Bearer x"}  # the original is untouched


def test_shape_matching_is_case_sensitive_and_assignments_are_not() -> None:
    assert redact_text("region asiapacificregion1234567") == "region asiapacificregion1234567"
    assert redact_text("TOKEN=abc123&x=1") == f"TOKEN={REDACTED}&x=1"
    assert redact_text("short") == "short"


def test_json_sent_as_text_is_redacted_as_json() -> None:
    document = {
        "path": "/",
        "query": {
            "sig": ["abc"],
            "key": ["AIzaSyA-1234567890abcdefghijklmnopqrstu"],
            "page": ["1"],
        },
        "headers": {},
        "body": '{"user": "a", "password": "hunter2-planted"}',
    }
    clean = redact_document(document)
    assert "hunter2-planted" not in clean["body"]
    assert '"user": "a"' in clean["body"]
    assert clean["query"] == {"sig": REDACTED, "key": [REDACTED], "page": ["1"]}


def test_tokens_after_percent_escapes_and_in_paths_are_redacted() -> None:
    assert redact_text("q=token%3Dsk_live_abcdefgh1234") == f"q=token%3D{REDACTED}"
    telegram = "/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0/sendMessage"
    assert redact_text(telegram) == f"/bot{REDACTED}/sendMessage"


def test_token_counts_are_not_secrets_but_tokens_are() -> None:
    body = {"max_tokens": 300, "usage": {"input_tokens": 5}, "access_token": "abc", "token": "t"}
    assert redact_value(body) == {
        "max_tokens": 300,
        "usage": {"input_tokens": 5},
        "access_token": REDACTED,
        "token": REDACTED,
    }


def test_clean_strings_are_remembered_and_secrets_never_are() -> None:
    from airlock.pipeline import redaction

    clean, secret = "Stripe/v1 PythonBindings/10.0", "key=sk_live_abcdefghijklmnop"
    for _ in range(2):
        assert redact_text(clean) == clean
        assert redact_text(secret) == "key=[REDACTED]"
    assert clean in redaction._CLEAN
    assert not any("sk_live" in kept for kept in redaction._CLEAN)


def test_secrets_in_keys_notes_and_unwalkable_bodies_are_redacted() -> None:
    """A query or JSON key can be the secret, a refusal's note quotes the request target, and a
    JSON-looking text body too deep to walk is still scanned as text."""
    import json
    import logging

    from airlock.pipeline.document import WireRequest, build_document
    from airlock.pipeline.redaction import RedactingFilter

    secret = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
    document = build_document(
        WireRequest("GET", "https", "api.stripe.com", 443, f"/v1/\udcff?{secret}", [], b""), "a"
    )
    stored = json.dumps(redact_document(document))
    assert "request_error" in stored and secret not in stored
    deep = "[" * 2000 + f'"{secret}"' + "]" * 2000
    assert secret not in redact_document({**document, "body": deep})["body"]

    line = f"GET /?k={secret} X"
    record = logging.LogRecord(
        "mitmproxy.proxy.server", logging.INFO, "", 0, "Bad HTTP request line: %r", (line,), None
    )
    RedactingFilter().filter(record)
    assert secret not in record.getMessage() and "Bad HTTP request line" in record.getMessage()


def test_the_path_as_sent_is_not_kept_where_it_could_hide_a_secret() -> None:
    from airlock.console.explain import parse_request
    from airlock.pipeline.document import build_document
    from airlock.pipeline.redaction import redact_document

    request = parse_request(
        "curl -X DELETE 'https://api.github.com/repos/o/r/git/refs/sk%5Ftest%5FPlanted0000000000000000%2Fx'"
    )
    document = build_document(request, "a")
    assert "raw_path" in document  # identification reads it
    stored = redact_document(document)
    assert "raw_path" not in stored
    assert "Planted" not in str(stored)


def corpus_requests() -> list[tuple[str, str, list[tuple[str, str]], bytes, str]]:
    """The corpus as requests an SDK would send: (method, path, headers, body, content type)
    for a JSON body, a form body and an XML body, secrets in headers, the query string and
    the paths."""
    import json
    from urllib.parse import quote, urlencode

    from tests.secret_corpus import CORPUS

    def planted(kind: str) -> list[tuple[str, str]]:
        """(name or template, value) of the entries planted as `kind:…`."""
        return [(w.split(":", 1)[1], v) for _, w, v in CORPUS if w.startswith(f"{kind}:")]

    headers = planted("header")
    query = urlencode(planted("query"))
    texts = [v for _, w, v in CORPUS if w == "text"]
    texts += [template.format(v) for template, v in planted("text")]
    note = " and ".join(texts)
    url = next(v for _, w, v in CORPUS if w == "url")
    fields = dict(planted("json"))
    payload = json.dumps(dict(planted("nested")))  # a JSON document kept as a string
    environment = [{"name": name, "value": v} for name, v in planted("pair")]
    body = json.dumps({**fields, "note": note, "payload": payload, "environment": environment,
                       "callback": f"https://{url}@hooks.example.com/x"})  # fmt: skip
    form = "&".join(
        f"{quote(name, safe='[]')}={quote(v)}"
        for name, v in [("grant_type", "authorization_code"), *planted("form")]
    )
    xml = next(v for _, w, v in CORPUS if w == "xml")
    entries = "".join(
        f"<Entry><Key>{name}</Key><Value>{v}</Value></Entry>" for name, v in planted("xml-pair")
    )
    xml_body = f"<Login><User>ops</User><Password>{xml}</Password>{entries}</Login>"
    paths = [template.format(v) for template, v in planted("path")] + ["/v1/forms", "/v1/config"]
    return [
        ("POST", f"/v1/things?{query}", headers, body.encode(), "application/json"),
        ("POST", paths[0], headers, form.encode(), "application/x-www-form-urlencoded"),
        ("PUT", paths[1], headers, xml_body.encode(), "application/xml"),
    ]


def test_a_corpus_of_real_secret_formats_is_redacted_kind_by_kind() -> None:
    import json

    from airlock.pipeline.document import WireRequest, build_document
    from tests.secret_corpus import CORPUS

    stored = ""
    for method, path, headers, body, kind in corpus_requests():
        request = WireRequest(
            method, "https", "api.example.com", 443, path,
            [*headers, ("content-type", kind)], body,
        )  # fmt: skip
        stored += json.dumps(redact_document(build_document(request, "agent")), ensure_ascii=False)
    found = [kind for kind, _, value in CORPUS if value in stored]
    assert found == [], f"stored in clear: {found}"
    assert len({kind for kind, _, _ in CORPUS}) >= 30
    assert "[CARD …4242]" in stored  # masked to the last four digits


def test_ordinary_values_are_left_alone() -> None:
    """What reviewers need stays readable: amounts, ids, timestamps, Twilio account SIDs,
    token counts, words of prose."""
    kept = [
        "150000", "1733212800123", "cus_9s6XKzkNRiz8i3", "ch_3PlAbC2eZvKYlo2C1",
        "AC0123456789abcdef0123456789abcdef", "max_tokens=4096",
        "Please archive the #general channel before Friday",
        "arn:aws:s3:::reports-2026/q4/summary.csv", "+14155550123",
    ]  # fmt: skip
    assert [redact_text(v) for v in kept] == kept


SECRET = "S3cret-Pa55word!"  # no token shape: only its field's name gives it away


@pytest.mark.parametrize(
    "body",
    [
        f'--b\r\nContent-Disposition: form-data; name="client_secret"\r\n\r\n{SECRET}\r\n--b--',
        f'{{"password": "{SECRET}",}}',  # JSON that does not parse (a trailing comma)
        f'{{"a": 1}}\n{{"db_password": "{SECRET}"}}',  # lines of JSON
        f"db_password: {SECRET}\nuser: ann",  # YAML as text/plain
        f'  {{"password": "{SECRET}"}}',  # JSON after whitespace
        f"user=ann&api_key={SECRET}",
    ],
    ids=["multipart", "bad-json", "ndjson", "yaml", "indented-json", "form-text"],
)
def test_a_text_body_loses_the_values_of_fields_named_as_secrets(body: str) -> None:
    """Bodies Airlock does not parse into fields are redacted by field name too, not only by
    token shape, while the other fields stay for reviewers."""
    clean = redact_body(body)
    assert SECRET not in clean and REDACTED in clean
    assert ("ann" in clean) == ("ann" in body)


def test_keys_named_for_whose_they_are_are_redacted_and_identifiers_are_not() -> None:
    headers = {name: SECRET for name in (
        "Ocp-Apim-Subscription-Key", "DD-APPLICATION-KEY", "X-Functions-Key", "X-Auth-Key",
        "X-Honeycomb-Team", "license_key", "account-key")}  # fmt: skip
    assert set(redact_headers(headers).values()) == {REDACTED}
    kept = {"partition_key": "p1", "sort_key": "s1", "key": "photos/a.jpg"}
    assert redact_value(kept) == kept  # S3's object Key, DynamoDB's keys: what reviewers read


def test_a_private_key_cut_short_is_redacted_to_the_end() -> None:
    """Tool output kept to its first 1,000 characters can end inside a PEM block: without its
    END line it is still a key, and its base64 lines go."""
    pem = "-----BEGIN RSA PRIVATE KEY-----\n" + "MIIEow" * 300 + "\n-----END RSA PRIVATE KEY-----"
    output = f"$ cat id_rsa\n{pem}\n$ "
    for kept in (redact_text(output[:1000]), redacted_prefix(output, 1000)):
        assert "MIIEow" not in kept and kept.startswith("$ cat id_rsa\n")


def test_text_kept_in_part_loses_the_values_of_fields_named_like_secrets() -> None:
    """A tool's output (an MCP result) and an outcome's detail are redacted as a text body is,
    named fields too, not only the shapes secrets have."""
    from airlock.pipeline.mcp import tool_outcome

    config = json.dumps({"host": "db.internal", "user": "admin", "password": "hunter2Secret"})
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "get_db_config", "arguments": {}}}  # fmt: skip
    result = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": config}]}}
    kept = tool_outcome(request, json.dumps(result).encode(), "application/json")
    assert kept is not None and "hunter2Secret" not in json.dumps(kept)
    assert '"host": "db.internal"' in kept["text"]
    for text in (config, "db_password: hunter2Secret", "connect failed: password=hunter2Secret"):
        assert "hunter2Secret" not in redacted_prefix(text, 2000)
    assert redacted_prefix("db_password: hunter2Secret", 16) == "db_password: [RE"


def test_names_a_caller_gives_are_redacted_in_the_record() -> None:
    """A Guard API call names its own provider and tool (free text from the caller)."""
    from airlock.pipeline.evaluation import Evaluation
    from airlock.pipeline.mappings import Action
    from airlock.pipeline.policies import Verdict
    from airlock.pipeline.run_record import run_row

    token = "sk_live_" + "a1B2c3D4e5F6g7H8"
    action = Action(f"run_{token}", f"acme {token}", "write", "high", "t", {}, None)
    document = {"method": "GUARD", "scheme": "guard", "host": "guard", "port": 0, "path": "/",
                "query": {}, "headers": {}, "body": {}, "agent": "a", "body_size": 0}  # fmt: skip
    row = run_row("r1", "i", document, Evaluation(action, Verdict("ALLOW", "ok", ())), 1.0)
    assert token not in row.provider + row.action + row.host


def test_the_record_cuts_overlong_names_before_redacting_them() -> None:
    """What mapping refuses (a 900 KB name) may still reach the record another way (a Guard
    API tool's target rendered from its arguments): run_row cuts it first, as redacting it is
    the shared decider's time, and where no part of a token is left."""
    from airlock.pipeline.evaluation import Evaluation
    from airlock.pipeline.mappings import MAX_NAME, MAX_TARGET, Action
    from airlock.pipeline.policies import Verdict
    from airlock.pipeline.run_record import run_row

    token = "sk_live_" + "a1B2c3D4e5F6g7H8"
    straddling = "x/" * ((MAX_TARGET - 10) // 2) + token + "y" * 900_000
    action = Action("mcp.github." + "a" * 900_000, "p" * 900_000, "tool", "high", straddling,
                    {}, None)  # fmt: skip
    document = {"method": "GUARD", "scheme": "guard", "host": "guard", "port": 0, "path": "/",
                "query": {}, "headers": {}, "body": {}, "agent": "a", "body_size": 0}  # fmt: skip
    row = run_row("r1", "i", document, Evaluation(action, Verdict("ALLOW", "ok", ())), 1.0)
    assert row.action == "mcp.github.… [900011 characters]"
    assert row.provider == "… [900000 characters]" and len(row.provider) <= MAX_NAME
    assert row.target.endswith("x/… [902062 characters]") and len(row.target) <= MAX_TARGET + 30
    assert "sk_live" not in row.target


def test_user_info_in_a_host_header_is_redacted_where_it_is_stored_and_quoted() -> None:
    """`Host: admin:pw@api.example.com` (no `://` for the URL pattern to follow): refused, as
    it names another host, and neither the record's headers nor the reason keep the password."""
    from airlock.pipeline.evaluation import request_problem

    document = {"method": "GET", "scheme": "https", "host": "api.example.com", "port": 443,
                "path": "/", "query": {}, "body": None, "agent": "a",
                "headers": {"host": "admin:Hunter2-pw@api.example.com"},
                "authority": "admin:Hunter2-pw@api.example.com"}  # fmt: skip
    clean = redact_document(document)
    why = request_problem(document) or ""
    assert "does not name the host" in why
    assert "Hunter2" not in json.dumps(clean) + why
    assert clean["headers"]["host"] == f"{REDACTED}@api.example.com"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        # A secret's name after another field's name: the first field's value, read as text,
        # swallowed the second's name, and its value was kept.
        ("bad config: password: hunter2Secret", "bad config: password: "),
        ("RuntimeError: db_password: hunter2Secret", "RuntimeError: db_password: "),
        ("api_key : hunter2Secret (from env)", "api_key : "),
    ],
)
def test_a_secret_named_in_text_loses_its_value_after_a_colon(text: str, kept: str) -> None:
    redacted = redact_text(text)
    assert "hunter2Secret" not in redacted and redacted.startswith(kept + REDACTED)
    assert "hunter2Secret" not in redacted_prefix(text, 1000)


HOOK_SECRET = "Xy9SecretHookPart0Xy9SecretHookPart0"


@pytest.mark.parametrize(
    ("host", "kept", "after"),
    [
        ("hooks.slack.com", "/services/T0AB12CD/B0EF34GH/", ""),
        ("hooks.slack.com", "/workflows/T0AB12CD/A0EF34GH/4242/", ""),
        ("hooks.slack.com", "/triggers/T0AB12CD/4242/", ""),
        ("hooks.slack.com", "/services/xteam/", ""),  # not the usual ids: by its host
        ("discord.com", "/api/webhooks/123456789012345678/", ""),
        ("discord.com", "/api/v10/webhooks/1234567890123/", "/messages/1"),
        ("hooks.zapier.com", "/hooks/catch/123456/", "/"),
        ("acme.webhook.office.com", "/webhookb2/a@b/IncomingWebhook/", ""),
        ("maker.ifttt.com", "/trigger/deploy/with/key/", ""),
    ],
)
def test_a_webhook_whose_path_is_its_credential_loses_it_everywhere_the_path_is_kept(
    host: str, kept: str, after: str
) -> None:
    """The path is redacted with its host in view: in the record's path and request, in the
    params of a request no mapping knows (stored, and printed on the console), in URLs in
    text, and (where its shape says so without the host) in mitmproxy's log of a request line
    it could not parse."""
    import logging

    from airlock.pipeline.mappings import fallback_action
    from airlock.pipeline.redaction import RedactingFilter

    path = f"{kept}{HOOK_SECRET}{after}"
    document = {"method": "POST", "scheme": "https", "host": host, "port": 443, "path": path,
                "query": {}, "headers": {}, "body": {"text": "hi"}, "agent": "a"}  # fmt: skip
    stored = redact_document(document)
    assert stored["path"] == f"{kept}{REDACTED}{after}"
    assert redact_path(host, path) == stored["path"]
    assert fallback_action(document).params["path"] == stored["path"]
    assert HOOK_SECRET not in json.dumps(stored)
    said = redact_text(f"posted to https://{host}{path}")
    assert said == f"posted to https://{host}{stored['path']}"
    line = f"POST {path} HTTP/1.1 x"
    record = logging.LogRecord(
        "mitmproxy.proxy.server", logging.INFO, "", 0, "Bad HTTP request line: %r", (line,), None
    )
    RedactingFilter().filter(record)
    assert (HOOK_SECRET in record.getMessage()) == (kept == "/services/xteam/")


def test_paths_of_other_hosts_stay_readable() -> None:
    for host, path in [("api.stripe.com", "/v1/customers/cus_9s6XKzkNRiz8i3/sources"),
                       ("api.github.com", "/repos/acme/services/hooks/42"),
                       ("slack.com", "/api/chat.postMessage")]:  # fmt: skip
        assert redact_path(host, path) == path


SECRET_IN = "Pl4nted-Secret-Value"


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"password": SECRET_IN, "user": "ann"}),
        json.dumps({"payload": json.dumps({"client_secret": SECRET_IN})}),  # twice nested
        f'config: {{"apiKey": "{SECRET_IN}"}}',
        f'{{"settings": "{{\\"db_password\\": \\"{SECRET_IN}\\"}}"}} and more',  # escaped
        f"DB_PASSWORD = {SECRET_IN}",
        f"[default]\naws_secret_access_key = {SECRET_IN}\n",
        f"Api-Key: {SECRET_IN}",
        f'curl -s -H "X-Api-Key: {SECRET_IN}" https://api.example.com/v1/things',
        f'curl -H "Authorization: Bearer {SECRET_IN}" https://x',
        f"mysql -uroot -p{SECRET_IN} -e 'select 1'",
        f"psql --password {SECRET_IN}",
        f"curl -u admin:{SECRET_IN} https://x",
        f"docker login -u bot -p {SECRET_IN} registry.example.com",
        f"deploy --api-key '{SECRET_IN}' --env prod",
        f"redis-cli -h cache -a {SECRET_IN} ping",
        f"vault login {SECRET_IN}",
        f"aws configure set aws_secret_access_key {SECRET_IN}",
        f'export GITHUB_TOKEN="{SECRET_IN}"',
        f"kubectl create secret generic db --from-literal=password={SECRET_IN}",
        f'<Param name="password" value="{SECRET_IN}"/>',
        f"Server=db;Uid=app;Pwd={SECRET_IN};",
        f"redis://:{SECRET_IN}@cache:6379",
        f"https://a.blob.core.windows.net/c/b?sv=2021&sig={SECRET_IN}",
        f"bearer {SECRET_IN}",
        f"https%253A%252F%252Fx%252F%253Ftoken%253D{SECRET_IN}",
        f"Created key. Your new API key is {SECRET_IN}",
        f"created user; initial password is {SECRET_IN}",
        f"url=https://x.example/cb?pw={SECRET_IN}",  # a name after a value without a secret
    ],
)
def test_a_secret_named_inside_a_string_is_redacted(text: str) -> None:
    """Strings inside JSON values (a Guard API call's Bash command or file content, an MCP
    tool's arguments, a JSON body's fields) and text (an outcome's detail, a tool's output, a
    log line) lose the values of names that say they hold a secret, not only token shapes."""
    for kept in (
        redact_value({"command": text}),
        redact_value([text]),
        redact_body(text),
        redacted_prefix(text, 4000),
        redact_text(text),
    ):
        assert SECRET_IN not in json.dumps(kept), kept


def test_json_kept_in_a_string_is_rewritten_only_when_something_in_it_went() -> None:
    config = json.dumps({"database": {"host": "db", "password": SECRET_IN}, "port": 5432}, indent=2)
    clean = redact_value({"content": config})["content"]
    assert json.loads(clean) == {"database": {"host": "db", "password": REDACTED}, "port": 5432}
    plain = json.dumps({"host": "db", "retries": [1, 2]}, indent=2)
    assert redact_value({"content": plain}) == {"content": plain}  # byte for byte
    assert redact_value({"note": "[not json"}) == {"note": "[not json"}


def test_json_kept_in_a_string_is_read_no_deeper_than_a_body() -> None:
    """Levels inside a string count with those around it: past a body's depth the string is
    redacted as text, still by name."""
    inner = json.dumps({"password": SECRET_IN})
    for _ in range(3):
        inner = json.dumps({"wrapped": inner})  # JSON in a string in a string in a string
    assert SECRET_IN not in json.dumps(redact_value({"payload": inner}))
    deep = "[" * 70 + json.dumps({"password": SECRET_IN}) + "]" * 70
    assert SECRET_IN not in json.dumps(redact_value({"payload": deep}))
    held: Any = {"payload": json.dumps([[[{"password": SECRET_IN}]]])}
    for _ in range(62):
        held = {"level": held}
    assert SECRET_IN not in json.dumps(redact_value(held))


@pytest.mark.parametrize(
    ("pairs", "secret"),
    [
        ({"environment": [{"name": "DB_PASSWORD", "value": SECRET_IN}]}, True),  # ECS
        ({"headers": [{"name": "Authorization", "value": SECRET_IN}]}, True),  # HAR
        ({"Entry": {"Key": "db_password", "Value": SECRET_IN}}, True),  # XML Key/Value
        ({"Parameters": [{"ParameterKey": "DbPassword", "ParameterValue": SECRET_IN}]}, True),
        ({"env": [{"name": "STRIPE_KEY", "value": SECRET_IN}]}, True),  # an env var's _KEY
        ({"environment": [{"name": "LOG_LEVEL", "value": "debug"}]}, False),
        ({"Tags": [{"Key": "team", "Value": "payments"}]}, False),
    ],
)
def test_the_value_beside_a_secret_name_is_redacted(pairs: dict[str, Any], secret: bool) -> None:
    clean = json.dumps(redact_value(pairs))
    assert (SECRET_IN not in clean and REDACTED in clean) if secret else clean == json.dumps(pairs)


def test_an_oauth_code_is_a_secret_in_a_token_request_and_a_code_elsewhere_is_not() -> None:
    token_request = {"grant_type": "authorization_code", "code": "4/0AX" + SECRET_IN,
                     "code_verifier": SECRET_IN, "redirect_uri": "https://app/cb"}  # fmt: skip
    assert redact_value(token_request) == {**token_request, "code": REDACTED,
                                           "code_verifier": REDACTED}  # fmt: skip
    kept = [{"code": "print('hello')", "language": "python"}, {"error": {"code": "card_declined"}}]
    assert redact_value(kept) == kept


def test_new_credential_headers_and_names_are_redacted() -> None:
    import base64

    registry = base64.b64encode(json.dumps({"username": "u", "password": SECRET_IN}).encode())
    headers = {
        "x-authorization": SECRET_IN, "authentication": SECRET_IN, "x-auth": SECRET_IN,
        "x-forwarded-authorization": f"Bearer {SECRET_IN}", "cookie2": f"sid={SECRET_IN}",
        "x-session": SECRET_IN, "x-registry-auth": registry.decode(),
        "x-sentry-auth": f"Sentry sentry_version=7, sentry_key={SECRET_IN}",
    }  # fmt: skip
    assert SECRET_IN not in json.dumps(redact_headers(headers))
    fields = {"pw": SECRET_IN, "passcode": SECRET_IN, "pin_code": SECRET_IN, "pin": SECRET_IN}
    assert set(redact_value(fields).values()) == {REDACTED}
    assert redact_text(f"sentry_key={SECRET_IN}") == f"sentry_key={REDACTED}"


@pytest.mark.parametrize(
    "text",
    [
        "mkdir -p /srv/app && cp -p a b",
        "find . -name '*.py' -print -prune",
        "ssh -p 2222 deploy@host",
        "psql -U app -d orders -c 'select 1'",
        "the password is required",
        "Error: token is expired.",
        "git log --author=ann --since=2.weeks",
        "docker run -p 8080:80 nginx",
        '{"bindings_version": "16.0.0", "lang": "python"}',
        "max_tokens: 4096, key: photos/a.jpg, partition_key=p1",
    ],
)
def test_commands_and_messages_without_secrets_stay_readable(text: str) -> None:
    assert redact_text(text) == text


def test_redacting_twice_changes_nothing_more() -> None:
    for text in (f"password: {SECRET_IN}", f'{{"token": "{SECRET_IN}"}}', f"curl -u a:{SECRET_IN}",
                 f"Authorization: Bearer {SECRET_IN}", f"password={SECRET_IN}&x=1"):  # fmt: skip
        once = redact_text(text)
        assert redact_text(once) == once


def test_a_tool_result_that_tells_a_new_key_keeps_it_out_of_the_outcome() -> None:
    """An MCP tool's answer is stored as its outcome: a key it says, a password in JSON kept in
    a string, an INI line, all go."""
    from airlock.pipeline.mcp import tool_outcome

    said = (
        f"Created key. Your new API key is {SECRET_IN}1\n"
        f'config: {{"settings": "{{\\"db_password\\": \\"{SECRET_IN}2\\"}}"}}\n'
        f"aws_secret_access_key = {SECRET_IN}3"
    )
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "create_key", "arguments": {}}}  # fmt: skip
    result = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": said}]}}
    kept = tool_outcome(request, json.dumps(result).encode(), "application/json")
    assert kept is not None and "Created key" in kept["text"]
    assert SECRET_IN not in json.dumps(kept)


def test_names_that_only_say_which_secret_or_which_page_are_kept() -> None:
    """A reviewer deciding a DeleteSecret must see which secret; pagination and idempotency
    tokens are no credentials. What holds a secret under a like name still goes."""
    request = {
        "SecretId": "prod/db-password", "SecretName": "prod/db-password",
        "NextToken": "eyJvZmZzZXQiOjUwfQ", "IdempotencyToken": "3f2a", "SecretString": "hunter2!x",
        "SessionToken": "FwoGZXIvYXdzEJr", "ClientSecretId": "cs-7", "client_secret": "shh-7f3a",
    }  # fmt: skip
    redacted = redact_value(request)
    kept = ("SecretId", "SecretName", "NextToken", "IdempotencyToken")
    assert {name: redacted[name] for name in kept} == {name: request[name] for name in kept}
    assert all(redacted[name] == REDACTED for name in request if name not in kept)


def test_a_kept_name_with_anything_after_it_is_a_name_like_any_other() -> None:
    """Only the whole name is kept: `NextToken\\n` (a regex's `$` matches before a newline) is
    still a secret's name."""
    from airlock.pipeline.redaction import is_secret_name

    assert not is_secret_name("NextToken") and not is_secret_name("SecretId")
    assert is_secret_name("NextToken\n") and is_secret_name("SecretId\n")


SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf"
IAM_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Action": ["secretsmanager:GetSecretValue", "secretsmanager:Describe*", "kms:Decrypt"],
        "Resource": ["arn:aws:secretsmanager:*:123456789012:secret:prod/*", SECRET_ARN],
        "Condition": {"StringEquals": {"secretsmanager:ResourceTag/env": "prod",
                                       "secretsmanager:SecretId": "prod/db"}},
    }],
}  # fmt: skip


@pytest.mark.parametrize("as_text", [True, False])
def test_a_reviewer_sees_which_permission_on_which_secret_an_iam_policy_grants(
    as_text: bool,
) -> None:
    """`secretsmanager:` is AWS's service prefix, not a field named like a secret: a reviewer
    deciding a PutRolePolicy must see the actions, ARNs and condition keys it names."""
    document = json.dumps(IAM_POLICY) if as_text else IAM_POLICY
    request = {"PolicyDocument": document, "SecretId": SECRET_ARN}
    assert redact_value(request) == request
    assert redact_text(f"deleting {SECRET_ARN} now") == f"deleting {SECRET_ARN} now"


@pytest.mark.parametrize(
    "text",
    [
        "secretsmanager: hunter2hunter2",  # spaced: a field of that name
        "secretsmanager=hunter2hunter2",
        "secretsmanager:sk_live_abcdefghijklmnop",  # a known token's shape is never kept
        "secretsmanager:AKIAABCDEFGHIJKLMNOP",
        f"{SECRET_ARN}?token=abcdefghijk",  # no secret's name
        "secretsmanager:hunter2;password=abcdefgh",
        "secretsmanager:wJalrXUtnFEMI/K7MDENGbPxRfiCYEXAMPLEKEY",  # no action, no condition key
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:aGVsbG8+d29ybGQ=",  # base64
        "SECRETSMANAGER:hunter2hunter2",  # not as AWS writes its prefix
    ],
)
def test_what_only_looks_like_a_secrets_manager_name_still_goes(text: str) -> None:
    redacted = redact_text(text)
    assert REDACTED in redacted
    assert not any(secret in redacted for secret in ("hunter2", "abcdefgh", "ABCDEFGH"))


@pytest.mark.parametrize("name", ["secretsmanager:token", "secretsmanager:Value"])
def test_only_secrets_managers_own_condition_keys_are_kept_as_names(name: str) -> None:
    assert list(redact_value({name: "abcdefghijk"}).values()) == [REDACTED]
    pair = {"ParameterKey": name, "ParameterValue": "abcdefghijk"}
    assert redact_value(pair)["ParameterValue"] == REDACTED


STS_ANSWER = (
    '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
    "<Credentials>\n  <AccessKeyId>ASIAREVIEWAKID00001Z</AccessKeyId>\n"
    "  <SecretAccessKey>wJalrXUtnFEMIxK7MDENGbPxRfiCYzEXAMPLE</SecretAccessKey>\n"
    "  <SessionToken>IQoJb3JpZ2luX2VjEXAMPLEsessionPart</SessionToken>\n"
    "  <Expiration>2026-12-06T18:00:00Z</Expiration>\n</Credentials>"
    "<sts:Password>hunter2Secret</sts:Password>"
    '<db_password kind="plain">hunter2Secret</db_password>'
    "<Password><![CDATA[hunter2Secret <&>]]></Password><NextToken>page-2</NextToken>"
    "<Key>photos/2026.jpg</Key><Password/><Token></Token></AssumeRoleResult></AssumeRoleResponse>"
)


def test_xml_kept_as_text_loses_the_text_of_elements_named_like_secrets() -> None:
    """An STS or IAM answer as a tool's output or an outcome's detail, an XML body that does not
    parse: an element whose local name says it holds a secret loses its text (or CDATA); an
    element that holds only other elements, an empty one, and names that only say which page
    or which object stay as they are."""
    from airlock.pipeline.mcp import tool_outcome

    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "assume_role", "arguments": {}}}  # fmt: skip
    result = {"jsonrpc": "2.0", "id": 1,
              "result": {"content": [{"type": "text", "text": STS_ANSWER}]}}  # fmt: skip
    outcome = tool_outcome(request, json.dumps(result).encode(), "application/json")
    assert outcome is not None
    for kept in (
        outcome["text"],
        redacted_prefix(STS_ANSWER, 2000),
        redact_body(STS_ANSWER + "<unterminated"),
    ):
        for secret in ("ASIAREVIEW", "wJalrXUtn", "IQoJb3JpZ2lu", "hunter2Secret"):
            assert secret not in kept
        assert f"<SecretAccessKey>{REDACTED}</SecretAccessKey>" in kept
        assert f"<sts:Password>{REDACTED}</sts:Password>" in kept
        assert f'<db_password kind="plain">{REDACTED}</db_password>' in kept
        assert f"<Password>{REDACTED}</Password>" in kept
        assert "<Credentials>\n  <AccessKeyId>" in kept
        assert "<Expiration>2026-12-06T18:00:00Z</Expiration>" in kept
        assert (
            "<NextToken>page-2</NextToken><Key>photos/2026.jpg</Key><Password/><Token></Token>"
            in kept
        )
    assert redact_text("<Password><![CDATA[hunter2Secret") == f"<Password>{REDACTED}"
