"""The proxies running from a data directory, for `airlock reload` and for the reviewers'
commands (which read the reviewers file and the mappings the proxy runs with).

Each `airlock run` leaves `<data dir>/run/airlock-<port>.json` naming its pid, port, store and
configuration folders while it runs; a file whose process is gone is stale and removed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from airlock.store.instances import process_alive

RUN_FOLDER = "run"


@dataclass(frozen=True)
class Running:
    pid: int
    port: int
    mappings: str
    policies: str
    db: str = ""  # the store, its password hidden (store_name); "": written before it was named


def store_name(url: str) -> str:
    """A store's URL as a running proxy names it, comparable and without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from airlock.store.schema import normalise_url

    try:
        return make_url(normalise_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return ""


def proxies_on(data_dir: Path, url: str) -> list[Running]:
    """The proxies running from this data directory on this store."""
    store = store_name(url)
    return [p for p in running_proxies(data_dir) if p.db in ("", store)]


def announce(data_dir: Path, running: Running) -> Path:
    """Name this process as a running proxy until it exits."""
    folder = Path(data_dir) / RUN_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"airlock-{running.port}.json"
    path.write_text(json.dumps(asdict(running)))
    atexit.register(_forget, path, running.pid)
    return path


def _forget(path: Path, pid: int) -> None:
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text())["pid"] == pid:  # not a later proxy's on the same port
            path.unlink()


def running_proxies(data_dir: Path) -> list[Running]:
    found = []
    for path in sorted((Path(data_dir) / RUN_FOLDER).glob("airlock-*.json")):
        try:
            proxy = Running(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if process_alive(proxy.pid):
            found.append(proxy)
        else:
            path.unlink(missing_ok=True)
    return found
