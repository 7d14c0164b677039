from __future__ import annotations

import json

import pytest

from airlock.pipeline.redaction import (
    REDACTED,
    redact_body,
    redact_document,
    redact_headers,
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
    for a JSON body, a form body and an XML body, secrets in headers and the query string."""
    import json
    from urllib.parse import quote, urlencode

    from tests.secret_corpus import CORPUS

    headers = [(w.split(":", 1)[1], v) for _, w, v in CORPUS if w.startswith("header:")]
    query = urlencode([(w.split(":", 1)[1], v) for _, w, v in CORPUS if w.startswith("query:")])
    note = " and ".join(v for _, w, v in CORPUS if w == "text")
    url = next(v for _, w, v in CORPUS if w == "url")
    fields = {w.split(":", 1)[1]: v for _, w, v in CORPUS if w.startswith("json:")}
    body = json.dumps({**fields, "note": note, "callback": f"https://{url}@hooks.example.com/x"})
    form = "&".join(
        f"{quote(w.split(':', 1)[1], safe='[]')}={quote(v)}"
        for _, w, v in CORPUS
        if w.startswith("form:")
    )
    xml = next(v for _, w, v in CORPUS if w == "xml")
    xml_body = f"<Login><User>ops</User><Password>{xml}</Password></Login>"
    return [
        ("POST", f"/v1/things?{query}", headers, body.encode(), "application/json"),
        ("POST", "/v1/forms", headers, form.encode(), "application/x-www-form-urlencoded"),
        ("PUT", "/v1/config", headers, xml_body.encode(), "application/xml"),
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
