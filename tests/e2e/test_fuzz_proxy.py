"""End to end, fuzzed: whatever bytes an agent writes inside a tunnel, nothing reaches the upstream
without a committed ALLOW decision for that very request, and the proxy never fails with a
traceback on the way.

A seeded generator (AIRLOCK_FUZZ_SEED; AIRLOCK_FUZZ_COUNT cases per mode) writes malformed and
adversarial HTTP/1.1 requests as raw bytes through CONNECT + TLS, from a few concurrent clients,
on fresh and on reused tunnels: odd methods and versions, paths with bytes that are not UTF-8,
`..`, `//` and kilobytes of segments, duplicate and conflicting headers, encoded bodies that do or
do not decode, deep JSON, big bracketed forms, XML, folded (obs-fold) header lines, and framing
that lies (Content-Length too short or too long, Transfer-Encoding variants, pipelined and
smuggled requests). No chunked trailers: mitmproxy 11 fails on them before any hook
(test_gate_invariant.py's xfail).

Every request carries a token (an X-Fuzz-Id header and an `fz` query parameter) that ties what
the upstream received to the store's records and to the answers the clients read. The traffic is
sent once per mode (the shipped policies enforced, and in shadow mode) and each test checks one
property of it: what reached the upstream was recorded ALLOW for the same method and path, and
read by the upstream with no header the gate did not judge; every answer names the committed run
of its own request; proxy credentials are never forwarded; no traceback; a planted secret is
neither stored nor logged. A failure shows the bytes of the case to replay.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.client
import json
import os
import random
import re
import ssl
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import brotli
import pytest
import zstandard
from sqlalchemy import select

from airlock.console.standins import Received, Upstream
from airlock.pipeline.document import document_path, escape_undecodable
from airlock.pipeline.redaction import redact_text
from airlock.store.schema import Run, open_engine
from tests.e2e.test_gate_invariant import Answer, tunnel
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e

SEED = os.environ.get("AIRLOCK_FUZZ_SEED", "airlock-fuzz-1")
COUNT = int(os.environ.get("AIRLOCK_FUZZ_COUNT", "150"))  # cases per mode: ~300 in all
WORKERS = 6  # concurrent clients, each with its own tunnels
TIMEOUT = 5.0  # seconds a client waits for an answer (a decision takes milliseconds)
NEXT_TIMEOUT = 2.5  # for a second answer, which never comes if the proxy read it as a body
HOSTS = ("api.stripe.com", "api.example.com")  # routed to the local upstream by the fixture
OTHER_HOST = b"api.github.com"
SECRET = "sk_test_PlantedByTheFuzzer0000000000"
PROXY_CREDENTIALS = b"Basic " + base64.b64encode(b"fuzz-bot:fuzz-key-planted")
NOT_WHITESPACE = bytes(b for b in range(1, 256) if b not in b" \t\n\r\x0b\x0c")
ASCII = bytes(b for b in NOT_WHITESPACE if b < 0x80)  # UTF-8 as it is: judged, not refused

MODES = {
    # The shipped policies, enforced: some requests are blocked, some held (1 s, then 503).
    "enforce": ("--hold-timeout", "1"),
    # The shipped policies in shadow mode: everything judged and recorded, ALLOW forwarded.
    "shadow": ("--mode", "shadow"),
}


# --- the cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    host: str  # the CONNECT target
    data: bytes  # every byte written into the tunnel
    methods: list[str]  # one per request the data holds, to read each answer
    tokens: list[str]  # one per request the data holds
    framing: str
    body_kind: str
    reusable: bool  # well framed: may go on a tunnel used before, which is kept afterwards


def pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


STRIPE_PATHS = ["/v1/charges", "/v1/charges", "/v1/customers", "/v1/customers/cus_123",
                "/v1/refunds", "/v1/transfers", "/v1/payouts", "/v1/payment_intents",
                "/v1/charges/ch_1/refunds", "/v1/subscriptions/sub_1"]  # fmt: skip
EXAMPLE_PATHS = ["/", "/api/items", "/api/items/42", "/a/b/c", "/upload", "/v1/charges"]
DOTS = b"/.. /../.. /./ /. /%2e%2e /.%2E/ /..;".split()
PERCENTS = b"%FF %00 %2F %25 %C3%A9 %E2%80%AE %C0%AF %% %G1".split()
ODD_PATHS = [s.encode() for s in ("/\u00fc\u00f1\u00ef", "/\u202e", "/\U0001f600", "/\ufeff")]
ODD_PATHS += [b";jsessionid=1", b"\\..\\v1\\charges", b"/" + SECRET.encode()]


def fuzz_path(rng: random.Random, host: str) -> bytes:
    path = rng.choice(STRIPE_PATHS if host == "api.stripe.com" else EXAMPLE_PATHS).encode()
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        mutation = pick(rng, {"dots": 3, "slashes": 3, "percent": 4, "raw": 4, "long": 2, "odd": 3})
        if mutation == "slashes":
            path = path.replace(b"/", b"//", rng.randint(1, 3))
            continue
        if mutation == "dots":
            insert = rng.choice(DOTS)
        elif mutation == "percent":
            insert = b"".join(rng.choice(PERCENTS) for _ in range(rng.randint(1, 4)))
        elif mutation == "raw":
            alphabet = NOT_WHITESPACE if rng.random() < 0.2 else ASCII
            insert = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        elif mutation == "long":
            segment = rng.choice([b"/a", b"/segment", b"/%41", b"/..", b"/x" * 10])
            insert = segment * (rng.randint(500, 6000) // len(segment))
        else:
            insert = rng.choice(ODD_PATHS)
        at = rng.randrange(len(path) + 1)
        path = path[:at] + insert + path[at:]
    return path


QUERY_KEYS = [*b"a expand[] metadata[k] limit a%00b %FF items[0][price] api_key fz".split(), b""]
QUERY_KEYS += [SECRET.encode()]  # a bare `?sk_test_...`: a name that is itself the secret
QUERY_VALUES = [*b"1 %FF %FF%FE %C3%A9 \xc3\xa9 a=b -1 %26fz%3Dforged".split(), b"", b"9" * 40]
QUERY_VALUES += [SECRET.encode()]


def fuzz_query(rng: random.Random, token: str) -> bytes:
    pairs = [b"fz=" + token.encode()]
    for _ in range(rng.choice([0, 0, 1, 2, 5, 40])):
        key = rng.choice([*QUERY_KEYS, b"x" * 300])
        value = b"forged" if key == b"fz" else rng.choice(QUERY_VALUES)  # a second `fz`
        if rng.random() < 0.02:
            value = b"\xff\xfe"  # not UTF-8: refused, whatever else the request says
        pairs.insert(rng.randrange(len(pairs) + 1), key + b"=" + value)
    return b"&".join(pairs)


def request_target(rng: random.Random, host: str, token: str) -> bytes:
    path, query = fuzz_path(rng, host), fuzz_query(rng, token)
    form = pick(rng, {"origin": 85, "absolute": 4, "absolute-other": 3, "asterisk": 2,
                      "no-slash": 2, "fragment": 3, "no-query": 1})  # fmt: skip
    if form == "absolute":
        authority = rng.choice([host.encode(), host.upper().encode(), host.encode() + b":443"])
        return b"https://" + authority + path + b"?" + query
    if form == "absolute-other":
        return b"https://" + OTHER_HOST + path + b"?" + query
    if form == "asterisk":
        return b"*"
    if form == "no-slash":
        return path.lstrip(b"/") + b"?" + query
    if form == "fragment":
        return path + b"?" + query + b"#frag" + rng.choice([b"", b"?x=1", b"/../.."])
    if form == "no-query":
        return path
    return path + b"?" + query


AMOUNTS = [50, 500, 99_999, 100_000, 999_999, 1_000_000, 10**30, -1, 0, 1e20, "500", "1000000",
           None, True, "abc", [1, 2], {"a": 1}]  # fmt: skip
ODD_JSON = [b'{"amount": NaN}', b'{"amount": Infinity}', b'{"a": 1', b"[" * 5000, b"null",
            b'{"amount": 5, "amount": 5000000}', b'{"a": "\\ud800"}', b"\xef\xbb\xbf{}",
            b'{"amount": 1e999}', b'"string"', b'{"\\u0000": 1}', b"{}" * 100]  # fmt: skip


def json_body(rng: random.Random) -> bytes:
    kind = pick(rng, {"charge": 6, "deep": 3, "odd": 3, "big-array": 1, "secret": 2})
    if kind == "charge":
        currency = rng.choice(["usd", "eur", "", 1])
        pad = "v" * rng.randint(0, 5000)
        return json.dumps(
            {"amount": rng.choice(AMOUNTS), "currency": currency, "metadata": {"k": pad}}
        ).encode()
    if kind == "deep":
        depth = rng.choice([10, 63, 64, 65, 66, 200, 3000, 100_000])
        if rng.random() < 0.5:
            return b"[" * depth + b"]" * depth
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "odd":
        return rng.choice(ODD_JSON)
    if kind == "big-array":
        return json.dumps(list(range(rng.randint(1000, 60_000)))).encode()
    secret = {"amount": 500, "currency": "usd", "api_key": SECRET, "note": f"token={SECRET}"}
    return json.dumps(secret).encode()


FORM_KEYS = (
    b"items[0][price] items[][qty] a[b][c] a[] a[b a]b[ items[99999999] items[-1] x.1.y "
    b"Tags.member.1.Key [] a[[b]] %5B%5D amount"
).split()
FORM_VALUES = [*b"1 %FF \xff a%26b=c".split(), b""]


def form_body(rng: random.Random) -> bytes:
    kind = pick(rng, {"charge": 5, "brackets": 4, "many": 2, "deep": 2, "secret": 2})
    if kind == "charge":
        amount = rng.choice(AMOUNTS)
        return f"amount={amount}&currency=usd&metadata[order]=1&expand[]=customer".encode()
    if kind == "brackets":
        return b"&".join(
            rng.choice(FORM_KEYS) + b"=" + rng.choice(FORM_VALUES)
            for _ in range(rng.randint(1, 60))
        )
    if kind == "many":
        count = rng.choice([500, 5000, 10_000, 10_001, 20_000])
        return b"&".join(b"items[%d][k]=v" % i for i in range(count))
    if kind == "deep":
        return b"a" + b"[x]" * rng.choice([10, 64, 65, 500]) + b"=1"
    return f"amount=500&currency=usd&password={SECRET}&card[number]=4242424242424242".encode()


XML_BODIES = [
    b"<Delete><Object><Key>a</Key></Object><Object><Key>b</Key></Object></Delete>",
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><a>&x;&x;</a>',
    b'<!DOCTYPE l [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;&l;">]><a>&l2;</a>',
    b"<a><b>unclosed</a>",
    b'<a xmlns="urn:x"><x:b xmlns:x="urn:y">1</x:b></a>',
    b"<a>" + SECRET.encode() + b"</a>",
    b"<\xff/>",
]


def fuzz_body(rng: random.Random) -> tuple[str, bytes]:
    kind = pick(rng, {"none": 22, "bytes": 12, "json": 22, "form": 16, "xml": 8, "text": 6,
                      "multipart": 2, "big": 1})  # fmt: skip
    if kind == "none":
        return kind, b""
    if kind == "bytes":
        return kind, rng.randbytes(rng.choice([1, 10, 200, 2000, 20_000]))
    if kind == "json":
        return kind, json_body(rng)
    if kind == "form":
        return kind, form_body(rng)
    if kind == "xml":
        depth = rng.choice([3, 64, 65, 1000])
        return kind, rng.choice([*XML_BODIES, b"<a>" * depth + b"x" + b"</a>" * depth])
    if kind == "text":
        return kind, rng.choice([b"hello", b"token=" + SECRET.encode(), b"\0" * 100, b"\r\n" * 50])
    if kind == "multipart":
        return kind, b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\n500\r\n--xyz--\r\n'
    return kind, json.dumps({"amount": 5, "pad": "x" * (1_100_000 + rng.randrange(1000))}).encode()


CONTENT_TYPES = {"json": b"application/json", "form": b"application/x-www-form-urlencoded",
                 "xml": b"application/xml", "text": b"text/plain",
                 "multipart": b"multipart/form-data; boundary=xyz"}  # fmt: skip
ODD_CONTENT_TYPES = [
    *b"application/vnd.api+json text/xml a/b/c application/x-amz-json-1.0 APPLICATION/JSON".split(),
    b"application/json; charset=utf-16", b"application/x-www-form-urlencoded;", b"", b"\xff/\xfe",
]  # fmt: skip
ENCODINGS = [*b"gzip deflate br zstd identity bogus x-gzip GZIP deflate-raw".split(), b"gzip, br"]


def gzipped(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=1, mtime=0)  # the same bytes at every run


ENCODERS: dict[bytes, Callable[[bytes], bytes]] = {
    b"gzip": gzipped, b"x-gzip": gzipped, b"GZIP": gzipped,
    b"deflate": zlib.compress, b"br": brotli.compress, b"zstd": zstandard.compress,
}  # fmt: skip


def encode_body(rng: random.Random, body: bytes) -> tuple[bytes | None, bytes]:
    """(Content-Encoding, body): mostly none; else encoded as it says, or not at all."""
    if rng.random() < 0.75:
        return None, body
    name = rng.choice(ENCODINGS)
    if rng.random() < 0.25:
        return name, body  # says it is encoded, is not
    if rng.random() < 0.05:  # a small bomb: 24 MB of zeros in ~24 KB
        return b"gzip", gzipped(b"\0" * 24_000_000)
    if name == b"deflate-raw":
        compressor = zlib.compressobj(wbits=-15)
        return b"deflate", compressor.compress(body) + compressor.flush()
    encoder = ENCODERS.get(name)
    return name, encoder(body) if encoder else body


def host_headers(rng: random.Random, host: str) -> list[tuple[bytes, bytes]]:
    name = rng.choice([b"Host", b"Host", b"host", b"HOST"])
    proper = host.encode()
    variants = {
        "proper": [proper], "upper": [proper.upper()], "port": [proper + b":443"],
        "dot": [proper + b"."], "missing": [], "twice": [proper, proper],
        "conflict": [proper, OTHER_HOST], "other": [OTHER_HOST], "empty": [b""],
        "odd-port": [proper + b":8443"], "bad-port": [proper + b":abc"],
        "userinfo": [OTHER_HOST + b"@" + proper], "userinfo-after": [proper + b"@evil.test"],
        "ipv6": [b"[::1]"], "list": [proper + b", " + OTHER_HOST], "nul": [proper + b"\0.x.test"],
    }  # fmt: skip
    weights = dict.fromkeys(variants, 2) | {"proper": 70, "missing": 4, "other": 3}
    return [(name, value) for value in variants[pick(rng, weights)]]


def odd_headers(rng: random.Random, token: str) -> list[tuple[bytes, bytes]]:
    choices: list[list[tuple[bytes, bytes]]] = [
        [(b"Connection", b"close")],
        [(b"Connection", b"keep-alive, Upgrade")],
        [(b"Upgrade", b"h2c"), (b"Connection", b"Upgrade, HTTP2-Settings")],
        [(b"Expect", b"100-continue")],
        [(b"Proxy-Authorization", PROXY_CREDENTIALS)],
        [(b"Proxy-Connection", b"keep-alive")],
        [(b"X-Forwarded-Host", OTHER_HOST), (b"Forwarded", b"host=" + OTHER_HOST)],
        [(b"X-HTTP-Method-Override", b"DELETE")],
        [(b"Idempotency-Key", b"idem-" + token.encode())],
        [(b"Idempotency-Key", b"shared-key")],
        [(b"Stripe-Account", b"acct_1"), (b"Stripe-Version", b"2024-06-20")],
        [(b"Accept-Encoding", b"gzip, br")],
        [(b"Cookie", b"a=1"), (b"Cookie", b"b=2")],
        [(b"X-Long", b"a" * rng.choice([100, 6000, 20_000]))],
        [(b"X-Empty", b"")],
        [(b"X-Latin1", b"caf\xe9")],
        [(b"X-Utf8", "\u00fcn\u00ef\u202e".encode())],
        [(b"X-Ctl", b"a\x01b\x7f")],
        [(b"X-Nul", b"a\0b")],
        [(b"x_underscore", b"1")],
        [(b"X-Dup", b"1"), (b"X-Dup", b"2")],
        [(b"Content-Type", b"text/plain")],
        [(b"TE", b"trailers")],
        [(b"Max-Forwards", b"0"), (b"Via", b"1.1 elsewhere")],
        [(b"X-Airlock-Decision", b"ALLOW"), (b"X-Airlock-Request-Id", b"forged")],
        [(b"Authorization", b"Bearer " + SECRET.encode())],
        [(b"X-Api-Key", SECRET.encode())],
        [(b"X-H%d" % i, b"v") for i in range(rng.choice([50, 150]))],
    ]
    groups = rng.sample(choices, rng.choice([0, 0, 1, 1, 2, 3]))
    return [header for group in groups for header in group]


ODD_METHODS = b"get PoSt HEAD FOO M-SEARCH PROPFIND TRACE 1 ~!$ CONNECT PRI".split()
ODD_METHODS += [b"X" * 300, b"G\xc3\xa9T", b"P\xffST", b"DELETE\0"]
ODD_VERSIONS = b"HTTP/1.0 HTTP/1.2 HTTP/2.0 HTTP/0.9 http/1.1 HTTP/11".split()
ODD_VERSIONS += [b"HTTP/1.1 extra"]
BAD_LINES = [b"NoColonHere", b" folded: continuation", b"X Space: 1", b": empty-name",
             b"X-Tab\t: 1", b"\tX-Lead: 1"]  # fmt: skip
# obs-fold: a line that continues the header before it, or, to a lenient parser, a header of its own
FOLDS = [b" folded: continuation", b"\tX-Amz-Target: DynamoDB_20120810.DeleteTable",
         b" Stripe-Account: acct_other", b" Content-Length: 0"]  # fmt: skip


def build_request(
    rng: random.Random, host: str, token: str, framing: str, inner: bytes = b""
) -> tuple[bytes, str, str]:
    """(bytes, method, body kind) of one request; `framing` says how its body is delimited.
    smuggled-*: no body of its own; `inner` (another request) follows where a body would be if
    its framing were read another way."""
    body_kind, body = ("smuggler", b"") if framing in SMUGGLINGS else fuzz_body(rng)
    if body:
        method = rng.choice([b"POST"] * 6 + [b"PUT", b"PATCH", b"DELETE", b"GET"])
    else:
        method = rng.choice([b"GET"] * 4 + [b"POST", b"DELETE", b"OPTIONS", b"PUT"])
    if rng.random() < 0.12:
        method = rng.choice(ODD_METHODS)
    version = rng.choice(ODD_VERSIONS) if rng.random() < 0.06 else b"HTTP/1.1"

    headers = host_headers(rng, host)
    headers.append((rng.choice([b"X-Fuzz-Id", b"x-fuzz-id", b"X-FUZZ-ID"]), token.encode()))
    if body or rng.random() < 0.1:
        if rng.random() < 0.7:
            content_type = CONTENT_TYPES.get(body_kind)
        else:
            content_type = rng.choice([None, *ODD_CONTENT_TYPES])
        if content_type is not None:
            headers.append((b"Content-Type", content_type))
    encoding, body = encode_body(rng, body) if body else (None, body)
    if encoding is not None:
        headers.append((b"Content-Encoding", encoding))
    headers += odd_headers(rng, token)
    if rng.random() < 0.2:
        rng.shuffle(headers)

    lines = [method + b" " + request_target(rng, host, token) + b" " + version]
    lines += [name + b": " + value for name, value in headers]
    lines += framing_headers(rng, framing, body, inner)
    if rng.random() < 0.04:
        lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(BAD_LINES))
    if rng.random() < 0.04:  # last, after any Content-Length: a folded one would win
        lines += [b"X-Note: a", rng.choice(FOLDS)]
    newline = b"\n" if rng.random() < 0.03 else b"\r\n"
    head = newline.join(lines) + newline + newline
    return head + framed_body(rng, framing, body, inner), method.decode("latin-1"), body_kind


# framing: (the headers of a request without a body, what follows them before the inner request)
SMUGGLINGS: dict[str, tuple[list[bytes], bytes]] = {
    "smuggled-none": ([], b""),
    "smuggled-zero-length": ([b"Content-Length: 0"], b""),
    "smuggled-chunked-end": ([b"Transfer-Encoding: chunked"], b"0\r\n\r\n"),
    "smuggled-te-and-length": ([b"Transfer-Encoding: chunked", b"Content-Length: %(inner)d"],
                               b"0\r\n\r\n"),
    "smuggled-two-lengths": ([b"Content-Length: 0", b"Content-Length: %(inner)d"], b""),
    "smuggled-odd-te": ([b"Transfer-Encoding: xchunked", b"Content-Length: %(inner)d"], b""),
    "smuggled-te-space": ([b"Transfer-Encoding : chunked", b"Content-Length: %(inner)d"],
                          b"0\r\n\r\n"),
    "smuggled-length-covers": ([b"Content-Length: %(inner)d"], b""),
    "smuggled-folded-length": ([b"Content-Length: %(inner)d", b"X-Note: a", b" Content-Length: 0"],
                               b""),
}  # fmt: skip
TRANSFER_ENCODINGS = [*b"identity xchunked chunked,chunked chunk".split(), b"chunked ",
                      b"gzip, chunked", b"chunked, identity", b"\tchunked"]  # fmt: skip


def framing_headers(rng: random.Random, framing: str, body: bytes, inner: bytes) -> list[bytes]:
    size = len(body)
    if framing in SMUGGLINGS:
        headers, prefix = SMUGGLINGS[framing]
        return [header % {b"inner": len(prefix) + len(inner)} for header in headers]
    if framing == "length":
        return [b"Content-Length: %d" % size] if body or rng.random() < 0.5 else []
    if framing == "none":
        return []
    if framing == "chunked":
        return [rng.choice([b"Transfer-Encoding: chunked", b"transfer-encoding: Chunked"])]
    if framing == "transfer-encoding":
        return [b"Transfer-Encoding: " + rng.choice(TRANSFER_ENCODINGS)]
    if framing == "te-and-length":
        return [b"Transfer-Encoding: chunked", b"Content-Length: %d" % size]
    if framing == "bad-length":
        values = rng.choice([
            [b"abc"], [b"-1"], [b"+%d" % size], [b"0x10"], [b"%d, %d" % (size, size)],
            [b"%d" % size, b"%d" % size], [b"%d" % size, b"%d" % (size + 1)], [b"1e3"],
            [b"99999999999999999999"], [b""], [b"%d " % size], [b"0%d" % size],
        ])  # fmt: skip
        return [b"Content-Length: " + value for value in values]
    if framing == "short-length":
        return [b"Content-Length: %d" % max(0, size - rng.randint(1, 20))]
    if framing == "long-length":
        return [b"Content-Length: %d" % (size + rng.randint(1, 100))]
    if framing == "too-large":
        return [b"Content-Length: %d" % rng.choice([11 << 20, 10**12])]
    raise AssertionError(framing)


def framed_body(rng: random.Random, framing: str, body: bytes, inner: bytes) -> bytes:
    if framing in SMUGGLINGS:
        return SMUGGLINGS[framing][1] + inner
    if framing in ("chunked", "transfer-encoding", "te-and-length"):
        out, rest = b"", body
        while rest:
            cut = rng.randint(1, len(rest))
            chunk, rest = rest[:cut], rest[cut:]
            size = rng.choice([b"%x", b"%X", b"%04x"]) % len(chunk)
            out += size + (b";ext=1" if rng.random() < 0.1 else b"") + b"\r\n" + chunk + b"\r\n"
        return out + b"0\r\n\r\n"
    if framing == "short-length" and rng.random() < 0.5:
        return body + b"\r\n\r\n"  # what is left over reads as a complete request head
    return body


def make_case(rng: random.Random, index: int, prefix: str) -> Case:
    host = rng.choice(HOSTS)
    token = f"fz{prefix}{index:04d}{rng.getrandbits(24):06x}"
    framing = pick(rng, {"length": 62, "none": 4, "chunked": 7, "transfer-encoding": 4,
                         "te-and-length": 2, "bad-length": 5, "short-length": 4, "long-length": 2,
                         "too-large": 1, "pipelined": 5, "smuggled": 4})  # fmt: skip
    if framing in ("pipelined", "smuggled"):
        # Two requests in one write: the second follows the first openly, or hides where the
        # first's body would be if its framing were read another way.
        tokens = [token, token + "b"]
        second, second_method, _ = build_request(rng, host, tokens[1], "length")
        if framing == "pipelined":
            first, method, kind = build_request(rng, host, token, "length")
            data = first + second
        else:
            framing = rng.choice(list(SMUGGLINGS))
            data, method, kind = build_request(rng, host, token, framing, inner=second)
        return Case(index, host, data, [method, second_method], tokens, framing, kind, False)
    data, method, kind = build_request(rng, host, token, framing)
    reusable = (
        framing in ("length", "chunked")
        and data.split(b"\n", 1)[0].endswith(b" HTTP/1.1\r")
        and method.upper() != "HEAD"
        and rng.random() < 0.6
    )
    return Case(index, host, data, [method], [token], framing, kind, reusable)


def make_cases(mode: str, count: int) -> list[Case]:
    rng = random.Random(f"{SEED}-{mode}")
    return [make_case(rng, index, mode[0]) for index in range(count)]


# --- sending -----------------------------------------------------------------------------------


class _Stream:
    """A tunnel's read side, shared by the answers read from it in turn: http.client closes the
    file it read a response from, which would lose what is buffered for the next one."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self._file = tls.makefile("rb")

    def makefile(self, mode: str) -> _Stream:
        return self

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


