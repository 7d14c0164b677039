"""The reviewer console driven as a reviewer drives it: textual's pilot, keys pressed on the
one held request, until what the test waits for happened."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from textual.widgets import DataTable, Input

from airlock.console.review import ReviewApp
from airlock.store.schema import open_engine


def review_in_console(
    db_url: str, keys: list[str], done: Callable[[], bool], reviewer: str = "alice"
) -> None:
    """Open the console on the store, check one request is held, press `keys` ("type:TEXT"
    types TEXT into the open prompt), then wait until `done()` (at most 10 s)."""
    engine = open_engine(db_url)

    async def scenario() -> None:
        app = ReviewApp(engine, reviewer, refresh_seconds=0.1)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.3)
            assert app.query_one("#queue", DataTable).row_count == 1
            for key in keys:
                if key.startswith("type:"):
                    app.screen.query_one(Input).value = key.removeprefix("type:")
                else:
                    await pilot.press(key)
                await pilot.pause(0.1)
            for _ in range(200):
                await pilot.pause(0.05)
                if done():
                    break

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()
