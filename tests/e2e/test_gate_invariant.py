"""End to end, the gate's invariant: a request Airlock cannot judge exactly as sent (bytes that
are not UTF-8, a protocol upgrade, another host named inside the tunnel, a body it will not read)
is refused with a recorded BLOCK before it is answered, the upstream never sees it, and the
proxy and its store keep serving everyone else."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import requests
from sqlalchemy import select

from airlock.console.standins import Upstream
from airlock.store.schema import Run, open_engine
from tests.e2e.test_gate import airlock, eventually
from tests.helpers.proxy import Proxy

pytestmark = pytest.mark.e2e

CHARGES = "https://api.stripe.com/v1/charges"
SMALL_CHARGE = {"amount": 500, "currency": "usd"}


# --- a client that writes its own bytes --------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(proxy: Proxy, host: str, port: int = 443, timeout: float = 15) -> socket.socket:
    """A tunnel to host:port through the proxy (CONNECT answered 200)."""
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = raw.recv(4096)
        if not chunk:
            raise ConnectionError(f"proxy closed the CONNECT: {head!r}")
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return raw


def tunnel(
    proxy: Proxy, host: str, alpn: list[str] | None = None, timeout: float = 15,
    sni: str | None = None,
) -> ssl.SSLSocket:  # fmt: skip
    """CONNECT host:443 through the proxy, then TLS to it trusting the proxy's CA (asking for
    `sni` as the server name, the CONNECT host unless given)."""
    raw = connect(proxy, host, timeout=timeout)
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    context.check_hostname = sni is None
    if alpn:
        context.set_alpn_protocols(alpn)
    return context.wrap_socket(raw, server_hostname=sni or host)


def exchange(
    proxy: Proxy, request: bytes, host: str = "api.stripe.com", timeout: float = 15
) -> Answer:
    """Send one HTTP/1.1 request's raw bytes inside a tunnel to `host`; read the answer."""
    with tunnel(proxy, host, timeout=timeout) as tls:
        tls.sendall(request)
        response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
        response.begin()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Answer(response.status, headers, response.read())