@dataclass
class Result:
    case: Case
    answers: list[Answer] = field(default_factory=list)
    failure: str = ""  # why not every answer came: timeout, closed, ...
    reused: bool = False


def read_answer(stream: _Stream, method: str) -> tuple[Answer, bool]:
    """An answer, and whether the proxy closes the connection after it."""
    response = http.client.HTTPResponse(stream, method=method.upper())  # type: ignore[arg-type]
    response.begin()
    headers = {name.lower(): value for name, value in response.getheaders()}
    return Answer(response.status, headers, response.read()), bool(response.will_close)


def send(proxy: Proxy, case: Case, tunnels: dict[str, tuple[ssl.SSLSocket, _Stream]]) -> Result:
    result = Result(case)
    current = tunnels.pop(case.host, None) if case.reusable else None
    result.reused = current is not None
    if current is None:
        try:
            tls = tunnel(proxy, case.host, timeout=TIMEOUT)
        except (OSError, AssertionError) as e:
            result.failure = f"tunnel: {e!r}"
            return result
        current = (tls, _Stream(tls))
    tls, stream = current
    closes = False
    try:
        tls.sendall(case.data)
    except OSError as e:  # the proxy may answer (and close) before it has read everything
        result.failure = f"send failed: {type(e).__name__}"
    for position, method in enumerate(case.methods):
        if position:
            tls.settimeout(NEXT_TIMEOUT)
        try:
            answer, closes = read_answer(stream, method)
        except TimeoutError:
            result.failure = "timeout"
            break
        except (http.client.HTTPException, OSError, ValueError) as e:
            result.failure = result.failure or f"closed: {type(e).__name__}"
            break
        result.answers.append(answer)
        if closes:
            break
    if case.reusable and not closes and not result.failure:
        tunnels[case.host] = current
    else:
        with contextlib.suppress(OSError):
            tls.close()
    return result


