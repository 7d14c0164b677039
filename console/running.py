"""The proxies running from a data directory, for `airlock reload`.

Each `airlock run` leaves `<data dir>/run/airlock-<port>.json` naming its pid, port and
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
