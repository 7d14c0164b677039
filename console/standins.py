"""Local HTTPS stand-ins for the real APIs (Stripe, Slack, GitHub, AWS, ...): they answer what each
vendor's SDK expects, and count and keep what they receive. `airlock demo` routes the real
hostnames to them; the tests and `make bench` use them as upstreams.

Fast enough to benchmark against (asyncio, HTTP/1.1 keep-alive), with its own CA so the proxy
must be told to trust it (`--upstream-ca`), as it would be for any private upstream.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOSTNAMES = (
    "api.stripe.com",
    "*.example.com",
    "example.com",
    "localhost",
    # AWS: global endpoints, us-east-1 regional ones, S3 virtual-hosted buckets.
    "*.amazonaws.com",
    "*.us-east-1.amazonaws.com",
    "*.s3.amazonaws.com",
    "*.s3.us-east-1.amazonaws.com",
    "*.s3-fips.us-east-1.amazonaws.com",
    "slack.com",
    "*.slack.com",
    "api.github.com",
    "api.sendgrid.com",
    "api.twilio.com",
    "api.openai.com",
    "api.anthropic.com",
)


@dataclass
class Received:
    method: str
    host: str
    path: str
    headers: dict[str, str]
    body: bytes


Responder = Callable[[Received], tuple[int, dict[str, str], bytes]]


def default_responder(request: Received) -> tuple[int, dict[str, str], bytes]:
    """What each provider's SDK expects back, so SDK calls complete like the real thing."""
    host = request.host.split(":")[0]
    if host == "slack.com" and request.path.startswith("/api/files.getUploadURLExternal"):
        upload = "https://files.slack.com/upload/v1/ABC123"
        return _json({"ok": True, "upload_url": upload, "file_id": "F0FILE"})
    if host == "slack.com" and request.path.startswith("/api/files.completeUploadExternal"):
        return _json({"ok": True, "files": [{"id": "F0FILE", "title": "report"}]})
    if host in ("slack.com", "files.slack.com"):
        return _json({"ok": True, "channel": "C0AGENT", "ts": "1700000000.000100"})
    if host == "api.openai.com":
        return _json(_OPENAI_COMPLETION)
    if host == "api.anthropic.com":
        return _json(_ANTHROPIC_MESSAGE)
    return _stripe_object(request)


_OPENAI_COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-test",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "ok"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
_ANTHROPIC_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-test",
    "content": [{"type": "text", "text": "ok"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}


def _json(payload: object, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def _stripe_object(request: Received) -> tuple[int, dict[str, str], bytes]:
    """A Stripe-shaped JSON object."""
    object_id = f"obj_{next(_ids)}"
    segments = request.path.split("?", 1)[0].strip("/").split("/")
    kind = segments[1].rstrip("s") if len(segments) > 1 else "object"  # /v1/charges: charge
    payload: dict[str, object] = {"id": object_id, "object": kind, "livemode": False}
    if request.method == "DELETE":
        payload["deleted"] = True
    return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()


_ids = itertools.count(1)


@dataclass
class Upstream:
    cert_dir: Path
    responder: Responder = default_responder
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.ca_file, cert_file, key_file = make_certificates(self.cert_dir)
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.load_cert_chain(cert_file, key_file)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> Upstream:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl), self._loop
        ).result(10)
        self.port = server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.received if path is None or r.path.startswith(path))

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request = _parse_head(head)
                length = int(request.headers.get("content-length", "0"))
                request.body = await reader.readexactly(length) if length else b""
                with self._lock:
                    self.received.append(request)
                status, headers, body = self.responder(request)
                writer.write(_response(status, headers, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


def _parse_head(head: bytes) -> Received:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return Received(method, headers.get("host", ""), target, headers, b"")


def _response(status: int, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for HOSTNAMES; returns (ca, cert, key) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Airlock test upstream CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(h) for h in HOSTNAMES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAMES[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "server.pem", "server.key"))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


def main() -> None:
    """Serve as a separate process (the benchmark keeps it off the load generator's core)."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Local HTTPS upstream for tests and benchmarks.")
    parser.add_argument("--cert-dir", type=Path, required=True)
    args = parser.parse_args()
    upstream = Upstream(args.cert_dir).start()
    print(f"port={upstream.port} ca={upstream.ca_file}", flush=True)
    while True:
        with upstream._lock:
            upstream.received.clear()  # a long benchmark must not grow memory
        time.sleep(1)


if __name__ == "__main__":
    main()