def send_all(proxy: Proxy, cases: list[Case]) -> list[Result]:
    """Each client takes the next case when it is done with one (a case that times out holds
    up only its own client) and keeps its tunnels for the reusable cases it takes."""
    queue, lock = iter(cases), threading.Lock()

    def client() -> list[Result]:
        tunnels: dict[str, tuple[ssl.SSLSocket, _Stream]] = {}
        results: list[Result] = []
        try:
            while True:
                with lock:
                    case = next(queue, None)
                if case is None:
                    return results
                results.append(send(proxy, case, tunnels))
        finally:
            for tls, _ in tunnels.values():
                with contextlib.suppress(OSError):
                    tls.close()

    with ThreadPoolExecutor(WORKERS) as pool:
        shares = [pool.submit(client) for _ in range(WORKERS)]
        return sorted((r for share in shares for r in share.result()), key=lambda r: r.case.index)


# --- the campaign: each mode's traffic, sent once ----------------------------------------------


def all_runs(proxy: Proxy) -> list[Any]:
    engine = open_engine(proxy.db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(Run)).all())
    finally:
        engine.dispose()


TOKEN = re.compile(r"fz[a-z]\d{4}[0-9a-f]{6}b?")


def tokens_of(run: Any) -> set[str]:
    """The fuzz tokens a run's recorded request carries (its header, its `fz` query values)."""
    request = run.request or {}
    values = [(request.get("headers") or {}).get("x-fuzz-id") or ""]
    values += (request.get("query") or {}).get("fz", [])
    return {token for value in values for token in TOKEN.findall(str(value))}


