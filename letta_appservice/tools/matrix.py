"""What the tools do in Matrix as the calling agent's puppet: list and read its rooms, post
into them, open a direct chat with a person. Every check answers with a sentence the model
can act on (``ToolError``)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixRequestError

from ..chat.content import message_content
from ..chat.loops import MARKER
from ..chat.parts import Part
from ..db.agent import AgentRow
from ..db.agent_tool import AgentToolStore
from ..db.invited_agent import InvitedAgentStore
from ..db.room import AGENT, INVITED, RoomRow, RoomStore
from ..identity import Identity
from ..matrix import rooms
from ..matrix.format import TEXT, render_markdown
from ..matrix.puppets import Puppets
from ..permissions import Permissions

MAX_ROOMS_LISTED = 50
MAX_READ = 100
MAX_TEXT = 20_000


class ToolError(Exception):
    """A refusal or failure the model reads (and can act on)."""


def tool_content(text: str, marks: Mapping[str, Any], mentions: tuple[str, ...] = ()) -> dict:
    """A message posted by a tool, marked as such (``MARKER``: who, which tool, which hop)."""
    if not text.strip():
        raise ToolError("The message is empty: give some text to send.")
    if len(text) > MAX_TEXT:
        raise ToolError(f"The message is too long ({len(text)} characters; at most {MAX_TEXT}).")
    content = message_content(Part(TEXT, *render_markdown(text)), None, mentions)
    content[MARKER] = {**content[MARKER], **marks}
    return content


async def send(api: AppServiceAPI, room_id: str, content: dict[str, Any]) -> str:
    path = Path.v3.rooms[room_id].send["m.room.message"][f"tool.{uuid.uuid4().hex}"]
    return str((await api.request(Method.PUT, path, content))["event_id"])


class MatrixActions:
    def __init__(
        self,
        *,
        identity: Identity,
        permissions: Permissions,
        puppets: Puppets,
        rooms: RoomStore,
        invited: InvitedAgentStore,
        store: AgentToolStore,
    ) -> None:
        self.identity = identity
        self.permissions = permissions
        self.puppets = puppets
        self.rooms = rooms
        self.invited = invited
        self.store = store

    # --- rooms of the puppet -------------------------------------------------------------------

    async def _name(self, api: AppServiceAPI, room_id: str) -> str:
        try:
            raw = await api.request(Method.GET, Path.v3.rooms[room_id].state["m.room.name"])
        except MatrixRequestError:
            return ""
        return str(raw.get("name") or "")

    async def _members(self, api: AppServiceAPI, room_id: str) -> dict[str, Any]:
        resp = await api.request(Method.GET, Path.v3.rooms[room_id].joined_members)
        joined = resp.get("joined")
        return joined if isinstance(joined, dict) else {}

    async def room(self, agent: AgentRow, room: str) -> str:
        """The id of a room the puppet is joined to, given by id, alias or name."""
        api = self.puppets.api(agent.mxid)
        joined = await rooms.joined_rooms(api)
        room = room.strip()
        if room.startswith("#"):
            room = await rooms.resolve_alias(api, room) or room
        if room in joined:
            return room
        if not room.startswith(("!", "#")):
            wanted = room.lower()
            named = [r for r in sorted(joined) if (await self._name(api, r)).lower() == wanted]
            if len(named) == 1:
                return named[0]
            if named:
                raise ToolError(f"Several of your rooms are named {room!r}: use the room id.")
        raise ToolError(
            f"You are not a member of the room {room!r}, so you cannot use it. "
            "matrix_list_rooms lists the rooms you are in."
        )

    async def list_rooms(self, agent: AgentRow) -> str:
        api = self.puppets.api(agent.mxid)
        joined = sorted(await rooms.joined_rooms(api))
        lines = []
        for room_id in joined[:MAX_ROOMS_LISTED]:
            members = await self._members(api, room_id)
            row = await self.rooms.get(room_id)
            name = await self._name(api, room_id) or "(no name)"
            lines.append(
                f"- {name} | {room_id} | {_kind(row, agent, len(members))} | "
                f"{len(members)} members"
            )
        if not lines:
            return "You are in no Matrix room."
        more = len(joined) - MAX_ROOMS_LISTED
        return "\n".join(lines + ([f"(and {more} more)"] if more > 0 else []))

    async def read_room(self, agent: AgentRow, room: str, limit: Any) -> str:
        room_id = await self.room(agent, room)
        try:
            count = max(1, min(int(limit), MAX_READ))
        except (TypeError, ValueError):
            raise ToolError(f"limit must be a number from 1 to {MAX_READ}.") from None
        api = self.puppets.api(agent.mxid)
        params = {
            "dir": "b",
            "limit": str(count * 2),  # edits and notices are skipped below
            "filter": json.dumps({"types": ["m.room.message"]}),
        }
        resp = await api.request(Method.GET, Path.v3.rooms[room_id].messages, query_params=params)
        names = {
            mxid: (m or {}).get("display_name") or mxid
            for mxid, m in (await self._members(api, room_id)).items()
        }
        lines: list[str] = []
        for event in resp.get("chunk") or []:
            content = event.get("content") or {}
            body = content.get("body")
            relates = content.get("m.relates_to") or {}
            if not isinstance(body, str) or relates.get("rel_type") == "m.replace":
                continue
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(event["origin_server_ts"] / 1000))
            sender = str(event.get("sender"))
            lines.append(f"[{when} UTC] {names.get(sender, sender)}: {body}")
            if len(lines) >= count:
                break
        if not lines:
            return "No text messages in that room yet."
        return "\n".join(reversed(lines))

    async def send_message(self, agent: AgentRow, room: str, text: str, tool: str) -> str:
        room_id = await self.room(agent, room)
        content = tool_content(text, {"tool": tool, "agent_id": agent.agent_id})
        event_id = await send(self.puppets.api(agent.mxid), room_id, content)
        return f"sent ({event_id} in {room_id})"

    # --- direct chats ------------------------------------------------------------------------

    async def message_person(self, agent: AgentRow, user: str, text: str, tool: str) -> str:
        user = user.strip()
        if self.identity.is_bridge(user) or not self.permissions.is_user(user):
            raise ToolError(
                f"{user!r} is not a person you may message: only Matrix users allowed to use "
                "this bridge (a full ID like @name:server). To reach an agent, use "
                "matrix_talk_to_agent."
            )
        content = tool_content(text, {"tool": tool, "agent_id": agent.agent_id})
        api = self.puppets.api(agent.mxid)
        room_id = await self._dm(agent, user, api)
        event_id = await send(api, room_id, content)
        return f"sent ({event_id} in the direct chat {room_id} with {user})"

    async def _dm(self, agent: AgentRow, user: str, api: AppServiceAPI) -> str:
        """The puppet's direct chat with ``user``: the one opened before while both are still
        in it, else a new one (answers there reach the agent, as in any direct chat)."""
        room_id = await self.store.dm(agent.agent_id, user)
        if room_id is not None and room_id in await rooms.joined_rooms(api):
            if await rooms.membership(api, room_id, user) in ("join", "invite"):
                return room_id
        body = {"preset": "trusted_private_chat", "is_direct": True, "invite": [user]}
        room_id = await rooms.create_room(api, body)
        await self.rooms.upsert(RoomRow(room_id, INVITED, agent.agent_id, owner=user))
        await self.invited.add(room_id, agent.agent_id)
        await self.store.set_dm(agent.agent_id, user, room_id)
        return room_id


def _kind(row: RoomRow | None, agent: AgentRow, members: int) -> str:
    if row is not None and row.kind == AGENT:
        return "your own room" if row.agent_id == agent.agent_id else "another agent's room"
    return "direct chat" if members <= 2 else "group room"
