"""The mitmproxy that `airlock run` starts: a master with only the mitmproxy addons an Airlock
proxy uses, then the gate (addons/gate.py) as mitmdump would load it.

Every addon in mitmproxy's chain costs each request about 10 µs whatever it does: eight hook
dispatches (four lifecycle hooks, each followed by an update), each through a context manager and
a coroutine per addon (measured with mitmproxy 11.0: 35 addons in mitmdump's chain, 367 µs per
request; this chain of 9, 152 µs). That is more than the gate's own path costs the proxy, so
mitmdump's full chain is not worth keeping for features `airlock run` does not offer: replay,
map-local/remote, modify-body/headers, sticky cookies and auth, anticache, saving flows to a
file (unredacted), the mitm.it page, upstream, reverse and DNS modes. Several of those would
change or store requests beside the gate. Their options are unknown here: one set in the
confdir's `config.yaml` stops the start rather than being ignored (RefuseUnknownOptions).

`mitmdump -s addons/gate.py` (people running their own mitmproxy) keeps mitmproxy's full set.
"""

from __future__ import annotations

import argparse
import logging
import resource
from collections.abc import Sequence

from mitmproxy import ctx, master, options
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    errorcheck,
    next_layer,
    proxyserver,
    script,
    tlsconfig,
)
from mitmproxy.tools.main import run

from airlock.pipeline.redaction import redact_logs

log = logging.getLogger(__name__)


class RefuseUnknownOptions:
    """An option no loaded addon defines (set with --set or in the confdir's config.yaml) is
    kept by mitmproxy in case a script defines it later, and otherwise ignored: here it is an
    error, logged at start, on which mitmproxy's start-up check exits."""

    def running(self) -> None:
        unknown = sorted(ctx.options.deferred)
        if unknown:
            log.error(
                "unknown mitmproxy options %s: airlock run's mitmproxy has only the addons an "
                "Airlock proxy uses (console/proxy_master.py); run mitmdump -s addons/gate.py "
                "for the others",
                ", ".join(unknown),
            )


class GateMaster(master.Master):
    """In mitmdump's order: the core, refusing clients from outside unless authenticated
    (block_global), refusing h2c upgrades (a stream the gate could not read), the proxy server,
    the gate's script, protocol detection, TLS, and start-up error checks; mitmproxy's log."""

    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts, with_termlog=True)
        self.addons.add(
            RefuseUnknownOptions(), core.Core(), block.Block(), disable_h2c.DisableH2C(),
            proxyserver.Proxyserver(), script.ScriptLoader(), next_layer.NextLayer(),
            tlsconfig.TlsConfig(), errorcheck.ErrorCheck(),
        )  # fmt: skip
        redact_logs()  # the handlers above (terminal, start-up errors, log events) write redacted


def _parser(opts: options.Options) -> argparse.ArgumentParser:
    """What `airlock run` passes (-s, --set) and what mitmproxy's run reads from its arguments."""
    parser = argparse.ArgumentParser(prog="airlock run (mitmproxy)")
    for flag in ("--version", "--options", "--commands"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--set", dest="setoptions", action="append", default=[])
    opts.make_parser(parser, "scripts", metavar="SCRIPT", short="s")
    return parser


def run_proxy(arguments: Sequence[str]) -> None:
    """Until the proxy shuts down (SIGINT, SIGTERM), as mitmdump runs."""
    raise_open_files_limit()
    run(GateMaster, _parser, arguments)


def raise_open_files_limit() -> tuple[int, int]:
    """Every held request keeps its client's connection open (one file descriptor each, for up
    to the hold window): the soft limit, often 1,024, is raised to the hard one, which the
    operator sets. Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as e:  # a container that caps it lower: said, not fatal
            log.warning("cannot raise the open files limit from %d: %s", soft, e)
            return soft, soft
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]
