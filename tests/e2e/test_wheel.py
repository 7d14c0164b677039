"""The package as a user installs it: a wheel in a fresh virtualenv, far from this checkout.

The proxy runs end to end from it (shipped mappings, policies and catalog found as package
data), and everything it writes lands in the data directory, never in site-packages.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from airlock.console.standins import Upstream
from airlock.store.locations import DATA_DIR_VARIABLE
from airlock.store.schema import Run, open_engine
from tests.helpers.proxy import PROJECT_ROOT, clean_env, free_port, wait_for_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the wheel from this checkout and install it (with its dependencies) into a new
    virtualenv; yields the virtualenv's bin folder."""
    base = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(base), "."],
        cwd=PROJECT_ROOT, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = base.glob("airlock-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        env=clean_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    yield venv / "bin"


def test_the_wheel_holds_one_namespace_and_the_shipped_data(
    wheel_env: Path, tmp_path: Path
) -> None:
    (wheel,) = wheel_env.parent.parent.glob("airlock-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.endswith(".dist-info/RECORD")}
    assert top == {"airlock", "airlock-0.1.0.dist-info"}
    for shipped in ("mappings/stripe.yaml", "policies/baseline.yaml", "catalog/sources.json"):
        assert f"airlock/{shipped}" in names
    assert "airlock/catalog/aws/s3.json" in names
    assert "airlock/console/schemas/policy.schema.json" in names


def test_check_and_explain_work_from_the_wheel_outside_the_checkout(
    wheel_env: Path, tmp_path: Path
) -> None:
    checked = subprocess.run(
        [str(wheel_env / "airlock"), "check"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no problems" in checked.stdout
    raw = tmp_path / "lifecycle.http"  # identified through the catalog shipped as data
    raw.write_text(
        "DELETE /?lifecycle HTTP/1.1\r\nHost: reports.s3.us-east-1.amazonaws.com\r\n\r\n"
    )
    explained = subprocess.run(
        [str(wheel_env / "airlock"), "explain", str(raw), "--json"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    answer = json.loads(explained.stdout)
    assert answer["operation"] == "aws.s3.DeleteBucketLifecycle"
    assert answer["decision"] in ("ALLOW", "BLOCK", "REQUIRE_APPROVAL")


def test_the_wheel_runs_the_proxy_and_writes_only_to_its_data_dir(
    wheel_env: Path, tmp_path: Path, session_upstream: Upstream
) -> None:
    port, workdir = free_port(), tmp_path / "agent-host"
    workdir.mkdir()
    log = tmp_path / "proxy.log"
    argv = [
        str(wheel_env / "airlock"), "run", "--quiet", "--port", str(port), "--metrics-port", "0",
        "--route", f"api.stripe.com=127.0.0.1:{session_upstream.port}",
        "--upstream-ca", str(session_upstream.ca_file),
    ]  # fmt: skip
    site_packages = next((wheel_env.parent / "lib").glob("python3*/site-packages"))
    installed = _files(site_packages)
    env = clean_env() | {"PYTHONUNBUFFERED": "1"}
    env.pop(DATA_DIR_VARIABLE)  # the default data directory is what is under test
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                   env=env)  # fmt: skip
    try:
        wait_for_port(port, process, log)
        data_dir = workdir / "airlock-data"
        session = requests.Session()
        session.trust_env = False
        session.proxies = {"https": f"http://127.0.0.1:{port}"}
        session.verify = str(data_dir / "certs" / "mitmproxy-ca-cert.pem")
        small = session.post("https://api.stripe.com/v1/charges",
                             data={"amount": "500", "currency": "usd"}, timeout=30)  # fmt: skip
        assert small.status_code == 200, small.text
        huge = session.post("https://api.stripe.com/v1/charges",
                            data={"amount": "50000000", "currency": "usd"}, timeout=30)  # fmt: skip
        assert huge.status_code == 403
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
    engine = open_engine(f"sqlite:///{data_dir / 'airlock.db'}")
    with engine.connect() as conn:
        decisions = conn.execute(select(Run.action, Run.decision).order_by(Run.at)).all()
    engine.dispose()
    assert [tuple(d) for d in decisions] == [
        ("create_charge", "ALLOW"),
        ("create_charge", "BLOCK"),
    ]
    assert sorted(_files(site_packages) - installed) == []
    assert (data_dir / "certs" / "mitmproxy-ca.pem").exists()


def _files(folder: Path) -> set[Path]:
    """What a folder holds, bytecode caches aside."""
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
