"""Start the real thing: `airlock run` (mitmdump + the gate) as a subprocess on a free port."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

PROJECT_ROOT = Path(__file__).resolve().parents[2]


# A port is picked here and bound by a process started a second later. Picked from the
# kernel's ephemeral range (bind to port 0), it could meanwhile go to another test worker's
# pick (make test runs two, pytest-xdist) or to an outgoing connection. So each worker picks
# from its own block below that range (32768 and up on Linux), and never hands out a port twice.
_PORTS = range(10_000, 32_000)
_handed_out: set[int] = set()
_picker = random.Random()


def free_port() -> int:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = len(_PORTS) // workers
    block = range(_PORTS.start + size * worker, _PORTS.start + size * (worker + 1))
    for _ in range(len(block)):
        port = _picker.choice(block)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # something else listens there
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in {block.start}-{block.stop - 1}")


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"proxy exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"proxy did not listen on {port} within {timeout}s:\n{log.read_text()}")


def clean_env() -> dict[str, str]:
    """The machine exports CA bundles globally; a test sets its own, explicitly."""
    env = dict(os.environ)
    for name in (
        "REQUESTS_CA_BUNDLE",
        "AWS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        env.pop(name, None)
    return env


@dataclass
class Proxy:
    workdir: Path
    db_url: str
    routes: dict[str, int]  # hostname → upstream port on 127.0.0.1
    upstream_ca: Path
    confdir: Path
    extra_args: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    interrupted: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self) -> list[str]:
        """How a reviewer's command on the proxy's host names it: the store, and the data
        directory (the audit key that seals their decisions, the folders the proxy runs with)."""
        return ["--db", self.db_url, "--data-dir", str(self.workdir)]

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"proxy-{self.port}.log"

    def command(self) -> list[str]:
        argv = [
            sys.executable, "-m", "airlock.console.cli", "run",
            "--port", str(self.port),
            "--db", self.db_url,
            "--confdir", str(self.confdir),
            "--data-dir", str(self.workdir),  # what else it writes (run/) stays out of the checkout
            "--upstream-ca", str(self.upstream_ca),
            "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        for host, port in self.routes.items():
            argv += ["--route", f"{host}=127.0.0.1:{port}"]
        return argv + list(self.extra_args)

    def start(self) -> Proxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        share_request_key(self.workdir)
        self.interrupted = False
        env = clean_env() | {"PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        wait_for_port(self.port, self.process, self.log_file)
        return self

    def interrupt(self) -> None:
        """Ask it to stop (SIGINT: a graceful shutdown), without waiting."""
        if self.process is not None and self.process.poll() is None and not self.interrupted:
            self.process.send_signal(signal.SIGINT)
            self.interrupted = True

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.interrupt()  # once: a second SIGINT would cut the graceful shutdown short
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")

    def session(self, agent: str | None = None, key: str = "key") -> requests.Session:
        """A requests client configured as an agent would be: HTTPS_PROXY plus the proxy's CA."""
        session = requests.Session()
        session.trust_env = False
        proxy = self.url if agent is None else f"http://{agent}:{key}@127.0.0.1:{self.port}"
        session.proxies = {"https": proxy, "http": proxy}
        session.verify = str(self.ca_cert)
        return session


# The request key every test proxy holds, as every instance on one store must (store/keys.py):
# proxies a test starts on one PostgreSQL store join each other's approvals.
SHARED_REQUEST_KEY = "5eed" * 16


def share_request_key(data_dir: Path) -> None:
    from airlock.store.keys import KEY_FILE

    path = data_dir / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SHARED_REQUEST_KEY + "\n")
        path.chmod(0o600)


def prepared_confdir(base: Path) -> Path:
    """Generate mitmproxy's CA once per test session; each proxy gets a copy."""
    from mitmproxy.certs import CertStore

    source = base / "ca-template"
    if not source.exists():
        CertStore.from_store(source, "mitmproxy", 2048)
    # A fresh name each time: a free port number, used for this before, came back once.
    target = Path(tempfile.mkdtemp(prefix="confdir-", dir=base))
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target
