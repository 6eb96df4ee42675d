"""Composition root: builds every part from the config and starts/stops them in order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import aiohttp
from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI, IntentAPI
from mautrix.appservice.state_store.asyncpg import PgASStateStore
from mautrix.errors import MatrixError
from mautrix.util.async_db import Database

from . import __version__
from .chat.router import Router
from .chat.turn import Conversations
from .chat.turn import Settings as ConversationSettings
from .commands import CommandProcessor
from .config import Config
from .db.agent import AgentStore
from .db.bridge_state import BridgeState
from .db.database import DatabaseURL, open_database
from .db.inbox import InboxEvent, InboxStore
from .db.invited_agent import InvitedAgentStore
from .db.room import RoomStore
from .db.sent_event import SentEventStore
from .db.turn import TurnStore
from .db.user_notice import UserNoticeStore
from .inbox import housekeeping
from .inbox.web import WebServer
from .inbox.worker import InboxWorker
from .letta import LettaClient
from .letta.errors import safe_url
from .matrix.ids import PuppetMatcher
from .matrix.puppets import Puppets
from .matrix.rooms import RateLimitMiddleware, appservice_api
from .metrics import Metrics
from .permissions import Permissions
from .reconcile.reconciler import Reconciler, describe
from .reconcile.scheduler import Scheduler

log = logging.getLogger("letta_appservice")
USER_AGENT = f"letta-appservice/{__version__}"


class App:
    """The running appservice. Start order: database -> every part, wired here and nowhere
    else -> web server (the homeserver can push) -> inbox worker -> homeserver bootstrap in the
    background (bot registration, ping, then the reconcile timer)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.started_at = time.time()
        self.homeserver_ok = False
        self.ping_ms: int | None = None  # set once the homeserver has reached us
        self._ready = asyncio.Event()
        self.is_puppet = PuppetMatcher.from_config(config)
        # Every homeserver request, counted (tests and benchmarks prove "no calls" with it).
        self.matrix_request_count = 0
        self.recent_matrix_requests: deque[tuple[str, str]] = deque(maxlen=500)
        self.db: Database | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = False
        self._http: aiohttp.ClientSession | None = None

    # --- wiring --------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self.db = await open_database(DatabaseURL.parse(cfg.appservice.database))
        self.state_store = PgASStateStore(self.db)
        await PgASStateStore.upgrade_table.upgrade(self.db)
        self.inbox = InboxStore(self.db)
        self.agents = AgentStore(self.db)
        rooms, state = RoomStore(self.db), BridgeState(self.db)
        permissions = Permissions(cfg.bridge.permissions)
        self._http = self._client_session()
        self.api: AppServiceAPI = appservice_api(cfg, self.state_store, self._http)
        self.bot: IntentAPI = self.api.bot_intent()
        self.letta = LettaClient(
            cfg.letta.base_url,
            cfg.letta.api_key,
            timeout=cfg.letta.timeout,
            page_size=cfg.letta.page_size,
            on_request=self.metrics.observe_letta,
        )
        self.puppets = Puppets(self.api, self.state_store)
        # timer -> reconciler -> Matrix
        self.reconciler = Reconciler(
            cfg,
            api=self.api,
            letta=self.letta,
            agents=self.agents,
            rooms=rooms,
            state=state,
            state_store=self.state_store,
            puppets=self.puppets,
            request_count=lambda: self.matrix_request_count,
        )
        self.scheduler = Scheduler(self._reconcile_pass, cfg.letta.sync_interval, state)
        # push -> durable inbox -> router -> Letta -> puppet reply
        turns, sent = TurnStore(self.db), SentEventStore(self.db)
        notices = UserNoticeStore(self.db)
        self.conversations = Conversations(
            settings=ConversationSettings.from_config(cfg),
            letta=self.letta,
            puppets=self.puppets,
            turns=turns,
            sent=sent,
            metrics=self.metrics,
        )
        self.commands = CommandProcessor(
            config=cfg,
            permissions=permissions,
            bot=self.bot,
            api=self.api,
            agents=self.agents,
            rooms=rooms,
            state=state,
            inbox=self.inbox,
            letta=self.letta,
            reconciler=self.reconciler,
            scheduler=self.scheduler,
            conversations=self.conversations,
            puppets=self.puppets,
            started_at=self.started_at,
            notices=notices,
        )
        self.router = Router(
            config=cfg,
            permissions=permissions,
            agents=self.agents,
            rooms=rooms,
            invited=InvitedAgentStore(self.db),
            notices=notices,
            state_store=self.state_store,
            puppets=self.puppets,
            conversations=self.conversations,
            before=self.handle_event,
            commands=self.commands,
        )
        # Lanes: one Letta request at a time per agent, in order; other events per room.
        self.worker = InboxWorker(
            self.inbox,
            self.router.handle,
            lane_key=self.router.lane_key,
            max_concurrency=cfg.letta.max_concurrency,
        )
        self.web = WebServer(
            hs_token=cfg.appservice.hs_token,
            max_body_size=cfg.appservice.max_body_size,
            inbox=self.inbox,
            on_stored=self.worker.wake,
            query_user=self.query_user,
            ready_check=self.ready_check,
            metrics=self.metrics,
            refresh_gauges=self._refresh_gauges,
        )
        await self.web.start(cfg.appservice.hostname, cfg.appservice.port)
        await self.worker.start()
        # Registers the bot, checks both directions, then starts the scheduler.
        self._tasks.append(asyncio.create_task(self._bootstrap(), name="bootstrap"))
        self._tasks.append(
            asyncio.create_task(
                housekeeping.run_periodically(self.inbox, sent, turns), name="housekeeping"
            )
        )
        self._tasks.append(asyncio.create_task(self._greet_letta(), name="letta-version"))
        log.info("letta-appservice %s started as %s", __version__, cfg.bot_mxid)

    async def _greet_letta(self) -> None:
        """Log the Letta server's version once at start (the client keeps it: the first
        message need not ask). Unreachable Letta is the reconciler's to report."""
        version = await self.letta.server_version(retry=True)
        if version:
            log.info("Letta %s at %s", version, safe_url(self.letta.base_url))

    async def stop(self) -> None:
        """Stop everything that was started, in reverse order; calling it again is a no-op."""
        if self._stopped:
            return
        self._stopped = True
        if hasattr(self, "web"):
            await self.web.stop()  # no new pushes; the homeserver keeps them until we are back
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if hasattr(self, "scheduler"):
            await self.scheduler.stop()
        if hasattr(self, "worker"):
            await self.worker.stop()
        if hasattr(self, "conversations"):
            await self.conversations.stop()
        if self._http:
            await self._http.close()
        if hasattr(self, "letta"):
            await self.letta.close()
        if self.db:
            await self.db.stop()
            self.db = None

    def _client_session(self) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()

        async def on_request_start(_s: Any, _c: Any, params: aiohttp.TraceRequestStartParams):
            self.matrix_request_count += 1
            self.recent_matrix_requests.append((params.method, params.url.path))
            self.metrics.matrix_requests.labels(params.method).inc()

        trace.on_request_start.append(on_request_start)
        ssl = None if self.config.homeserver.verify_ssl else False
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, ssl=ssl),
            headers={"User-Agent": USER_AGENT},
            trace_configs=[trace],
            middlewares=(RateLimitMiddleware(),),
        )

    # --- homeserver ----------------------------------------------------------------------------

    async def _bootstrap(self) -> None:
        """Register the bot and check both directions of the homeserver link, retrying with a
        clear error until they work (never exiting silently)."""
        cfg = self.config
        delay = 1.0
        while True:
            try:
                await self.bot.ensure_registered()
                await self.bot.whoami()
                await self.bot.set_displayname(cfg.appservice.bot_displayname)
                self.reconciler.use_room_version(await self._default_room_version())
                break
            except (aiohttp.ClientError, TimeoutError, MatrixError) as e:
                log.error(
                    "Cannot use the homeserver at %s as %s: %s. Check homeserver.address and "
                    "that registration.yaml is loaded by the homeserver. Retrying in %.0f s.",
                    cfg.homeserver.address,
                    cfg.bot_mxid,
                    describe(e),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)
        self.homeserver_ok = True
        self.scheduler.start()
        delay = 1.0
        while True:
            try:
                self.ping_ms = await self.bot.appservice_ping(cfg.appservice.id)
                log.info(
                    "Homeserver reached us at %s (%d ms)", cfg.appservice.address, self.ping_ms
                )
                break
            except (aiohttp.ClientError, TimeoutError, MatrixError) as e:
                log.error(
                    "The homeserver cannot reach this appservice at %s: %s. Check that "
                    "appservice.address (the registration url) is reachable from the "
                    "homeserver and that the registration id is %r. Retrying in %.0f s.",
                    cfg.appservice.address,
                    describe(e),
                    cfg.appservice.id,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 300)
        self._ready.set()

    async def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the homeserver link works both ways."""
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    async def _reconcile_pass(self, full: bool) -> Any:
        summary = await self.reconciler.run_pass(full)
        self.metrics.observe_reconcile(summary)
        return summary

    async def _default_room_version(self) -> str:
        caps = await self.bot.api.request(Method.GET, Path.v3.capabilities)
        versions = (caps.get("capabilities") or {}).get("m.room_versions") or {}
        return str(versions.get("default") or "")

    async def query_user(self, mxid: str) -> bool:
        """User query: only puppets of agents we bridge exist (registered on demand)."""
        if not self.is_puppet(mxid) or not await self.agents.get_by_mxid(mxid):
            return False
        await self.api.intent(mxid).ensure_registered()
        return True

    async def _refresh_gauges(self) -> None:
        for state, n in (await self.agents.counts()).items():
            self.metrics.agents.labels(state).set(n)

    async def ready_check(self) -> dict[str, Any]:
        try:
            db_ok = self.db is not None and await self.db.fetchval("SELECT 1") == 1
        except Exception:
            db_ok = False
        return {"database": db_ok, "homeserver": self.homeserver_ok}

    # --- events --------------------------------------------------------------------------------

    async def handle_event(self, event: InboxEvent) -> None:
        """Work on one stored event. The state store learns room state here (memberships,
        power levels) because we serve transactions ourselves instead of mautrix."""
        from mautrix.types import Event

        evt = Event.deserialize(event.event)
        await self.state_store.update_state(evt)
        if await self.reconciler.observe(evt):
            self.scheduler.poke()  # drift (a kick, a removed space child): repair soon
        log.debug("Handled %s %s in %s", event.event_type, event.event_id, event.room_id)
