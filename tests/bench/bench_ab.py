"""`make bench-ab BASE=<git revision>`: this checkout against another revision, interleaved.

On a noisy machine one `make bench` swings by more than most changes make. This starts bare
mitmdump, Airlock at BASE (a temporary git worktree) and Airlock from this checkout side by side,
against one upstream, and measures the three in turn, round after round. It prints each round and
the medians of the per-round ratio and added p50: compare those, not single runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from tests.bench.bench_proxy import (
    Result,
    measure,
    start_airlock,
    start_bare,
    start_upstream,
    stop_all,
    write_bulk_mappings,
)
from tests.helpers.proxy import PROJECT_ROOT, free_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="git revision to compare this checkout with, e.g. HEAD~3")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--mappings", type=int, default=1000, help="extra mapping rules loaded")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="airlock-bench-ab-"))
    base = work / "base"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(base), args.base],
                   cwd=PROJECT_ROOT, check=True)  # fmt: skip
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstream, upstream_port, upstream_ca = start_upstream(work)
        processes.append(upstream)
        # Each revision with its own shipped mappings (the format may have grown between them)
        for name, checkout in (("base", base), ("this", PROJECT_ROOT)):
            write_bulk_mappings(work / f"mappings-{name}", args.mappings, checkout)
        bare, bare_port, bare_conf = start_bare(work, upstream_port, upstream_ca)
        processes.append(bare)
        targets = {"bare": (bare_port, bare_conf)}
        imports = {"base": base_imports(base, work / "base-imports"), "this": PROJECT_ROOT}
        for name, checkout in (("base", base), ("this", PROJECT_ROOT)):
            process, port, conf = start_airlock(
                checkout, work, name, upstream_port, upstream_ca, work / f"mappings-{name}",
                free_port(),
                pythonpath=imports[name],
            )  # fmt: skip
            processes.append(process)
            targets[name] = (port, conf)
            loaded = [line for line in (work / f"{name}.log").read_text().splitlines()
                      if "Loading script" in line]  # fmt: skip
            print(f"{name}: {loaded[0].split('] ', 1)[-1] if loaded else '(no script line)'}")
        results: dict[str, list[Result]] = {name: [] for name in targets}
        for round_number in range(1, args.rounds + 1):
            for name, (port, conf) in targets.items():
                ca = conf / "mitmproxy-ca-cert.pem"
                results[name].append(measure(name, port, ca, args.concurrency, args.requests))
            shown = "  ".join(
                f"{n} {r[-1].rps:.0f} req/s p50 {r[-1].p50_ms:.2f} ms" for n, r in results.items()
            )
            print(f"round {round_number}: {shown}", flush=True)
        print(f"concurrency {args.concurrency}, {args.rounds} rounds, medians per round:")
        for name in ("base", "this"):
            pairs = list(zip(results[name], results["bare"], strict=True))
            ratio = statistics.median(a.rps / b.rps for a, b in pairs)
            added = statistics.median(a.p50_ms - b.p50_ms for a, b in pairs)
            label = args.base if name == "base" else "this checkout"
            print(f"  {label}: {ratio:.3f}x bare throughput, {added:+.3f} ms added p50")
        return 0
    finally:
        stop_all(processes)
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=PROJECT_ROOT)
        shutil.rmtree(work, ignore_errors=True)


def base_imports(checkout: Path, folder: Path) -> Path:
    """A folder whose `airlock/` maps each airlock.* package to `checkout`'s own folder, as its
    pyproject.toml's package-dir does, for PYTHONPATH. The virtualenv's editable install maps
    airlock.* to this checkout: without this, "BASE" ran this checkout's code too (until
    2026-12-04, every bench-ab since the airlock.* package compared this checkout with itself)."""
    with (checkout / "pyproject.toml").open("rb") as file:
        mapping = tomllib.load(file)["tool"]["setuptools"].get("package-dir", {})
    packages = {name.split(".", 1)[1]: path for name, path in mapping.items()
                if name.startswith("airlock.")}  # fmt: skip
    if not packages:
        raise SystemExit("BASE has no airlock.* package (it predates it): pick a later revision")
    (folder / "airlock").mkdir(parents=True)
    for name, path in packages.items():
        (folder / "airlock" / name).symlink_to(checkout / path, target_is_directory=True)
    return folder


if __name__ == "__main__":
    sys.exit(main())
