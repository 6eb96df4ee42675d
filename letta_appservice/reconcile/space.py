"""The bridge's space (created once, adopted or recreated when needed) and the full drift
check of the space and the agent rooms."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixRequestError
from mautrix.types import RoomID

from ..db.bridge_state import BridgeState
from ..matrix import rooms
from ..matrix.ids import agent_localpart
from .plan import BOT, INVITE_PREFIX, ReconcileSettings

log = logging.getLogger("letta_appservice.reconciler")
SPACE_KEY, SPACE_NAME_KEY = "space_id", "space_name"
SPACE_AGENT_ID = "space"  # the space's alias is the username template with agent_id="space"


def gone(e: MatrixRequestError) -> bool:
    """The room cannot be entered any more (unknown to the homeserver, or we were banned)."""
    return e.http_status in (403, 404)


async def adopt_alias(bot_api: AppServiceAPI, alias: str) -> RoomID:
    """The room behind one of our aliases, with the bot (back) in it."""
    room_id = await rooms.resolve_alias(bot_api, alias)
    if room_id is None:
        raise RuntimeError(f"{alias} was in use but does not resolve")
    await rooms.join(bot_api, room_id)  # a no-op when already joined
    return room_id


async def invite_quietly(bot_api: AppServiceAPI, room_id: str, user_id: str) -> None:
    try:
        await rooms.invite(bot_api, room_id, user_id)
    except MatrixRequestError as e:
        # Already in the room, or banned by someone: nothing the bridge should force.
        if e.http_status != 403:
            raise
        log.debug("Not inviting %s to %s: %s", user_id, room_id, e.message)


class Space:
    """The one space holding every active agent room; its id lives in bridge_state."""

    def __init__(
        self, settings: ReconcileSettings, bot_api: AppServiceAPI, state: BridgeState
    ) -> None:
        self.s = settings
        self.bot_api = bot_api
        self.state = state
        self.id: str | None = None
        self._name: str | None = None

    @property
    def alias(self) -> str:
        return self.s.alias(SPACE_AGENT_ID)

    async def load(self) -> str | None:
        if self.id is None:
            self.id = await self.state.get(SPACE_KEY)
        return self.id

    async def ensure(self, repairs: Sequence[str] = ()) -> tuple[str, bool]:
        """The space's room id, created (or adopted, after a crash) on first use; True when it
        is a new room replacing a lost one, so every agent room must be re-pointed at it."""
        space_id, new = await self.load(), False
        if space_id is None or BOT in repairs:
            space_id, new = await self._in_place(space_id), space_id is not None
            await self.state.set(SPACE_KEY, space_id)
            await self.state.set(SPACE_NAME_KEY, self.s.space_name)
            self.id, self._name = space_id, self.s.space_name
        if self._name is None:
            self._name = await self.state.get(SPACE_NAME_KEY)
        if self._name != self.s.space_name:  # renamed in the config
            await rooms.put_state(
                self.bot_api, space_id, rooms.ROOM_NAME, {"name": self.s.space_name}
            )
            await self.state.set(SPACE_NAME_KEY, self.s.space_name)
            self._name = self.s.space_name
        for reason in repairs:
            if reason.startswith(INVITE_PREFIX):
                await invite_quietly(self.bot_api, space_id, reason.removeprefix(INVITE_PREFIX))
        return space_id, new

    async def _in_place(self, old: str | None) -> str:
        if old is not None:
            try:
                await rooms.join(self.bot_api, old)
                return old
            except MatrixRequestError as e:
                if not gone(e):
                    raise
                log.warning("The space %s is gone (%s); creating it again", old, e.errcode)
                await rooms.remove_alias(self.bot_api, self.alias)
        localpart = agent_localpart(self.s.username_template, SPACE_AGENT_ID)
        body = rooms.space_body(
            alias_localpart=localpart,
            name=self.s.space_name,
            bot=self.s.bot_mxid,
            admins=self.s.admins,
            list_creator=self.s.list_creator,
        )
        try:
            space_id = await rooms.create_room(self.bot_api, body)
            log.info("Created the space %r (%s)", self.s.space_name, space_id)
        except rooms.RoomInUse:
            space_id = await adopt_alias(self.bot_api, self.alias)
            log.info("Adopted the existing space %s", space_id)
        return space_id