def token_of(got: Received) -> str:
    """The token of a request the upstream received: its X-Fuzz-Id, as the upstream read it."""
    found = TOKEN.findall(got.headers.get("x-fuzz-id", ""))
    return found[0] if found else ""


@dataclass
class Campaign:
    mode: str
    proxy: Proxy
    results: list[Result]
    received: list[Received]  # what the upstream received meanwhile
    runs: list[Any]  # every run in the store
    output: str  # the proxy's log, read before it was stopped

    def case_of(self, token: str) -> Case | None:
        return next((r.case for r in self.results if token in r.case.tokens), None)


@pytest.fixture(scope="module", params=list(MODES))
def campaign(
    request: pytest.FixtureRequest,
    start_proxy: Callable[..., Proxy],
    session_upstream: Upstream,
) -> Iterator[Campaign]:
    mode: str = request.param
    started = time.perf_counter()
    proxy = start_proxy(*MODES[mode])
    cases = make_cases(mode, COUNT)

    def answer(got: Received) -> tuple[int, dict[str, str], bytes]:
        """Every request alike (the default Stripe-shaped answer needs a path of two segments)."""
        body = json.dumps({"ok": True, "token": got.headers.get("x-fuzz-id")}).encode()
        return 200, {"Content-Type": "application/json", "X-Fuzz-Upstream": "1"}, body

    original = session_upstream.responder
    session_upstream.clear()
    session_upstream.responder = answer
    try:
        results = send_all(proxy, cases)
        sent = time.perf_counter()
        time.sleep(0.5)  # answers come after the upstream's; this is for requests given up on
    finally:
        session_upstream.responder = original
    received = list(session_upstream.received)
    done = Campaign(mode, proxy, results, received, all_runs(proxy), proxy.output())
    report(done, sent - started)
    yield done
    proxy.stop()


