"""Admission control: at most N requests are served at once; the rest wait in the event loop.

Plain ``def`` routes and their dependencies run on a pool of threads and may hold a database
connection from one thread hop to the next. When more requests are in flight than there are
connections, threads block waiting for connections that are held by requests waiting for
threads, until the pool times out. Admitting no more requests than there are connections means a
request never waits for one. Long-lived event streams are not counted: they hold no connection
between polls.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send


class ConcurrencyLimit:
    def __init__(self, app: ASGIApp, limit: int, exempt_suffixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt_suffixes
        self._semaphore: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].endswith(self.exempt):
            await self.app(scope, receive, send)
            return
        if self._semaphore is None:  # created inside the running loop
            self._semaphore = asyncio.Semaphore(self.limit)
        async with self._semaphore:
            await self.app(scope, receive, send)
