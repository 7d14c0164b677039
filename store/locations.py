"""Where Airlock finds what it ships and keeps what it writes.

What it ships (mappings, policies, the catalog) sits beside its modules: in a checkout the
top-level folders, in an installed wheel `site-packages/airlock/…`, the same relative place.
What it writes (the database, the proxy's CA) goes to a data directory the user can write to,
never into site-packages: `--data-dir`, else $AIRLOCK_DATA_DIR, else the checkout itself when
Airlock runs from one (its git-ignored `certs/` and `airlock.db`), else `./airlock-data`.
"""

from __future__ import annotations

import contextlib
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


# What Airlock writes is its operator's alone: an agent run as another OS user (README, Reviewers)
# reads no run, approval or key. Made so when created; an existing folder or file is left as it
# is (it may be shared on purpose) and `loose_modes` names it at start.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(folder: Path) -> Path:
    """`folder`, created 0700 when it is not there, and so each missing folder above it (the
    data directory above `keys/`); an existing one is not changed."""
    folder = Path(folder)
    missing = [folder, *folder.parents]
    missing = list(reversed(missing[: next(i for i, p in enumerate(missing) if p.is_dir())]))
    for path in missing:
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            path.mkdir(mode=PRIVATE_DIR)
    return folder


def make_private_file(path: Path) -> None:
    """An empty file, 0600, where there is none: SQLite then opens it as an empty database and
    makes its -wal and -shm files with the same mode."""
    make_private_dir(Path(path).parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))


def loose_modes(data_dir: Path, private_files: list[Path]) -> list[str]:
    """What other OS users can read or change: each a line naming the path, its mode and the
    command that fixes it. The data directory counts when others may write to it, or read it
    while it is not the checkout Airlock runs from (whose other files are its source)."""
    found = []
    data_dir = Path(data_dir).resolve()
    try:
        mode = data_dir.stat().st_mode & 0o777
    except OSError:
        mode = 0
    exposed = 0o022 if data_dir == PACKAGE_ROOT else 0o077
    if mode & exposed:
        found.append(f"data directory {data_dir} is mode {mode:04o}: other users can "
                     f"{'change' if mode & 0o022 else 'read'} what is in it "
                     f"(chmod 700 {data_dir})")  # fmt: skip
    for path in private_files:
        try:
            mode = Path(path).stat().st_mode & 0o777
        except OSError:
            continue
        if mode & 0o077:
            found.append(f"{path} is mode {mode:04o}: other users can read it (chmod 600 {path})")
    return found