def report(campaign: Campaign, seconds: float) -> None:
    statuses: Counter[str] = Counter()
    for result in campaign.results:
        statuses.update(str(answer.status) for answer in result.answers)
        if result.failure:
            statuses[f"{result.failure.split(':')[0]} ({result.case.framing})"] += 1
    runs, cases = campaign.runs, [r.case for r in campaign.results]
    recorded = {token: run for run in runs for token in tokens_of(run) if run.decision == "ALLOW"}
    forwarded = [token_of(got) for got in campaign.received]
    odd_hosts = Counter(
        got.headers.get("host", "(none)")
        for got in campaign.received
        if got.headers.get("host", "").lower() not in HOSTS
    )
    print(
        f"\nfuzz [{campaign.mode}] seed={SEED!r}: {len(cases)} cases, "
        f"{sum(len(c.tokens) for c in cases)} requests ({sum(len(c.data) for c in cases)} bytes, "
        f"{sum(r.reused for r in campaign.results)} on reused tunnels, {WORKERS} clients) "
        f"sent and answered in {seconds:.1f} s\n"
        f"  answers: {dict(sorted(statuses.items()))}\n"
        f"  forwarded (the upstream received): {len(forwarded)}, with an ALLOW run: "
        f"{sum(token in recorded for token in forwarded)}; Host headers forwarded that are not "
        f"the tunnel's host as such: {dict(odd_hosts)}\n"
        f"  runs: {len(runs)} {dict(Counter(run.decision for run in runs))}, shadow: "
        f"{dict(Counter(run.shadow_decision for run in runs if run.shadow_decision))}, "
        f"outcomes: {dict(Counter(run.outcome for run in runs))}\n"
        f"  framings: {dict(Counter(case.framing for case in cases))}"
    )


