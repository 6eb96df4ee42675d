"""The bot's invites: a permitted user's DM becomes their management room; others are refused."""

from __future__ import annotations

import logging

from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI
from mautrix.types import Membership, StateEvent

from ..chat import encryption as e2ee
from ..db.room import MANAGEMENT, RoomRow, RoomStore
from ..matrix import rooms as mx
from ..matrix.format import render_markdown
from ..matrix.ids import room_origin
from ..permissions import Permissions

log = logging.getLogger("letta_appservice.management")
OTHER = "other"  # a group room the bot was invited to: commands there need the prefix
REFUSAL = "You are not allowed to use this bridge; ask its admin for access."
REMOTE_REFUSAL = "Only bridge admins may bring the bridge into rooms of other servers."


async def send_markdown(
    api: AppServiceAPI,
    room_id: str,
    text: str,
    txn_id: str,
    *,
    reply_to: str | None = None,
) -> None:
    """An m.notice rendered from Markdown; ``txn_id`` is stable so a retry is not doubled."""
    plain, html = render_markdown(text)
    content: dict = {"msgtype": "m.notice", "body": plain}
    if html:
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = html
    if reply_to:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    await api.request(Method.PUT, Path.v3.rooms[room_id].send["m.room.message"][txn_id], content)


class Management:
    """Answers invites of the bridge bot and remembers each user's management room."""

    def __init__(
        self,
        *,
        bot_api: AppServiceAPI,
        bot_mxid: str,
        permissions: Permissions,
        rooms: RoomStore,
    ) -> None:
        self.bot_api = bot_api
        self.bot_mxid = bot_mxid
        self.permissions = permissions
        self.rooms = rooms

    async def on_invite(self, evt: StateEvent) -> str | None:
        """Join or refuse: returns the room's role (``MANAGEMENT`` for a DM, ``OTHER`` for a
        group room), None when refused or not an invite of the bot."""
        if evt.state_key != self.bot_mxid or evt.content.membership != Membership.INVITE:
            return None
        inviter, room_id = evt.sender, evt.room_id
        refusal = REFUSAL if not self.permissions.is_user(inviter) else None
        if refusal is None and not self.permissions.may_bring_into(inviter, room_origin(evt)):
            refusal = REMOTE_REFUSAL
        refusal = refusal or (e2ee.DECLINED if e2ee.invite_says_encrypted(evt) else None)
        if refusal is not None:
            log.info("Refusing the invite of %s to %s: %s", inviter, room_id, refusal)
            # Leaving an invited room rejects the invite; the reason shows in the timeline.
            await mx.leave(self.bot_api, room_id, refusal)
            return None
        await mx.join(self.bot_api, room_id)
        # The invite's stripped state did not say, but the room is encrypted.
        if await e2ee.is_encrypted(self.bot_api, room_id):
            await e2ee.tell(self.bot_api, room_id, e2ee.DECLINED, evt.event_id)
            await mx.leave(self.bot_api, room_id)
            return None
        if not await self._is_dm(evt):
            return OTHER
        old = await self.rooms.management_room(inviter)
        if old is not None and old.room_id != room_id:
            await self.rooms.delete(old.room_id)  # one management room per user: the newest
        await self.rooms.upsert(RoomRow(room_id, MANAGEMENT, owner=inviter))
        log.info("%s is the management room of %s", room_id, inviter)
        return MANAGEMENT

    async def _is_dm(self, evt: StateEvent) -> bool:
        if evt.content.is_direct:
            return True
        # Pending invites count too: a room made for a group is not a DM while they are out.
        return len(await mx.present_members(self.bot_api, evt.room_id)) <= 2
