"""A stub homeserver for load and fault runs: answers the client-server requests the bridge
makes with plausible bodies, keeps send transactions idempotent as Synapse does (the same
path, so the same room, event type and txn id, gives back the same event id) and records
every event it created, for counting the bridge's answers."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

import attrs
from aiohttp import web

from letta_appservice.db.agent import AgentRow
from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.room import AGENT, RoomRow, RoomStore
from tests.harness.config import free_port


@attrs.frozen
class Sent:
    """An event the stub created from a PUT /send (a repeated txn id creates none)."""

    event_id: str
    room_id: str
    user_id: str  # the puppet the appservice acted as (?user_id=)
    txn_id: str
    content: dict[str, Any]

    @property
    def reply_to(self) -> str | None:
        """The event this one answers (``m.in_reply_to``), if any."""
        relates = self.content.get("m.relates_to")
        in_reply = relates.get("m.in_reply_to") if isinstance(relates, dict) else None
        return in_reply.get("event_id") if isinstance(in_reply, dict) else None


class StubHomeserver:
    """Answers every request at once, with no real work behind it."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.url = ""
        self.sent: list[Sent] = []
        # Rooms the bridge's bot is in (the seeded agent rooms): the start-up check that the
        # database belongs to this homeserver finds them here.
        self.joined: set[str] = set()
        self._by_path: dict[str, str] = {}  # send path (txn id included) -> event id
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    def _send(self, request: web.Request, content: Any) -> web.Response:
        path = request.raw_path.split("?")[0]
        event_id = self._by_path.get(path)
        if event_id is None:
            event_id = self._by_path[path] = f"${uuid.uuid4().hex}"
            # …/rooms/{room}/send/{type}/{txn}, split before decoding (ids may hold a "/")
            parts = [unquote(p) for p in path.split("/")]
            user = request.query.get("user_id", "")
            body = content if isinstance(content, dict) else {}
            self.sent.append(Sent(event_id, parts[-4], user, parts[-1], body))
        return web.json_response({"event_id": event_id})

    async def _any(self, request: web.Request) -> web.Response:
        path = request.path
        user = request.query.get("user_id", f"@letta:{self.domain}")
        if "/send/" in path and request.method == "PUT":
            return self._send(request, await request.json())
        if "/state/" in path and request.method == "PUT":
            return web.json_response({"event_id": f"${uuid.uuid4().hex}"})
        if "/state/m.room.member/" in path:
            name = path.rsplit("/", 1)[-1]
            return web.json_response({"membership": "join", "displayname": name[1:6]})
        if path.endswith("/whoami"):
            return web.json_response({"user_id": user})
        if path.endswith("/capabilities"):
            return web.json_response({"capabilities": {"m.room_versions": {"default": "11"}}})
        if "/appservice/" in path and path.endswith("/ping"):
            return web.json_response({"duration_ms": 1})
        if path.endswith("/createRoom"):
            return web.json_response({"room_id": f"!{uuid.uuid4().hex}:{self.domain}"})
        if path.endswith("/joined_rooms"):
            return web.json_response({"joined_rooms": sorted(self.joined)})
        if "/directory/room/" in path:  # the stub keeps no aliases
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no alias"}, status=404)
        if path.endswith("/register"):
            return web.json_response({"user_id": user})
        return web.json_response({})


async def seed_agent_rooms(
    database: str, agents: Sequence[tuple[str, str, str, str]], bridged_at: int = 0
) -> None:
    """Bridged agents with their rooms, as a reconcile would have left them on a stub
    homeserver (which cannot create rooms): ``(agent_id, name, mxid, room_id)`` each."""
    db = await open_database(DatabaseURL.parse(database), in_child=False)
    try:
        for agent_id, name, mxid, room_id in agents:
            row = AgentRow(agent_id, mxid, name, room_id=room_id, displayname=name)
            row.room_name, row.in_space = name, True
            marks = ", ".join(f"${i + 1}" for i in range(len(row.values())))
            await db.execute(
                f"INSERT INTO agent ({AgentRow._fields}) VALUES ({marks}) ON CONFLICT DO NOTHING",
                *row.values(),
            )
            await RoomStore(db).upsert(RoomRow(room_id, AGENT, agent_id, bridged_at=bridged_at))
    finally:
        await db.stop()