def h2_exchange(
    proxy: Proxy, host: str, headers: list[tuple[str, str]], body: bytes = b"",
    trailers: list[tuple[str, str]] | None = None,
) -> Answer:  # fmt: skip
    """One HTTP/2 request inside a tunnel to `host`, with a body and trailer fields if given."""
    with tunnel(proxy, host, alpn=["h2"]) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, headers, end_stream=not body and not trailers)
        if body:
            conn.send_data(stream_id, body, end_stream=not trailers)
        if trailers:
            conn.send_headers(stream_id, trailers, end_stream=True)
        tls.sendall(conn.data_to_send())
        status, answer_headers, body = 0, {}, b""
        while True:
            data = tls.recv(65535)
            if not data:
                raise ConnectionError("proxy closed the HTTP/2 connection without an answer")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    answer_headers = {
                        (n.decode() if isinstance(n, bytes) else n): (
                            v.decode() if isinstance(v, bytes) else v
                        )
                        for n, v in event.headers
                    }
                    status = int(answer_headers[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    return Answer(status, answer_headers, body)
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    raise ConnectionError(f"proxy ended the stream: {event}")
            tls.sendall(conn.data_to_send())


# --- the store ---------------------------------------------------------------------------------


def record(proxy: Proxy, run_id: str) -> Run | None:
    engine = open_engine(proxy.db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(Run).where(Run.id == run_id)).first()
    finally:
        engine.dispose()


def blocked_record(proxy: Proxy, answer_headers: Any) -> Run:
    """The refusal's run: committed by the database before the request was answered, so it is
    read at once, not waited for."""
    run_id = answer_headers["x-airlock-request-id"]
    found = record(proxy, run_id)
    assert found is not None, f"run {run_id} was answered but is not in the store"
    assert found.decision == "BLOCK"
    return found


def forwarded_and_recorded(proxy: Proxy, response_headers: Any) -> Run:
    run_id = response_headers["X-Airlock-Request-Id"]
    found = record(proxy, run_id)
    assert found is not None, f"run {run_id} was forwarded but is not in the store"
    assert found.decision == "ALLOW"
    done = eventually(lambda: (r := record(proxy, run_id)) is not None and r.outcome and r)
    assert done, f"run {run_id} has no outcome"
    assert (done.outcome, done.status) == ("forwarded", 200)
    return done


def no_traceback(proxy: Proxy) -> None:
    output = proxy.output()
    assert "Traceback" not in output, output[-4000:]


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy("--hold-timeout", "2")


# --- 1. request-line bytes that are not UTF-8 --------------------------------------------------

NON_UTF8_PATH = b"GET /v1/charges/\xff HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_non_utf8_path_is_refused_recorded_and_the_store_keeps_working(
    backend: str,
    start_proxy: Callable[..., Proxy],
    upstream: Upstream,
    request: pytest.FixtureRequest,
) -> None:
    db_url = request.getfixturevalue("empty_pg_database") if backend == "postgresql" else None
    first = start_proxy(db_url=db_url)

    answer = exchange(first, NON_UTF8_PATH)

    assert answer.status == 403
    reason = answer.json()["reason"]
    assert "not UTF-8" in reason and "/v1/charges/%FF" in reason, reason
    assert upstream.count() == 0
    refused = blocked_record(first, answer.headers)
    assert "/v1/charges/%FF" in refused.reason
    assert (refused.method, refused.host) == ("GET", "api.stripe.com")
    assert refused.path.startswith("/v1/charges/")

    # The store took the odd row and is not wedged: the next request is forwarded and recorded.
    allowed = first.session(agent="billing-bot").post(CHARGES, data=SMALL_CHARGE)
    assert allowed.status_code == 200
    forwarded_and_recorded(first, allowed.headers)
    assert [r.path for r in upstream.received] == ["/v1/charges"]

    # Checked while it runs: mitmproxy logs a CancelledError traceback when it is stopped with
    # a client connection open, which says nothing about the requests it handled.
    no_traceback(first)

    # And after a restart on the same database.
    assert first.stop() == 0
    second = start_proxy(db_url=first.db_url)
    again = second.session(agent="billing-bot").post(CHARGES, data=SMALL_CHARGE)
    assert again.status_code == 200
    forwarded_and_recorded(second, again.headers)
    assert upstream.count("/v1/charges") == 2
    verified = airlock("audit", "verify", "--db", first.db_url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit trail intact" in verified.stdout
    no_traceback(second)


def test_recorded_path_shows_the_byte_that_is_not_utf8(proxy: Proxy, upstream: Upstream) -> None:
    """A reviewer reading the run must see which byte was sent (%FF), not U+FFFD."""
    answer = exchange(proxy, NON_UTF8_PATH)

    assert answer.status == 403
    assert upstream.count() == 0
    refused = blocked_record(proxy, answer.headers)
    assert refused.path == "/v1/charges/%FF", refused.path
    assert refused.request["path"] == "/v1/charges/%FF", refused.request["path"]


# --- 2. protocol upgrades ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "upgrade",
    [b"Upgrade: websocket\r\nConnection: Upgrade\r\n", b""],
    ids=["upgrade", "handshake-only"],
)
def test_websocket_upgrade_is_refused_not_switched(
    proxy: Proxy, upstream: Upstream, upgrade: bytes
) -> None:
    """mitmproxy switches to WebSocket on a 101 answer to a request with
    Sec-WebSocket-Version: 13, Upgrade header or not: either is refused before it is sent."""
    answer = exchange(
        proxy,
        b"GET /socket HTTP/1.1\r\n"
        b"Host: api.example.com\r\n" + upgrade + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
        host="api.example.com",
    )

    assert answer.status == 403, answer
    assert "upgrade" in answer.json()["reason"].lower()
    assert upstream.count() == 0
    refused = blocked_record(proxy, answer.headers)
    assert "upgrade" in refused.reason.lower()
    assert refused.host == "api.example.com"


# --- 3. another host named inside the tunnel ---------------------------------------------------


def test_http2_authority_naming_another_host_is_refused(proxy: Proxy, upstream: Upstream) -> None:
    answer = h2_exchange(
        proxy,
        "api.stripe.com",
        [
            (":method", "GET"),
            (":authority", "api.github.com"),
            (":scheme", "https"),
            (":path", "/repos/o/r"),
        ],
    )

    assert answer.status == 403, answer
    assert ":authority" in answer.json()["reason"]
    assert upstream.count() == 0
    refused = blocked_record(proxy, answer.headers)
    assert ":authority" in refused.reason
    assert refused.host == "api.stripe.com"


def test_http1_host_header_naming_another_host_is_refused(proxy: Proxy, upstream: Upstream) -> None:
    answer = exchange(proxy, b"GET /repos/o/r HTTP/1.1\r\nHost: api.github.com\r\n\r\n")

    assert answer.status == 403, answer
    assert "Host header" in answer.json()["reason"]
    assert upstream.count() == 0
    assert "Host header" in blocked_record(proxy, answer.headers).reason


def test_a_tls_server_name_naming_another_host_is_refused(proxy: Proxy, upstream: Upstream) -> None:
    """mitmproxy asks the upstream for the client's SNI: an edge that routes by it would serve
    another host than the one judged (the CONNECT target), HTTP/1.0 without a Host header."""
    with tunnel(proxy, "api.example.com", sni="api.stripe.com") as tls:
        tls.sendall(b"GET /v1/balance HTTP/1.0\r\n\r\n")
        response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
        response.begin()
        headers = {name.lower(): value for name, value in response.getheaders()}
        answer = Answer(response.status, headers, response.read())

    assert answer.status == 403, answer
    assert "server name (SNI) 'api.stripe.com'" in answer.json()["reason"]
    assert upstream.count() == 0
    assert "SNI" in blocked_record(proxy, answer.headers).reason


def test_http2_trailer_fields_are_refused_not_forwarded_unjudged(
    proxy: Proxy, upstream: Upstream
) -> None:
    answer = h2_exchange(
        proxy,
        "api.stripe.com",
        [(":method", "POST"), (":authority", "api.stripe.com"), (":scheme", "https"),
         (":path", "/v1/charges"), ("content-type", "application/x-www-form-urlencoded")],
        body=b"amount=500&currency=usd",
        trailers=[("stripe-account", "acct_other")],
    )  # fmt: skip

    assert answer.status == 403, answer
    assert "trailer fields (stripe-account)" in answer.json()["reason"]
    assert upstream.count() == 0
    assert "trailer" in blocked_record(proxy, answer.headers).reason


def test_dns_through_a_tunnel_is_answered_refused_never_relayed(
    start_proxy: Callable[..., Proxy],
) -> None:
    """mitmproxy speaks DNS to a tunnel's port 53 itself, without an HTTP request: a query's
    names could carry anything out."""
    received: list[bytes] = []
    resolver = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with resolver:
            connection, _ = resolver.accept()
            with connection:
                received.append(connection.recv(65535))

    threading.Thread(target=serve, daemon=True).start()
    proxy = start_proxy(routes={"resolver.example": resolver.getsockname()[1]})
    name = b"".join(bytes([len(label)]) + label for label in (b"sk-secret", b"example")) + b"\0"
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x10\x00\x01"
    with connect(proxy, "resolver.example", 53) as raw:
        raw.sendall(len(query).to_bytes(2, "big") + query)
        answer = raw.recv(4096)

    assert answer[2:4] == b"\x12\x34"  # the query's id
    assert answer[5] & 0x0F == 5  # RCODE 5: REFUSED
    assert received == []
    assert "refused DNS" in proxy.output()


# --- 4. a gzip bomb, and everyone else meanwhile -----------------------------------------------


def judged_beside_a_probe(
    proxy: Proxy, send: Callable[[requests.Session], requests.Response]
) -> tuple[requests.Response, list[float], float]:
    """Send one request from one agent while another agent's small charges run in a loop:
    (its answer, the probe's latencies, seconds it took)."""
    done = threading.Event()
    answers: dict[str, Any] = {}

    def send_it() -> None:
        started = time.perf_counter()
        try:
            answers["answer"] = send(proxy.session(agent="heavy-bot"))
        except BaseException as e:  # reported by the assertion below
            answers["error"] = e
        finally:
            answers["seconds"] = time.perf_counter() - started
            done.set()

    probe = proxy.session(agent="probe-bot")
    assert probe.post(CHARGES, data=SMALL_CHARGE).status_code == 200  # connection warmed
    latencies: list[float] = []
    sender = threading.Thread(target=send_it, daemon=True)
    sender.start()
    while not done.is_set() or len(latencies) < 10:
        started = time.perf_counter()
        status = probe.post(CHARGES, data={"amount": 100 + len(latencies), "currency": "usd"})
        latencies.append(time.perf_counter() - started)
        assert status.status_code == 200
        assert len(latencies) < 2000, "the heavy request was never answered"
    sender.join(5)
    assert "error" not in answers, answers.get("error")
    return answers["answer"], latencies, answers["seconds"]


def test_gzip_bomb_is_refused_without_stalling_other_agents(
    proxy: Proxy, upstream: Upstream
) -> None:
    bomb = gzip.compress(b"{" + b" " * 60_000_000 + b"}", compresslevel=6)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}

    response, latencies, seconds = judged_beside_a_probe(
        proxy, lambda session: session.post(CHARGES, data=bomb, headers=headers, timeout=30)
    )

    print(f"\ngzip bomb ({len(bomb)} bytes → 60 MB) answered in {seconds * 1000:.0f} ms; "
          f"probe max {max(latencies) * 1000:.1f} ms over {len(latencies)}")  # fmt: skip
    assert response.status_code == 403
    assert "decodes to more than" in response.json()["reason"]
    blocked_record(proxy, response.headers)
    assert max(latencies) < 2.0, latencies
    assert upstream.count() == len(latencies) + 1  # only the probe's charges


