"""No single request can stall the gate: what Airlock does to a request (build its document,
map, decide, redact) takes time linear in the request's size, whatever it holds.

Each input is a unit repeated to two lengths eight times apart; linear work takes about eight
times as long on the longer, work growing with the square of the length sixty-four times. The
units are the literal starts of the patterns on the request path (a regex run from each
occurrence of its start over the rest of the text is what made the time grow), and the shapes
that once made it grow (the note at each)."""

from __future__ import annotations

import contextlib
import gzip
import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.test import tutils

from airlock.pipeline.document import Unreadable, _headers, build_document, decoded_body
from airlock.pipeline.evaluation import Config, evaluate
from airlock.pipeline.policies import BLOCK, load_policies
from airlock.pipeline.redaction import redact_body, redact_document, redact_value
from airlock.pipeline.run_record import MAX_STORED_ITEMS, run_row
from airlock.pipeline.yaml_source import ConfigError
from tests.helpers.proxy import PROJECT_ROOT

SMALL, LARGE = 16_384, 131_072
LINEAR = 24  # at most this many times longer for 8 times the text (the square: 64)
NOISE = 0.002  # seconds: below this on the long text, the ratio is noise

UNITS = [
    'name="a"\n',  # a multipart field name looked ahead over every following line (2 s, 40 KB)
    'name="',
    'Content-Disposition: form-data; name="password"\n',
    "password",  # `password[\w-]*=` scanned the rest of a run from each occurrence
    "secret",
    "api_key",
    "eyJ",  # JWTs, by Airlock's pattern and detect-secrets'
    "eyJaaaaaaaa.",
    "://",  # URL user info, and npm's detector
    "://a:b",
    "https://",
    "sk-",  # OpenAI's detector
    "sk_live_",
    "SG.aaaaaaaaaa.",
    "Bearer ",
    "token=",
    "-----BEGIN PRIVATE KEY-----",
    "Credential=",  # the shipped AWS mappings' region and service regexes
    "Credential=a/",
    "a" * 19 + " ",
    "AKIA",
    "xoxb-",
    "ghp_",
    "cloudant",
    "ibm_cloud_iam",
    "softlayer",
    "glpat-",
    "4111 ",
    "a: ",
    '"a":"',
    "'a':'",
    "a=",
    # names inside strings, values beside them, commands, phrases, webhook paths
    "password: ",
    'password:"',  # a quoted value that never closes
    '\\"password\\": \\"',  # JSON kept in a string, escaped
    "\\",
    "DB_PASSWORD = ",
    "Api-Key: ",
    "token%3D",
    "bearer ",
    'name="password" value=',
    "Pwd=",
    "mysql -p",
    "mysql ",
    "docker login -p ",
    "login ",
    "--password ",
    "-u a:",
    "redis-cli -a ",
    "configure set secret ",
    "Your new API key is ",
    "password is ",
    "://:",
    "/services/T0/B0/",
    "hooks.slack.com/",
    "/webhooks/12345/",
    "discord.com/api/webhooks/",
    "/hooks/catch/1/",
    "/IncomingWebhook/",
    '{"a": "{',  # JSON in a string that does not parse
    '{"password": "',
    "[",
    # XML elements named like secrets, kept as text: a start tag never closed, a value to the
    # next tag, a CDATA section never ended, a namespace prefix
    "<Password",
    "<Password ",
    "<Password>",
    "<Password>a",
    "<Password><![CDATA[",
    "<a:",
    "<a:Password>",
]


def _seconds(work: Callable[[str], Any], text: str) -> float:
    """CPU seconds of this thread, not the wall clock: on a loaded machine a 90 ms measure is
    preempted where a 3 ms one is not, which made linear work look superlinear (ratios of 30
    for 8 times the text at load 7 with wall time)."""
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        work(text)
        best = min(best, time.thread_time() - started)
    return best