def show(case: Case | None) -> str:
    if case is None:
        return "(no case sent it)"
    data = case.data[:1500] + (b"...(%d bytes)" % len(case.data) if len(case.data) > 1500 else b"")
    return f"case {case.index} ({case.framing}, {case.body_kind}) to {case.host}: {data!r}"


def judged_path(forwarded: str) -> str:
    """The path a run records for a request forwarded with this target: the gate's document of
    the same bytes (mitmproxy forwards an absolute-form target as it came)."""
    target = forwarded.encode("latin-1").decode("utf-8", "surrogateescape")
    if not target.startswith("/") and "://" in target:
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    return redact_text(document_path(escape_undecodable(target).partition("?")[0]))


def judged_method(forwarded: str) -> str:
    return escape_undecodable(forwarded.encode("latin-1").decode("utf-8", "surrogateescape"))


CAPPED = re.compile(r"(?s)(.*)\u2026 \[(\d+) characters, sha256 ([0-9a-f]{64})\]")


def same_text(stored: str, text: str) -> bool:
    """Whether a record's text is this text, or stands for it (start, length and hash)."""
    if stored == text:
        return True
    capped = CAPPED.fullmatch(stored)
    if capped is None:
        return False
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    return text.startswith(capped[1]) and capped.groups()[1:] == (str(len(text)), digest)


