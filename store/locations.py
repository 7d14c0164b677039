"""Where Airlock finds what it ships and keeps what it writes.

What it ships (mappings, policies, the catalog) sits beside its modules: in a checkout the
top-level folders, in an installed wheel `site-packages/airlock/…`, the same relative place.
What it writes (the database, the proxy's CA) goes to a data directory the user can write to,
never into site-packages: `--data-dir`, else $AIRLOCK_DATA_DIR, else the checkout itself when
Airlock runs from one (its git-ignored `certs/` and `airlock.db`), else `./airlock-data`.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_VARIABLE = "AIRLOCK_DATA_DIR"
DATABASE_NAME = "airlock.db"
CA_FOLDER = "certs"


def shipped(name: str) -> Path:
    """A folder that ships with Airlock: 'mappings', 'policies', 'catalog'."""
    return PACKAGE_ROOT / name


def running_from_checkout() -> bool:
    return (PACKAGE_ROOT / "pyproject.toml").is_file() and (PACKAGE_ROOT / ".git").exists()


def default_data_dir() -> Path:
    named = os.environ.get(DATA_DIR_VARIABLE)
    if named:
        return Path(named).resolve()
    if running_from_checkout():
        return PACKAGE_ROOT
    return Path.cwd() / "airlock-data"


def database_url(data_dir: Path) -> str:
    """The embedded SQLite store inside a data directory."""
    return f"sqlite:///{Path(data_dir).resolve() / DATABASE_NAME}"


def ca_dir(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / CA_FOLDER
