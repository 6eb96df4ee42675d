"""The homeserver link at start: the bot registered, the stored state checked to be this
homeserver's, the reconcile timer started, then the homeserver seen reaching us (ping). Each
step retries with a clear error until it works; a changed homeserver stops the bridge instead."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixError

from ..config import Config
from ..db.agent import AgentStore
from ..db.bridge_state import BridgeState
from ..errors import describe
from ..matrix.rooms import default_room_version
from .homeserver import HomeserverChanged
from .homeserver import check as check_homeserver
from .reconciler import Reconciler
from .scheduler import Scheduler

log = logging.getLogger("letta_appservice")
RETRYABLE = (aiohttp.ClientError, TimeoutError, MatrixError)


class HomeserverLink:
    def __init__(
        self,
        config: Config,
        *,
        bot_api: AppServiceAPI,
        reconciler: Reconciler,
        scheduler: Scheduler,
        state: BridgeState,
        agents: AgentStore,
        on_failure: Callable[[], None],
    ) -> None:
        self.config = config
        self.bot_api, self.bot_intent = bot_api, bot_api.bot_intent()
        self.reconciler, self.scheduler = reconciler, scheduler
        self.state, self.agents = state, agents
        self.on_failure = on_failure
        self.homeserver_ok = False
        self.ping_ms: int | None = None  # set once the homeserver has reached us
        # Why the bridge must stop on its own (the homeserver changed under it).
        self.failure: HomeserverChanged | None = None
        self._ready = asyncio.Event()  # set when the link works, or when failure is set

    async def register_bot(self) -> None:
        await self.bot_intent.ensure_registered()
        await self.bot_intent.whoami()
        await self.bot_intent.set_displayname(self.config.appservice.bot_displayname)
        self.reconciler.use_room_version(await default_room_version(self.bot_api))

    async def run(self) -> None:
        cfg = self.config
        delay = 1.0
        while True:
            try:
                await self.register_bot()
                await check_homeserver(
                    self.bot_api,
                    self.state,
                    self.agents,
                    self.reconciler.settings,
                    cfg.homeserver.address,
                )
                break
            except HomeserverChanged as e:
                log.error("The homeserver changed: %s. Stopping: run move-homeserver.", e)
                self.failure = e
                self._ready.set()
                self.on_failure()
                return
            except RETRYABLE as e:
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
                self.ping_ms = await self.bot_intent.appservice_ping(cfg.appservice.id)
                log.info(
                    "Homeserver reached us at %s (%d ms)", cfg.appservice.address, self.ping_ms
                )
                break
            except RETRYABLE as e:
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
        """Wait until the link works both ways; raises the reason if the bridge stopped on its
        own instead."""
        async with asyncio.timeout(timeout):
            await self._ready.wait()
        if self.failure is not None:
            raise self.failure
