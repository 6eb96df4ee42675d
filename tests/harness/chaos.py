"""ChaosProxy: stands between the appservice and a server (the homeserver, Letta) and fails
requests at random, from a seeded generator: error statuses, 429s with ``retry_after_ms``,
connections reset before the request is forwarded or after it was served (the work done, the
answer lost), requests held past the client's timeout, slow answers, and streamed answers cut
part way."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import aiohttp
import attrs
from aiohttp import web

_HOP = {"host", "content-length", "transfer-encoding", "content-encoding", "connection"}


@attrs.define
class FaultRates:
    """The chance of each fault per request (at most one fault per request)."""

    error: float = 0.0  # 500, 502 or 503 instead of forwarding
    rate_limit: float = 0.0  # 429 with retry_after_ms
    reset: float = 0.0  # the connection closed before forwarding
    lost: float = 0.0  # forwarded and served, then the connection closed
    hang: float = 0.0  # held for ``hang_for`` seconds, then closed (a client timeout)
    slow: float = 0.0  # forwarded after up to a second
    cut: float = 0.0  # a streamed answer cut after a few of its bytes


class ChaosProxy:
    def __init__(
        self, upstream: str, rng: random.Random, rates: FaultRates, hang_for: float = 5.0
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.rng = rng
        self.rates = rates
        self.hang_for = hang_for
        self.faults: Counter[str] = Counter()  # injected, by kind
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    def calm(self) -> None:
        """No more faults from now on."""
        self.rates = FaultRates()

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._http = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _pick(self) -> str | None:
        roll = self.rng.random()
        for kind, rate in attrs.asdict(self.rates).items():
            if kind == "cut":  # decided once the answer turns out to be streamed
                continue
            if roll < rate:
                self.faults[kind] += 1
                return kind
            roll -= rate
        return None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        fault = self._pick()
        if fault == "error":
            status = self.rng.choice((500, 502, 503))
            body = {"errcode": "M_UNKNOWN", "error": "Injected failure", "detail": "Injected"}
            return web.json_response(body, status=status)
        if fault == "rate_limit":
            wait = self.rng.randint(10, 300)
            body = {"errcode": "M_LIMIT_EXCEEDED", "error": "Slow down", "retry_after_ms": wait}
            return web.json_response(body, status=429)
        if fault in ("reset", "hang"):
            if fault == "hang":
                await asyncio.sleep(self.hang_for)
            return _drop(request)
        if fault == "slow":
            await asyncio.sleep(self.rng.random())
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._http.request(
            request.method,
            self.upstream + request.rel_url.raw_path_qs,
            headers=headers,
            data=await request.read(),
        ) as upstream:
            if fault == "lost":
                await upstream.read()
                return _drop(request)
            out = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP},
            )
            streamed = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
            cut_at = None
            if streamed and self._pick_cut():
                cut_at = self.rng.randint(1, 3000)
            await out.prepare(request)
            written = 0
            async for chunk in upstream.content.iter_any():
                if cut_at is not None and written + len(chunk) >= cut_at:
                    await out.write(chunk[: cut_at - written])
                    return _drop(request, out)
                await out.write(chunk)
                written += len(chunk)
            await out.write_eof()
            return out

    def _pick_cut(self) -> bool:
        if self.rng.random() < self.rates.cut:
            self.faults["cut"] += 1
            return True
        return False


def _drop(request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """Close the connection without (the rest of) an answer."""
    if request.transport is not None:
        request.transport.close()
    return response if response is not None else web.Response(status=599)