def assert_linear(work: Callable[[str], Any], unit: str, attempts: int = 3) -> None:
    """Measured again when it looks superlinear: another process sharing the caches midway
    makes one measure look so; work that grows with the square does every time."""
    short_text, long_text = unit * (SMALL // len(unit) + 1), unit * (LARGE // len(unit) + 1)
    for _ in range(attempts):
        short, long = _seconds(work, short_text), _seconds(work, long_text)
        if long <= NOISE or long < LINEAR * short:
            return
    raise AssertionError(
        f"{unit!r}: {short * 1000:.1f} ms for {SMALL} characters, {long * 1000:.1f} ms for "
        f"{LARGE}: the time grows faster than the text"
    )


@pytest.mark.parametrize("unit", UNITS)
def test_redacting_a_text_body_takes_time_linear_in_its_length(unit: str) -> None:
    assert_linear(redact_body, unit)


@pytest.mark.parametrize("unit", UNITS)
def test_redacting_a_field_takes_time_linear_in_its_length(unit: str) -> None:
    assert_linear(lambda text: redact_value({"note": text, "password": text}), unit)


SHIPPED = Config.load(PROJECT_ROOT / "mappings", PROJECT_ROOT / "policies")


def _judged(method: bytes, host: bytes, path: bytes, headers: list[tuple[bytes, bytes]],
            body: bytes) -> None:  # fmt: skip
    """What the decider does to a request before it writes it: document, map and decide with
    the shipped configuration, redact."""
    request = tutils.treq(
        method=method, scheme=b"https", host=host, port=443, authority=b"", path=path,
        headers=headers, content=body,
    )  # fmt: skip
    document = build_document(request, "agent")
    evaluate(document, SHIPPED)
    redact_document(document)


_AWS = b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
REQUESTS: dict[str, Callable[[str], None]] = {
    "an AWS Authorization header": lambda text: _judged(
        b"POST",
        b"iam.amazonaws.com",
        b"/",
        [
            (b"authorization", _AWS + text.encode()),
            (b"content-type", b"application/x-www-form-urlencoded"),
        ],
        b"Action=ListUsers",
    ),
    "a JSON body field": lambda text: _judged(
        b"POST",
        b"api.openai.com",
        b"/v1/chat/completions",
        [(b"content-type", b"application/json")],
        json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode(),
    ),
    "a form body": lambda text: _judged(
        b"POST",
        b"api.stripe.com",
        b"/v1/charges",
        [(b"content-type", b"application/x-www-form-urlencoded")],
        b"amount=500&currency=usd&description=" + text.encode(),
    ),
    "a text body": lambda text: _judged(
        b"POST",
        b"api.example.com",
        b"/upload",
        [(b"content-type", b"text/plain")],
        text.encode(),
    ),
    "a multipart body": lambda text: _judged(
        b"POST",
        b"api.example.com",
        b"/upload",
        [(b"content-type", b"multipart/form-data; boundary=b")],
        b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\n' + text.encode() + b"\r\n--b--",
    ),
}


@pytest.mark.parametrize("place", REQUESTS)
@pytest.mark.parametrize(
    "unit", ["Credential=", "password", "://", 'name="a"\n', "eyJ", "sk-", "password: ", "mysql -p"]
)
def test_judging_a_request_takes_time_linear_in_its_size(place: str, unit: str) -> None:
    assert_linear(REQUESTS[place], unit)


def _rules(tmp_path: Path, text: str) -> Any:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "p.yaml").write_text(textwrap.dedent(text))
    return load_policies(folder)


def test_a_policy_regex_that_backtracks_takes_time_linear_in_the_value(tmp_path: Path) -> None:
    """`(a+)+$` in Python's re takes time doubling with each `a` before a mismatch; a rule a
    security team wrote so must not let one request stall the decider."""
    from tests.test_policies import action

    rules = _rules(tmp_path, """
        rules:
          - id: repeated
            when: {action: create_charge, params: {description: {regex: "(a+)+$"}}}
            decision: BLOCK
    """)  # fmt: skip

    def decide(text: str) -> None:
        rules.decide(action(description=text), "agent", (), 0, None)

    short = _seconds(decide, "a" * 16 + "!")
    long = _seconds(decide, "a" * 24 + "!")
    assert long < NOISE or long < LINEAR * short
    assert rules.decide(action(description="aaaa"), "agent", (), 0, None).decision == BLOCK


@pytest.mark.parametrize(
    ("pattern", "said"),
    [("(?=drop)", "lookarounds"), ("(a)\\\\1", "backreferences"), ("a{2000}", "1000")],
)
def test_a_regex_without_a_linear_time_match_is_a_load_error(
    tmp_path: Path, pattern: str, said: str
) -> None:
    with pytest.raises(ConfigError) as error:
        _rules(tmp_path, f"""
            rules:
              - id: r
                when: {{action: create_charge, params: {{description: {{regex: "{pattern}"}}}}}}
                decision: BLOCK
        """)  # fmt: skip
    assert "p.yaml:4" in str(error.value) and "RE2" in str(error.value) and said in str(error.value)


_EMPTY_GZIP_MEMBER = gzip.compress(b"", mtime=0)  # 20 bytes


def _gzip_members(text: str) -> None:
    """One member per 4 characters: 4,000 members and 32,000 (640 KB)."""
    with contextlib.suppress(Unreadable):
        decoded_body(_EMPTY_GZIP_MEMBER * (len(text) // 4), "gzip")


# Shapes whose work once grew faster than the request: the unit's characters are what is
# repeated (the note says what took the time).
SHAPES: dict[str, tuple[str, Callable[[str], Any]]] = {
    # a repeated header's values joined one by one: 50,000 fields took 10 s
    "repeated header fields": ("x" * 8, lambda text: _headers([("x-a", "v")] * len(text))),
    # zlib's unused_data copied the rest of the body for each gzip member: 1 MiB took 6.6 s
    "gzip members": ("x" * 4, _gzip_members),
    "query fields": ("a=1&", lambda text: _judged(
        b"GET", b"api.stripe.com", b"/v1/charges?" + text.encode(), [], b""
    )),
}  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES)
def test_reading_a_request_takes_time_linear_in_its_shape(shape: str) -> None:
    unit, work = SHAPES[shape]
    assert_linear(work, unit)


def test_a_record_keeps_and_redacts_only_what_it_stores() -> None:
    """An MCP call of 40,000 arguments: each was redacted (1.1 s), then all were stored."""
    arguments = {f"k{i}": f"value{i:07d}" for i in range(4 * MAX_STORED_ITEMS)}
    arguments["k1"] = "Bearer sk_live_" + "a" * 24
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "t", "arguments": arguments}}  # fmt: skip
    request = tutils.treq(
        method=b"POST", scheme=b"https", host=b"mcp.example.com", port=443, authority=b"",
        path=b"/mcp", headers=[(b"content-type", b"application/json")],
        content=json.dumps(call).encode(),
    )  # fmt: skip
    document = build_document(request, "agent")
    row = run_row("r", "i", document, evaluate(document, SHIPPED), 0.0)
    stored = row.params  # a tool call's params are its arguments
    assert len(stored) == MAX_STORED_ITEMS + 1 and "3000 more keys" in stored["…"]
    assert "sk_live_" not in json.dumps(row.params)
