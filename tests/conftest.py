from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from airlock.console.standins import Upstream
from airlock.store.locations import DATA_DIR_VARIABLE
from airlock.store.schema import Base, create_schema, open_engine
from tests.helpers.postgres import throwaway_database
from tests.helpers.proxy import Proxy, prepared_confdir

PG_ADMIN_URL = os.environ.get(
    "AIRLOCK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("AIRLOCK_REQUIRE_POSTGRES") == "1"


# --- the data directory ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own default data directory. Run from a checkout, Airlock's default is
    the checkout itself: a developer's `make run` there (its audit key, its checkpoints), or
    another test's command, would change what a test that leaves out --data-dir sees.
    Subprocesses inherit it."""
    folder = tmp_path_factory.mktemp("data-dir")
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(folder))
    return folder


# --- databases -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session (dropped at the end)."""
    database = ExitStack()
    try:
        url = database.enter_context(throwaway_database(PG_ADMIN_URL, "airlock_test"))
    except Exception as e:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {e}"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " (AIRLOCK_REQUIRE_POSTGRES=1: PostgreSQL tests are mandatory)")
        pytest.skip(message)
    with database:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite and on PostgreSQL, against empty tables."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'airlock.db'}"
    return request.getfixturevalue("empty_pg_database")


@pytest.fixture
def empty_pg_database(pg_database: str) -> str:
    """The session's PostgreSQL database with its tables dropped: what earlier tests left (an
    open approval, say) is not there, nor the proxies they started on it (start_proxy keeps
    them for the session): a running decider renews its lease, settles what stopped instances
    left and expires overdue approvals, in whatever the next test writes there."""
    _stop_proxies_on(pg_database)
    engine = open_engine(pg_database)
    Base.metadata.drop_all(engine)
    engine.dispose()
    return pg_database


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_engine(db_url)
    create_schema(engine)
    yield engine
    engine.dispose()


# --- the proxy and its upstream --------------------------------------------------------------


@pytest.fixture(scope="session")
def session_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    upstream = Upstream(tmp_path_factory.mktemp("upstream-certs")).start()
    yield upstream
    upstream.stop()


@pytest.fixture
def upstream(session_upstream: Upstream) -> Upstream:
    session_upstream.clear()
    return session_upstream


@pytest.fixture(scope="session")
def moto_port(
    session_upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """moto's server as the AWS upstream, serving TLS with the test upstream's certificate."""
    import subprocess
    import sys

    from tests.helpers.proxy import clean_env, free_port, wait_for_port

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    certs = session_upstream.cert_dir
    moto_server = Path(sys.executable).parent / "moto_server"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(moto_server), "-H", "127.0.0.1", "-p", str(port),
             "-c", str(certs / "server.pem"), "-k", str(certs / "server.key")],
            stdout=out, stderr=subprocess.STDOUT,
            env=clean_env() | {"MOTO_IAM_LOAD_MANAGED_POLICIES": "true"},
        )  # fmt: skip
    wait_for_port(port, process, log)
    yield port
    process.terminate()
    process.wait(10)


ProxyFactory = Callable[..., Proxy]
_STARTED: list[Proxy] = []  # every proxy start_proxy started this session


def _stop_proxies_on(db_url: str) -> None:
    running = [proxy for proxy in _STARTED if proxy.db_url == db_url]
    for proxy in running:  # all at once: each graceful shutdown takes its time
        proxy.interrupt()
    for proxy in running:
        proxy.stop()


@pytest.fixture(scope="session")
def start_proxy(
    tmp_path_factory: pytest.TempPathFactory, session_upstream: Upstream
) -> Iterator[ProxyFactory]:
    """Start `airlock run` with the upstream routed in; every proxy is stopped at the end."""
    started: list[Proxy] = []
    base = tmp_path_factory.mktemp("proxies")

    def start(
        *extra_args: str, db_url: str | None = None, routes: dict[str, int] | None = None
    ) -> Proxy:
        workdir = base / f"p{len(started)}"
        proxy = Proxy(
            workdir=workdir,
            db_url=db_url or f"sqlite:///{workdir / 'airlock.db'}",
            routes={
                "api.stripe.com": session_upstream.port,
                "api.example.com": session_upstream.port,
                **(routes or {}),
            },
            upstream_ca=session_upstream.ca_file,
            confdir=prepared_confdir(base),
            extra_args=extra_args,
        )
        started.append(proxy)
        _STARTED.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:  # all at once: each graceful shutdown takes its time
        proxy.interrupt()
    for proxy in started:
        proxy.stop()
