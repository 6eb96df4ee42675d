"""HTTP server the homeserver pushes to: transactions (stored before the 200), ping, user
query, and the operator endpoints /health, /ready and /metrics."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..db.inbox import InboxStore, unstorable
from ..metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("letta_appservice.web")

QueryUser = Callable[[str], Awaitable[bool]]
ReadyCheck = Callable[[], Awaitable[dict[str, Any]]]
# Gauges read from the database (bridged agents) are refreshed at most this often.
GAUGE_TTL = 30.0


def matrix_error(status: int, errcode: str, error: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error}, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Unknown paths and methods answer like a Matrix server, not with aiohttp's text page."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return matrix_error(404, "M_UNRECOGNIZED", "Unrecognized request")
    except web.HTTPMethodNotAllowed:
        return matrix_error(405, "M_UNRECOGNIZED", "Method not allowed")


class WebServer:
    def __init__(
        self,
        *,
        hs_token: str,
        max_body_size: int,
        inbox: InboxStore,
        on_stored: Callable[[], None],
        query_user: QueryUser,
        ready_check: ReadyCheck,
        metrics: Metrics,
        refresh_gauges: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._hs_token = hs_token.encode()
        self.inbox = inbox
        self.on_stored = on_stored
        self.query_user = query_user
        self.ready_check = ready_check
        self.metrics = metrics
        self.refresh_gauges = refresh_gauges
        self._gauges_at = float("-inf")
        self.app = web.Application(client_max_size=max_body_size, middlewares=[_json_errors])
        self._runner: web.AppRunner | None = None
        for prefix in ("/_matrix/app/v1", ""):  # "" = pre-v1 homeservers
            self.app.router.add_put(prefix + "/transactions/{txn_id}", self.transaction)
            self.app.router.add_get(prefix + "/users/{user_id}", self.user_query)
            self.app.router.add_get(prefix + "/rooms/{alias}", self.alias_query)
        self.app.router.add_post("/_matrix/app/v1/ping", self.ping)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/ready", self.ready)
        self.app.router.add_get("/metrics", self.metrics_page)

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("Listening on http://%s:%d", host, port)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    def _auth(self, request: web.Request) -> web.Response | None:
        """hs_token from the Authorization header or ?access_token=, compared in constant time:
        missing -> 401 M_UNAUTHORIZED, wrong -> 403 M_FORBIDDEN."""
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.query.get("access_token")
        if not token:
            return matrix_error(401, "M_UNAUTHORIZED", "Missing hs_token")
        # aiohttp hands over bytes that are not UTF-8 as lone surrogates: encode them back
        # instead of failing (a token that is not our ASCII token is simply wrong).
        if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self._hs_token):
            return matrix_error(403, "M_FORBIDDEN", "Invalid hs_token")
        return None

    async def transaction(self, request: web.Request) -> web.Response:
        if denied := self._auth(request):
            self.metrics.transactions.labels("denied").inc()
            return denied
        txn_id = request.match_info["txn_id"]
        try:
            body = json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            self.metrics.transactions.labels("too_large").inc()
            return matrix_error(413, "M_TOO_LARGE", "Transaction body too large")
        except (ValueError, UnicodeDecodeError):
            return matrix_error(400, "M_NOT_JSON", "Body is not valid JSON")
        except RecursionError:
            # Valid JSON nested deeper than Python parses: refused, never a 500 retried forever.
            return matrix_error(400, "M_BAD_JSON", "Body is nested too deeply")
        if not isinstance(body, dict) or not isinstance(body.get("events"), list):
            return matrix_error(400, "M_BAD_JSON", "Body must be an object with an events list")
        events, rejected = [], []
        for event in body["events"]:
            reason = unstorable(event)
            if reason is None:
                events.append(event)
            else:
                rejected.append(reason)
        if rejected:
            # Set aside alone: the rest of the transaction is stored and acknowledged.
            self.metrics.events.labels("rejected").inc(len(rejected))
            log.warning(
                "Transaction %.80r: set aside %d event(s) that cannot be stored (first: %s)",
                txn_id,
                len(rejected),
                rejected[0],
            )
        try:
            result = await self.inbox.store_transaction(txn_id, events)
        except Exception:
            # 500 makes the homeserver retry the same transaction later: nothing is lost.
            log.exception("Could not store transaction %s", txn_id)
            self.metrics.transactions.labels("error").inc()
            return matrix_error(500, "M_UNKNOWN", "Could not store the transaction")
        if result.duplicate_txn:
            self.metrics.transactions.labels("duplicate").inc()
        else:
            self.metrics.transactions.labels("stored").inc()
            self.metrics.events.labels("new").inc(result.new_events)
            self.metrics.events.labels("duplicate").inc(
                len(events) - result.new_events - result.rejected
            )
            self.metrics.events.labels("rejected").inc(result.rejected)
            if result.new_events:
                self.on_stored()
        return web.json_response({})

    async def ping(self, request: web.Request) -> web.Response:
        if denied := self._auth(request):
            return denied
        return web.json_response({})

    async def user_query(self, request: web.Request) -> web.Response:
        if denied := self._auth(request):
            return denied
        user_id = request.match_info["user_id"]
        try:
            known = await self.query_user(user_id)
        except Exception:
            log.exception("User query for %s failed", user_id)
            return matrix_error(500, "M_UNKNOWN", "User query failed")
        if known:
            return web.json_response({})
        return matrix_error(404, "M_NOT_FOUND", "No such user")

    async def alias_query(self, request: web.Request) -> web.Response:
        # Agent rooms get their aliases when they are created; nothing is made on demand.
        if denied := self._auth(request):
            return denied
        return matrix_error(404, "M_NOT_FOUND", "No such room alias")

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, _: web.Request) -> web.Response:
        checks = await self.ready_check()
        ok = all(v is True for v in checks.values())
        return web.json_response({"ready": ok, **checks}, status=200 if ok else 503)

    async def metrics_page(self, _: web.Request) -> web.Response:
        try:
            counts = await self.inbox.counts()  # kept in memory: no query per scrape
        except Exception:
            counts = {}
        for state, n in counts.items():
            self.metrics.inbox_depth.labels(state).set(n)
        now = time.monotonic()
        if self.refresh_gauges is not None and now - self._gauges_at >= GAUGE_TTL:
            self._gauges_at = now
            try:
                await self.refresh_gauges()
            except Exception:
                log.exception("Could not refresh metrics")
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
