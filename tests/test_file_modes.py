"""What Airlock writes is its operator's alone (review L1): the data directory is made 0700, the
SQLite store and its -wal and -shm 0600, the keys 0600; an existing folder or file with looser
modes is named at start and left as it is."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from airlock.console.cli import _loose_modes, _resolve_locations, build_parser
from airlock.store.keys import KEY_FILE, load_or_create_request_key
from airlock.store.schema import create_schema, open_engine


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual umask (022): what is not made private is readable by every user."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.mark.usefixtures("open_umask")
def test_a_new_store_and_its_folder_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    database = data / "airlock.db"
    engine = open_engine(f"sqlite:///{database}")
    create_schema(engine)
    with engine.connect() as conn:  # WAL open: the -wal and -shm files exist now
        conn.execute(text("SELECT count(*) FROM runs"))
        assert mode(data) == 0o700
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            assert path.exists() and mode(path) == 0o600, path
    engine.dispose()


@pytest.mark.usefixtures("open_umask")
def test_the_request_key_folder_is_private_too(tmp_path: Path) -> None:
    load_or_create_request_key(tmp_path / "data")
    assert mode(tmp_path / "data") == 0o700
    assert mode((tmp_path / "data" / KEY_FILE).parent) == 0o700
    assert mode(tmp_path / "data" / KEY_FILE) == 0o600


@pytest.mark.usefixtures("open_umask")
def test_run_names_an_existing_folder_or_store_others_can_read_and_leaves_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "shared"
    data.mkdir(mode=0o755)
    (data / "airlock.db").write_text("")
    os.chmod(data / "airlock.db", 0o644)
    args = build_parser().parse_args(["run", "--data-dir", str(data)])
    _resolve_locations(args)
    said = _loose_modes(args)
    assert any(f"data directory {data} is mode 0755" in line and "chmod 700" in line
               for line in said), said  # fmt: skip
    assert any(f"{data / 'airlock.db'} is mode 0644" in line for line in said), said
    assert mode(data) == 0o755 and mode(data / "airlock.db") == 0o644  # not changed

    os.chmod(data, 0o700)
    os.chmod(data / "airlock.db", 0o600)
    assert _loose_modes(args) == []
