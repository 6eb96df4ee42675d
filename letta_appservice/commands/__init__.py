"""Bridge commands: the processor the router calls for bot invites and possible commands."""

from __future__ import annotations

import logging
from collections import OrderedDict

import aiohttp
from mautrix.errors import MatrixRequestError
from mautrix.types import MessageEvent, MessageType, RelationType, StateEvent, UserID

from ..db.room import MANAGEMENT, RoomRow
from ..db.user_notice import UserNoticeStore
from ..identity import Identity
from ..letta.errors import LettaError
from ..permissions import ADMIN
from . import admin, fresh, info  # noqa: F401 - importing them declares their commands
from .args import CommandResult
from .context import CommandContext, Services
from .info import help_text
from .management import Management, send_markdown
from .reasons import failure
from .registry import REGISTRY, Invocation, command_text, dispatch

__all__ = ["REGISTRY", "CommandProcessor", "CommandResult", "Management", "Services", "dispatch"]
log = logging.getLogger("letta_appservice.commands")
REFUSED = "command_refused"  # user_notice kind
UNSENT_KEPT = 1_000  # command replies waiting for the homeserver


class CommandProcessor:
    """Recognises commands in messages, runs them and replies as the bot."""

    def __init__(
        self,
        *,
        services: Services,
        identity: Identity,
        management: Management,
        notices: UserNoticeStore,
    ) -> None:
        self.services = services
        self.identity = identity
        self.management = management
        # One refusal per room for someone without access, not one per message.
        self.notices = notices
        self.prefix = services.config.bridge.command_prefix
        self._unsent: OrderedDict[str, CommandResult] = OrderedDict()

    async def on_bot_invite(self, evt: StateEvent) -> None:
        """The bot was invited: a permitted user's DM becomes their management room (greeted
        with a short help), a group room is joined, anyone else's invite is rejected."""
        role = await self.management.on_invite(evt)
        if role is None:
            return
        level = self.services.permissions.level(evt.sender) or "user"
        if role == MANAGEMENT:
            text = (
                "Hello! I am the Letta bridge bot and this is your **management room**.\n\n"
                + help_text(level, "", short=True)
            )
        else:
            text = "Hello! I am the Letta bridge bot.\n\n" + help_text(
                level, self.prefix, short=True
            )
        await send_markdown(self.services.bot_api, evt.room_id, text, f"greet-{evt.event_id}")

    async def maybe_handle(self, evt: MessageEvent) -> bool:
        """Run ``evt`` if it is a bridge command and reply; True when it was one (consumed)."""
        sender = evt.sender
        if self.identity.is_bridge(sender):
            return False
        content = evt.content
        if content.msgtype != MessageType.TEXT or not isinstance(content.body, str):
            return False
        if content.relates_to and content.relates_to.rel_type == RelationType.REPLACE:
            return False  # an edit of an earlier message is not a new command
        content.trim_reply_fallback()
        room = await self.services.rooms.get(evt.room_id)
        in_management = room is not None and room.kind == MANAGEMENT and room.owner == sender
        text = command_text(content.body, self.prefix, management_room=in_management)
        if text is None:
            return False
        refused = self.services.permissions.level(sender) is None
        if refused and await self.notices.given(evt.room_id, sender, REFUSED):
            return True  # told once already in this room
        prefix = "" if in_management else self.prefix
        # Kept until the reply is posted: when the homeserver fails to take it, the event is
        # retried later and posts this reply without running the command a second time.
        result = self._unsent.get(evt.event_id)
        if result is None:
            result = await self.run(text, sender, evt.room_id, prefix, evt.event_id)
            self._unsent[evt.event_id] = result
            while len(self._unsent) > UNSENT_KEPT:
                self._unsent.popitem(last=False)
        reply_to = None if in_management else evt.event_id
        txn_id = f"cmd-{evt.event_id}"
        try:
            await send_markdown(
                self.services.bot_api, evt.room_id, result.text, txn_id, reply_to=reply_to
            )
        except MatrixRequestError as e:
            # A DM with a puppet need not hold the bot: the room's agent answers instead.
            puppet = await self._puppet_of(room) if e.http_status == 403 else None
            if puppet is None:
                raise
            api = self.services.bot_api.user(UserID(puppet))
            await send_markdown(api, evt.room_id, result.text, txn_id, reply_to=reply_to)
        self._unsent.pop(evt.event_id, None)
        if refused:
            await self.notices.record(evt.room_id, sender, REFUSED)
        return True

    async def _puppet_of(self, room: RoomRow | None) -> str | None:
        if room is None or room.agent_id is None:
            return None
        agent = await self.services.agents.get(room.agent_id)
        return agent.mxid if agent else None

    async def run(
        self, text: str, sender: str, room_id: str, prefix: str, event_id: str = ""
    ) -> CommandResult:
        """Dispatch and run one command line; failures become an error reply (and a log)."""
        level = self.services.permissions.level(sender)
        found = dispatch(text, level, REGISTRY, prefix)
        if not isinstance(found, Invocation):
            return found
        assert level is not None  # dispatch refuses users without a level
        ctx = CommandContext(self.services, sender, room_id, level, found.args, prefix, event_id)
        name = found.command.name
        log.info("%s runs %r in %s", sender, name, room_id)
        try:
            return await found.command.handler(ctx)
        except (MatrixRequestError, LettaError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("Command %r of %s failed: %s", name, sender, e)
            reason = failure(e, admin=level == ADMIN)
            return CommandResult.error(f"`{name}` failed: {reason}")
