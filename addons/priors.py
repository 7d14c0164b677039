"""What a released write replaces: for a mapping with `prior:` (pipeline/prior.py), the object is
read with the write's own credentials just before the write is forwarded, and the values at
the fields it sets are kept with the run's outcome, so that `airlock undo` can set them back.

The read goes out like any upstream connection (the same routes and upstream trust as
mitmproxy's), on the event loop, with h11 (mitmproxy's own HTTP/1 library); the credentials
are used for that read and never kept. A read that fails leaves the write as it was: it is
forwarded, and its run says why there is nothing to set back. An upstream proxy
(`--mode upstream:`) is not used for this read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.parse
from typing import Any

import certifi
import h11
from mitmproxy import ctx, http

from airlock.addons.runtime import Runtime
from airlock.pipeline.document import MAX_PARSED_BODY, build_document
from airlock.pipeline.mappings import Mapping, MappingError
from airlock.pipeline.prior import PriorSpec, prior_url, replaced_values
from airlock.pipeline.redaction import redact_text

log = logging.getLogger(__name__)
READ_TIMEOUT = 5.0  # seconds: the write waits for this read at most


class Priors:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def request(self, flow: http.HTTPFlow) -> None:
        """After the gate: only a write on its way to the upstream is read for."""
        if flow.response is not None or "airlock_released" not in flow.metadata:
            return
        mapping = self._mapping(flow)
        if mapping is None or mapping.prior is None:
            return
        try:
            flow.metadata["airlock_prior"] = await self._prior(flow, mapping, mapping.prior)
        except Exception as e:  # the write goes on; its undo will say why it cannot
            log.warning("could not read what %s replaces: %s", mapping.id, redact_text(repr(e)))
            flow.metadata["airlock_prior"] = {"prior_error": _said(e)}

    def _mapping(self, flow: http.HTTPFlow) -> Mapping | None:
        config, mapping_id = self.runtime.config, flow.metadata.get("airlock_mapping")
        if config is None or mapping_id is None:
            return None
        return config.mappings.by_id.get(mapping_id)

    async def _prior(
        self, flow: http.HTTPFlow, mapping: Mapping, spec: PriorSpec
    ) -> dict[str, Any]:
        document = build_document(flow.request, "")
        captures = mapping.captures(document) or {}
        try:
            action = mapping.apply(document, captures)
        except MappingError as e:
            return {"prior_error": f"the request's params could not be read: {e}"}
        url = prior_url(spec, {**action.context, **action.params})
        if url is None:
            return {"prior_error": "the request does not name the object it changes"}
        headers = [(n, v) for n in spec.headers for v in flow.request.headers.get_all(n)]
        async with asyncio.timeout(READ_TIMEOUT):
            status, body = await read(url, headers, _upstream_trust())
        if status != 200:
            return {"prior_error": f"the read of {url} answered {status}"}
        prior = replaced_values(spec, document.get("body"), json.loads(body))
        found: dict[str, Any] = {"prior": prior.values}
        if prior.unread:
            found["prior_unread"] = list(prior.unread)
        return found


def _upstream_trust() -> ssl.SSLContext:
    """As mitmproxy verifies upstream servers: its trusted CA option, else certifi's bundle."""
    options = ctx.options
    if options.ssl_insecure:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context
    cafile = options.ssl_verify_upstream_trusted_ca or certifi.where()
    return ssl.create_default_context(
        cafile=cafile, capath=options.ssl_verify_upstream_trusted_confdir
    )


async def read(
    url: str, headers: list[tuple[str, str]], context: ssl.SSLContext
) -> tuple[int, bytes]:
    """One GET, its status and body (at most MAX_PARSED_BODY bytes)."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    reader, writer = await asyncio.open_connection(
        host, parts.port or (443 if secure else 80),
        ssl=context if secure else None, server_hostname=host if secure else None,
    )  # fmt: skip
    try:
        connection = h11.Connection(h11.CLIENT)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        fields = [("Host", parts.netloc), ("Accept", "application/json"), ("Connection", "close")]
        writer.write(
            connection.send(h11.Request(method="GET", target=target, headers=fields + headers))
        )
        writer.write(connection.send(h11.EndOfMessage()))
        await writer.drain()
        return await _answer(connection, reader)
    finally:
        writer.close()


async def _answer(connection: h11.Connection, reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status, body = 0, bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_PARSED_BODY:
                raise ValueError("the object read is too large to keep")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, bytes(body)


def _said(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return f"the read did not answer within {READ_TIMEOUT:.0f} s"
    return f"the read failed ({type(error).__name__})"