def test_a_large_plain_body_does_not_stall_other_agents(proxy: Proxy, upstream: Upstream) -> None:
    """9.5 MB of JSON (under the 10 MB body limit): not parsed, held for a reviewer by the
    baseline, and other agents' decisions go on."""
    payload = json.dumps({"amount": 5, "currency": "usd", "pad": "x" * 9_500_000})
    headers = {"Content-Type": "application/json"}

    response, latencies, seconds = judged_beside_a_probe(
        proxy, lambda session: session.post(CHARGES, data=payload, headers=headers, timeout=30)
    )

    print(f"\n9.5 MB body answered in {seconds * 1000:.0f} ms (2 s hold); probe max "
          f"{max(latencies) * 1000:.1f} ms over {len(latencies)}")  # fmt: skip
    assert response.status_code == 503  # held, then "approval pending"
    assert sorted(response.json()["rules"]) == [  # nor is its amount read
        "stripe-payment-without-amount-needs-approval",
        "uninspected-body-needs-approval",
    ]
    assert max(latencies) < 2.0, latencies
    assert upstream.count() == len(latencies) + 1  # only the probe's charges


# --- 5. deep nesting ---------------------------------------------------------------------------


def test_deeply_nested_bodies_are_refused(proxy: Proxy, upstream: Upstream) -> None:
    session = proxy.session()
    deep_json = session.post(
        CHARGES, data="[" * 1000 + "]" * 1000, headers={"Content-Type": "application/json"}
    )
    deep_xml = session.post(
        CHARGES,
        data="<a>" * 1000 + "</a>" * 1000,
        headers={"Content-Type": "application/xml"},
    )

    assert deep_json.status_code == 403
    assert "nested deeper" in deep_json.json()["reason"]
    assert deep_xml.status_code == 403
    assert "nested deeper" in deep_xml.json()["reason"]
    assert upstream.count() == 0
    for response in (deep_json, deep_xml):
        assert "nested deeper" in blocked_record(proxy, response.headers).reason
    no_traceback(proxy)


