"""End to end: a request (or an answer) built to cost Airlock time or memory is refused, or
read within limits, while another agent's requests go on being answered. The proxy's event loop
and the decider are shared by every agent: what one of them costs, all of them wait for."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import brotli
import pytest
import requests

from airlock.console.standins import Received, Upstream, default_responder
from tests.helpers.proxy import PROJECT_ROOT, Proxy, prepared_confdir

pytestmark = pytest.mark.e2e

MiB = 1 << 20
# An MCP server's answer of 1 MB that inflates to 1 GiB (mitmproxy's own get_content() inflated
# such answers whole on the event loop: 3 MB took 6.3 GB and stalled every flow for 7.7 s).
GZIP_BOMB = gzip.compress(bytes(1024 * MiB), 1)
BROTLI_BOMB = brotli.compress(bytes(256 * MiB), quality=5, lgwin=24)  # ~200 bytes


def responder(request: Received) -> tuple[int, dict[str, str], bytes]:
    if request.path.startswith("/evil-mcp"):
        return 200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, GZIP_BOMB
    return default_responder(request)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("bombs")
    upstream = Upstream(base / "up", responder).start()
    routes = {"api.stripe.com": upstream.port, "api.example.com": upstream.port}
    # The MCP server whose answer is a bomb is declared: its protocol messages (a ping) are
    # MCP reads only at a declared endpoint, else the plain write they are.
    mappings = base / "mappings"
    shutil.copytree(PROJECT_ROOT / "mappings", mappings)
    (mappings / "evil-mcp.yaml").write_text(
        "provider: evil\nservers:\n  evil: [api.example.com/evil-mcp]\nmappings: []\n"
    )
    started = Proxy(
        workdir=base / "p", db_url=f"sqlite:///{base / 'p' / 'airlock.db'}", routes=routes,
        upstream_ca=upstream.ca_file, confdir=prepared_confdir(base),
        extra_args=["--mappings", str(mappings)],
    ).start()  # fmt: skip
    try:
        yield started
    finally:
        started.stop()
        upstream.stop()


def peak_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def processes(proxy: Proxy) -> list[int]:
    """The proxy's process and its decider worker."""
    assert proxy.process is not None
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(proxy.process.pid)], capture_output=True, text=True
    ).stdout.split()
    return [proxy.process.pid, *map(int, children)]


def while_another_agent_works(proxy: Proxy, attack: Callable[[], Any]) -> tuple[Any, list[Any]]:
    """The attack's answer, and the statuses of another agent's charges sent meanwhile."""
    victim = proxy.session("victim")
    victim.post("https://api.stripe.com/v1/charges", data={"amount": "5", "currency": "usd"})
    stop, statuses = threading.Event(), []

    def charges() -> None:
        while not stop.is_set():
            try:
                answer = victim.post(
                    "https://api.stripe.com/v1/charges",
                    data={"amount": "500", "currency": "usd"}, timeout=30,
                )  # fmt: skip
                statuses.append(answer.status_code)
            except requests.RequestException as e:
                statuses.append(repr(e))
            time.sleep(0.05)

    thread = threading.Thread(target=charges)
    thread.start()
    try:
        time.sleep(0.3)
        answer = attack()
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    return answer, statuses


def test_bombs_are_refused_or_read_within_limits_while_other_agents_are_answered(
    proxy: Proxy,
) -> None:
    before = [peak_mib(pid) for pid in processes(proxy)]
    attacker = proxy.session("attacker")

    def brotli_body() -> requests.Response:
        return attacker.post(
            "https://api.example.com/v1/things", data=BROTLI_BOMB,
            headers={"Content-Type": "application/json", "Content-Encoding": "br"},
        )  # fmt: skip

    def mcp_answer() -> requests.Response:
        call = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        return attacker.post(
            "https://api.example.com/evil-mcp", data=json.dumps(call), stream=True,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip

    answer, statuses = while_another_agent_works(proxy, brotli_body)
    assert answer.status_code == 403 and "decodes to more than" in answer.text
    assert statuses and set(statuses) == {200}
    answer, statuses = while_another_agent_works(proxy, mcp_answer)
    assert answer.status_code == 200 and len(answer.raw.read(decode_content=False)) > MiB
    assert statuses and set(statuses) == {200}
    after = [peak_mib(pid) for pid in processes(proxy)]
    # each process within what the decoding limits allow (16 MiB, a brotli step, copies)
    assert all(peak - start < 200 for start, peak in zip(before, after, strict=True))


def test_a_head_of_too_many_fields_is_refused_as_it_arrives(proxy: Proxy) -> None:
    """mitmproxy takes a head of any size; 50,000 fields stalled the decider for 10 s."""

    def many_fields() -> tuple[int, str]:
        tls = ssl.create_default_context(cafile=str(proxy.ca_cert))
        connection = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=tls, timeout=60)
        credentials = base64.b64encode(b"attacker:key").decode()
        connection.set_tunnel(
            "api.stripe.com", 443, headers={"Proxy-Authorization": f"Basic {credentials}"}
        )
        connection.putrequest("GET", "/v1/charges")
        for _ in range(20_000):
            connection.putheader("x-a", "v" * 20)
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, answer.read().decode()

    (status, text), statuses = while_another_agent_works(proxy, many_fields)
    assert status == 431 and "header fields: Airlock reads at most 200" in text
    assert statuses and set(statuses) == {200}