def failures(found: list[str]) -> str:
    return f"{len(found)} found:\n" + "\n\n".join(found[:8])


# --- the properties ----------------------------------------------------------------------------


def test_every_forwarded_request_has_a_committed_allow_run_of_what_was_forwarded(
    campaign: Campaign,
) -> None:
    by_token: dict[str, list[Any]] = {}
    for run in campaign.runs:
        for token in tokens_of(run):
            by_token.setdefault(token, []).append(run)
    seen = Counter(token_of(got) for got in campaign.received)
    found: list[str] = []
    for got in campaign.received:
        token = token_of(got)
        case = campaign.case_of(token)
        if case is None:  # smuggled past the gate, or mitmproxy framed it anew
            found.append(f"the upstream received a request nobody sent as one: {got!r}"[:3000])
            continue
        if seen[token] > 1:
            found.append(f"the upstream received {token} {seen[token]} times: {show(case)}")
        allowed = [run for run in by_token.get(token, []) if run.decision == "ALLOW"]
        if not allowed:
            runs = [(run.id, run.decision) for run in by_token.get(token, [])]
            found.append(f"forwarded without a committed ALLOW run (its runs: {runs}): "
                         f"{got.method} {got.path[:300]!r}; {show(case)}")  # fmt: skip
            continue
        method, path = judged_method(got.method).upper(), judged_path(got.path)
        if not any(run.method == method and same_text(run.path, path) for run in allowed):
            judged = [(run.method, run.path[:300]) for run in allowed]
            found.append(f"forwarded {method} {path[:300]!r}, judged {judged}: {show(case)}")
    assert campaign.received, "nothing was forwarded: the fuzzer tests nothing"
    assert not found, failures(found)