# --- 6. chunked bodies with trailers -----------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="mitmproxy's HTTP/1 reader (11.0.2, and 12.x likewise; mitmproxy issue #2474) raises "
    "NotImplementedError on request trailers before any hook runs: nothing is forwarded or "
    "recorded, but the client gets no answer until mitmproxy's idle timeout (600 s)",
)
def test_chunked_body_with_trailer_gets_a_decided_answer(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = start_proxy()  # its own: what this does to a proxy must not leak into other tests
    body = b"amount=500&currency=usd"
    chunked = (
        b"POST /v1/charges HTTP/1.1\r\n"
        b"Host: api.stripe.com\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )

    try:
        answer = exchange(proxy, chunked, timeout=5)  # a decision takes milliseconds
    except OSError as e:  # timed out, or reset
        pytest.fail(
            f"no HTTP answer to a chunked request with a trailer ({e!r}); upstream received "
            f"{upstream.count()}; proxy log:\n{proxy.output()[-3000:]}"
        )

    print(f"\nchunked request with a trailer: {answer.status} {answer.body[:300]!r}")
    assert answer.status in (200, 403), answer
    if answer.status == 200:
        forwarded_and_recorded(
            proxy, {"X-Airlock-Request-Id": answer.headers["x-airlock-request-id"]}
        )
        assert upstream.count("/v1/charges") == 1
    else:
        blocked_record(proxy, answer.headers)
        assert upstream.count() == 0
    no_traceback(proxy)


# --- 7. a body too large to read is held, not allowed ------------------------------------------


def test_body_over_1mib_is_held_for_approval_not_allowed(proxy: Proxy, upstream: Upstream) -> None:
    payload = json.dumps({"amount": 5, "currency": "usd", "pad": "x" * 2_000_000})

    response = proxy.session().post(
        CHARGES, data=payload, headers={"Content-Type": "application/json"}, timeout=30
    )

    assert response.status_code == 503, response.text[:500]
    body = response.json()
    assert body["reason"].startswith("approval pending")
    assert "uninspected-body-needs-approval" in body["rules"]
    assert response.headers["X-Airlock-Approval-Id"] == body["approval"]["id"]
    assert upstream.count() == 0
    run_id = response.headers["X-Airlock-Request-Id"]
    held = record(proxy, run_id)
    assert held is not None and held.decision == "REQUIRE_APPROVAL"
    assert "uninspected-body-needs-approval" in held.rules
    assert eventually(lambda: (r := record(proxy, run_id)) is not None and r.outcome == "pending")
