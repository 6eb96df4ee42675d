"""Composition root: builds every part from the config and starts/stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from mautrix.appservice import AppServiceAPI, IntentAPI
from mautrix.util.async_db import Database

from . import __version__
from .chat.approvals import Cards
from .chat.conversations import RoomConversations
from .chat.loops import LoopGuard
from .chat.media import MediaIntake
from .chat.memberships import Memberships
from .chat.reactions import Reactions
from .chat.router import Router
from .chat.transcribe import Transcriber
from .chat.turn import Conversations, TurnSettings
from .chat.uploads import AgentFiles
from .commands import CommandProcessor, Management, Services
from .config import Config
from .db.agent import AgentStore
from .db.approval import ApprovalStore
from .db.bridge_state import BridgeState
from .db.database import DatabaseURL, open_database, open_inbox_database
from .db.inbox import InboxEvent, InboxStore
from .db.invited_agent import InvitedAgentStore
from .db.letta_conversation import LettaConversationStore
from .db.room import RoomStore
from .db.sent_event import SentEventStore
from .db.turn import TurnStore
from .db.user_notice import UserNoticeStore
from .errors import log_failure
from .identity import Identity
from .inbox import housekeeping
from .inbox.web import WebServer
from .inbox.worker import InboxWorker
from .letta import LettaClient
from .letta.conversations import TurnCalls
from .letta.errors import LettaError, safe_url
from .letta.folders import Folders
from .matrix.puppets import Puppets
from .matrix.rooms import RateLimitMiddleware, appservice_api
from .matrix.state_store import StateStore
from .metrics import Metrics
from .permissions import Permissions
from .reconcile.apply import Applier
from .reconcile.drift import DriftCheck
from .reconcile.link import HomeserverLink
from .reconcile.plan import ReconcileSettings
from .reconcile.reconciler import PassSummary, Reconciler
from .reconcile.scheduler import Scheduler
from .reconcile.space import Space
from .tools import Tools, tool_sync

log = logging.getLogger("letta_appservice")
USER_AGENT = f"letta-appservice/{__version__}"
LANES_IN_FLIGHT = 64  # inbox lanes handled at once (a lane waiting for a Letta slot is cheap)


class App:
    """The running appservice. Start order: database -> every part, wired here and nowhere
    else -> web server (the homeserver can push) -> inbox worker -> homeserver bootstrap in the
    background (bot registration, ping, then the reconcile timer). ``stop()`` undoes what
    was started, in reverse."""

    db: Database
    inbox_db: Database  # the inbox's own connection on SQLite (db itself on PostgreSQL)
    state_store: StateStore
    inbox: InboxStore
    agents: AgentStore
    bot_api: AppServiceAPI
    bot_intent: IntentAPI
    letta: LettaClient
    puppets: Puppets
    reconciler: Reconciler
    scheduler: Scheduler
    conversations: Conversations
    room_conversations: RoomConversations
    commands: CommandProcessor
    router: Router
    worker: InboxWorker
    web: WebServer
    tools: Tools

    def __init__(self, config: Config, on_failure: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.identity = Identity.from_config(config)
        self.metrics = Metrics()
        self.started_at = time.time()
        self._on_failure = on_failure  # the homeserver changed under us: the CLI stops
        # Every homeserver request, counted (tests and benchmarks prove "no calls" with it).
        self.matrix_request_count = 0
        self.recent_matrix_requests: deque[tuple[str, str]] = deque(maxlen=500)
        self._tasks: list[asyncio.Task[Any]] = []
        self._started = contextlib.AsyncExitStack()  # what stop() undoes, last first

    # --- wiring --------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        await self._open()
        await self.web.start(cfg.appservice.hostname, cfg.appservice.port)
        self._started.push_async_callback(self.web.stop)
        await self.worker.start()
        self._started.push_async_callback(self.worker.stop)
        # Registers the bot, checks both directions, then starts the scheduler.
        self._spawn(self.link.run(), "bootstrap")
        self._spawn(housekeeping.run_periodically(self._prunable), "prune")
        self._spawn(self._greet_letta(), "letta-version")
        self._started.push_async_callback(self._cancel_tasks)
        log.info("letta-appservice %s started as %s", __version__, cfg.bot_mxid)

    async def provision(self) -> PassSummary:
        """``move-homeserver`` once the old state is set aside: the bot on the new homeserver,
        then one full reconcile pass (puppets, rooms, space); nothing is served."""
        await self._open()
        await self.link.register_bot()
        return await self._reconcile_pass(full=True)

    async def _open(self) -> None:
        """The database, the clients and every part, wired; nothing running yet."""
        cfg = self.config
        url = DatabaseURL.parse(cfg.appservice.database)
        self.db = await open_database(url)
        self._started.push_async_callback(self.db.stop)
        self.inbox_db = await open_inbox_database(url, self.db)
        if self.inbox_db is not self.db:
            self._started.push_async_callback(self.inbox_db.stop)
        self.state_store = StateStore(self.db)
        await StateStore.upgrade_table.upgrade(self.db)
        http = self._client_session()
        self._started.push_async_callback(http.close)
        self.letta = LettaClient(
            cfg.letta.base_url,
            cfg.letta.api_key,
            timeout=cfg.letta.timeout,
            page_size=cfg.letta.page_size,
            on_request=self.metrics.observe_letta,
        )
        self._started.push_async_callback(self.letta.close)
        self.transcriber = Transcriber(cfg.media)
        self._started.push_async_callback(self.transcriber.close)
        self.bot_api = appservice_api(cfg, self.state_store, http)
        self.bot_intent = self.bot_api.bot_intent()
        self.puppets = Puppets(self.bot_api, self.state_store)
        self._wire(cfg)
        self._started.push_async_callback(self.conversations.stop)
        self._started.push_async_callback(self.tools.stop)
        self._started.push_async_callback(self.scheduler.stop)

    def _wire(self, cfg: Config) -> None:
        """Every part of both flows, each given what it needs."""
        db, identity = self.db, self.identity
        self.inbox, self.agents = InboxStore(self.inbox_db), AgentStore(db)
        rooms, state, notices = RoomStore(db), BridgeState(db), UserNoticeStore(db)
        self._turns, self._sent = TurnStore(db), SentEventStore(db)
        permissions = Permissions.from_config(cfg)
        tools_in_letta = tool_sync(cfg, self.letta, db)
        # timer -> reconciler -> Matrix
        settings = ReconcileSettings.from_config(cfg)
        self.reconciler = Reconciler(
            cfg,
            settings=settings,
            identity=identity,
            bot_api=self.bot_api,
            letta=self.letta,
            agents=self.agents,
            space=Space(settings, self.bot_api, state),
            drift=DriftCheck(settings, self.state_store),
            applier=Applier(
                settings=settings,
                bot_api=self.bot_api,
                puppets=self.puppets,
                agents=self.agents,
                rooms=rooms,
                state_store=self.state_store,
            ),
            request_count=lambda: self.matrix_request_count,
            on_agents=tools_in_letta.on_pass,
        )
        self.scheduler = Scheduler(self._reconcile_pass, cfg.letta.sync_interval, state)
        self.link = HomeserverLink(
            cfg,
            bot_api=self.bot_api,
            reconciler=self.reconciler,
            scheduler=self.scheduler,
            state=state,
            agents=self.agents,
            on_failure=self._on_failure,
        )
        # push -> durable inbox -> router -> Letta -> puppet reply
        self.room_conversations = RoomConversations(
            TurnCalls(self.letta), LettaConversationStore(db), cfg.letta.conversations
        )
        approvals = ApprovalStore(db)
        cards = Cards(store=approvals, puppets=self.puppets)
        self._prunable = {
            "inbox": self.inbox,
            "sent_event": self._sent,
            "letta_turn": self._turns,
            "approval": approvals,
        }
        self.conversations = Conversations(
            settings=TurnSettings.from_config(cfg),
            rooms=self.room_conversations,
            intake=MediaIntake(cfg.media, Folders(self.letta), self.transcriber),
            puppets=self.puppets,
            turns=self._turns,
            sent=self._sent,
            metrics=self.metrics,
            on_card=cards.opened,
            files=AgentFiles(cfg.media, self.letta),
        )
        services = Services(
            config=cfg,
            permissions=permissions,
            bot_intent=self.bot_intent,
            bot_api=self.bot_api,
            agents=self.agents,
            rooms=rooms,
            state=state,
            inbox=self.inbox,
            letta=self.letta,
            reconciler=self.reconciler,
            scheduler=self.scheduler,
            conversations=self.conversations,
            room_conversations=self.room_conversations,
            puppets=self.puppets,
            started_at=self.started_at,
            tools=tools_in_letta,
        )
        management = Management(
            bot_api=self.bot_api, bot_mxid=cfg.bot_mxid, permissions=permissions, rooms=rooms
        )
        self.commands = CommandProcessor(
            services=services, identity=identity, management=management, notices=notices
        )
        invited = InvitedAgentStore(db)
        memberships = Memberships(
            config=cfg,
            identity=identity,
            permissions=permissions,
            agents=self.agents,
            rooms=rooms,
            invited=invited,
            notices=notices,
            state_store=self.state_store,
            puppets=self.puppets,
            bot_invites=self.commands,
        )
        self.router = Router(
            config=cfg,
            identity=identity,
            permissions=permissions,
            agents=self.agents,
            rooms=rooms,
            invited=invited,
            notices=notices,
            state_store=self.state_store,
            puppets=self.puppets,
            conversations=self.conversations,
            reactions=Reactions(
                policy=cfg.bridge.approvers,
                identity=identity,
                permissions=permissions,
                agents=self.agents,
                notices=notices,
                cards=cards,
                conversations=self.conversations,
            ),
            memberships=memberships,
            commands=self.commands,
            before=self.handle_event,
            loops=LoopGuard(bot_users=cfg.guards.bot_users, state=state),
        )
        # Lanes: one Letta request at a time per agent, in order; other events per room.
        # Letta's own cap (letta.max_concurrency) is held by turns only (Conversations): the
        # lanes' cap is far larger, so commands and housekeeping never wait behind turns.
        self.worker = InboxWorker(
            self.inbox,
            self.router.handle,
            lane_key=self.router.lane_key,
            max_concurrency=max(LANES_IN_FLIGHT, 4 * cfg.letta.max_concurrency),
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
        self.tools = Tools(
            cfg,
            sync=tools_in_letta,
            identity=identity,
            permissions=permissions,
            puppets=self.puppets,
            agents=self.agents,
            rooms=rooms,
            invited=invited,
            conversations=self.conversations,
            metrics=self.metrics,
        )
        self.tools.mount(self.web.app)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(log_failure(log, "Background task"))
        self._tasks.append(task)

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _greet_letta(self) -> None:
        """Log the Letta server's version once at start (the client keeps it: the first
        message need not ask). Unreachable Letta is the reconciler's to report."""
        version = await self.letta.server_version(retry=True)
        if version:
            log.info("Letta %s at %s", version, safe_url(self.letta.base_url))
        with contextlib.suppress(LettaError):  # says so once when there are no conversations
            await self.room_conversations.enabled()

    async def stop(self) -> None:
        """Stop everything that was started, in reverse order (the web server first: the
        homeserver keeps new pushes until we are back); calling it again is a no-op."""
        await self._started.aclose()

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

    async def wait_ready(self, timeout: float = 60) -> None:
        await self.link.wait_ready(timeout)

    async def _reconcile_pass(self, full: bool) -> PassSummary:
        summary = await self.reconciler.run_pass(full)
        self.metrics.observe_reconcile(summary)
        return summary

    async def query_user(self, mxid: str) -> bool:
        """User query: only puppets of agents we bridge exist (registered on demand)."""
        if not self.identity.is_puppet(mxid) or not await self.agents.get_by_mxid(mxid):
            return False
        await self.bot_api.intent(mxid).ensure_registered()
        return True

    async def _refresh_gauges(self) -> None:
        for state, n in (await self.agents.counts()).items():
            self.metrics.agents.labels(state).set(n)

    async def ready_check(self) -> dict[str, Any]:
        try:
            db_ok = await self.db.fetchval("SELECT 1") == 1
        except Exception:
            db_ok = False
        return {"database": db_ok, "homeserver": self.link.homeserver_ok}

    # --- events --------------------------------------------------------------------------------

    async def handle_event(self, event: InboxEvent) -> None:
        """Work on one stored event. The state store learns room state here (memberships,
        power levels) because we serve transactions ourselves instead of mautrix."""
        # Both only look at state events (parsing costs); a malformed one is passed over.
        if "state_key" in event.event and (evt := event.parsed) is not None:
            await self.state_store.update_state(evt)
            if await self.reconciler.observe(evt):
                self.scheduler.poke()  # drift (a kick, a removed space child): repair soon
        log.debug("Handled %s %s in %s", event.event_type, event.event_id, event.room_id)