def test_every_answer_names_the_committed_run_of_its_own_request(campaign: Campaign) -> None:
    by_id = {run.id: run for run in campaign.runs}
    found: list[str] = []
    for result in campaign.results:
        for position, answer in enumerate(result.answers):
            run_id = answer.headers.get("x-airlock-request-id")
            from_upstream = "x-fuzz-upstream" in answer.headers
            if run_id is None:
                if from_upstream:
                    found.append(f"an upstream answer names no run: {show(result.case)}")
                continue
            run = by_id.get(run_id)
            said = "ALLOW" if from_upstream else answer.headers.get("x-airlock-decision")
            if run is None:
                found.append(f"answered {answer.status} for run {run_id}, which is not in the "
                             f"store: {show(result.case)}")  # fmt: skip
            elif said and run.decision != said:
                found.append(f"answered {answer.status} ({said}) for run {run_id}, recorded "
                             f"{run.decision}: {show(result.case)}")  # fmt: skip
            elif tokens_of(run) and result.case.tokens[position] not in tokens_of(run):
                found.append(f"answer {position} names run {run_id} of {tokens_of(run)}: "
                             f"{show(result.case)}")  # fmt: skip
    assert not found, failures(found)


def test_the_upstream_reads_no_header_the_gate_did_not_judge(campaign: Campaign) -> None:
    """What the upstream read is what was judged: every header it saw by name (the gate adds
    none; mitmproxy may add Host), and the body's size when nothing re-frames or encodes it."""
    allowed = [run for run in campaign.runs if run.decision == "ALLOW"]
    runs = {token: run for run in allowed for token in tokens_of(run)}
    found = []
    for got in campaign.received:
        run, case = runs.get(token_of(got)), campaign.case_of(token_of(got))
        if run is None:
            continue  # the first test's finding
        judged = (run.request or {}).get("headers") or {}
        unjudged = set(got.headers) - set(judged) - {"host"}
        if unjudged:
            seen = {name: got.headers[name][:80] for name in sorted(unjudged)}
            found.append(f"the upstream read headers the gate did not judge {seen} (judged: "
                         f"{sorted(judged)}): {show(case)}")  # fmt: skip
        reframed = {"transfer-encoding", "content-encoding"} & set(got.headers)
        size = (run.request or {}).get("body_size")
        if "content-length" in got.headers and not reframed and size != len(got.body):
            found.append(f"the upstream read a body of {len(got.body)} bytes, the gate judged "
                         f"{size}: {show(case)}")  # fmt: skip
    assert not found, failures(found)


def test_proxy_credentials_are_never_forwarded(campaign: Campaign) -> None:
    leaked = [got for got in campaign.received if "proxy-authorization" in got.headers]
    assert not leaked, failures([show(campaign.case_of(token_of(got))) for got in leaked])


def test_the_proxy_prints_no_traceback(campaign: Campaign) -> None:
    # Read while it ran: mitmproxy logs a CancelledError traceback when it is stopped with a
    # client connection open, which says nothing about the requests it handled.
    output = campaign.output
    at = output.find("Traceback")
    assert at < 0, output[max(0, at - 3000) : at + 5000]


def test_a_planted_secret_is_in_no_record(campaign: Campaign) -> None:
    found = []
    for run in campaign.runs:
        stored = json.dumps([run.request, run.params, run.context, run.reason, run.target,
                             run.path, run.error], default=str)  # fmt: skip
        if SECRET in stored:
            at = stored.index(SECRET)
            cases = [campaign.case_of(token) for token in tokens_of(run)]
            found.append(f"run {run.id} ({run.decision}) stores it: ...{stored[at - 300 : at]}"
                         f"{SECRET}...; {show(next(filter(None, cases), None))}")  # fmt: skip
    assert not found, failures(found)


def test_a_planted_secret_is_not_in_the_log(campaign: Campaign) -> None:
    found = [line[:1500] for line in campaign.output.splitlines() if SECRET in line]
    assert not found, failures(found)
