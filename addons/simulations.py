"""Simulated writes (pipeline/simulation.py): answered by Airlock in the vendor's own format,
never forwarded; one the policies would block is refused as blocked. The synthetic answer is
the run's outcome."""

from __future__ import annotations

import time

from mitmproxy import http

from airlock.addons.refusals import Refusals
from airlock.addons.runtime import Runtime
from airlock.pipeline.document import build_document
from airlock.pipeline.policies import BLOCK
from airlock.pipeline.run_record import RunSummary
from airlock.pipeline.simulation import synthetic_response


class Simulations:
    def __init__(self, runtime: Runtime, refusals: Refusals) -> None:
        self.runtime = runtime
        self.refusals = refusals

    def answer(self, flow: http.HTTPFlow, run: RunSummary) -> None:
        if run.shadow_decision == BLOCK:  # the trial shows the agent what would be refused
            self.refusals.refuse(flow, run, run.reason)
            return
        started = time.perf_counter()
        synthetic = synthetic_response(build_document(flow.request, run.agent), run.operation)
        flow.metadata["airlock_answered"] = True
        flow.response = http.Response.make(
            synthetic.status,
            synthetic.body,
            {**synthetic.headers, "X-Airlock-Decision": run.decision,
             "X-Airlock-Request-Id": run.id},
        )  # fmt: skip
        self.runtime.record_outcome(
            run.id, "simulated", synthetic.status, (time.perf_counter() - started) * 1000,
            {"synthetic": synthetic.shown()},
        )  # fmt: skip
