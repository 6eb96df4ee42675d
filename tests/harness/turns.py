"""A Conversations (turn, poster, streaming) without a homeserver, for fast tests of the
answer's guarantees: the fake Letta over real HTTP, the real TurnStore and SentEventStore on
SQLite, and a recording stand-in for the puppets' homeserver API that fails on demand and
keeps a media repository (downloads over HTTP, uploads recorded)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import attrs
from aiohttp import web

from letta_appservice.chat.content import txn_id
from letta_appservice.chat.conversations import RoomConversations
from letta_appservice.chat.media import MediaIntake
from letta_appservice.chat.transcribe import Transcriber
from letta_appservice.chat.turn import Conversations, Job, TurnSettings
from letta_appservice.chat.uploads import AgentFiles
from letta_appservice.config.media import MediaConfig
from letta_appservice.db.agent import AgentRow
from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.letta_conversation import LettaConversationStore
from letta_appservice.db.sent_event import SentEventStore
from letta_appservice.db.turn import TurnStore
from letta_appservice.letta import LettaClient
from letta_appservice.letta.conversations import TurnCalls
from letta_appservice.letta.folders import Folders
from letta_appservice.metrics import Metrics
from tests.harness.fake_letta import FakeAgent, FakeLetta

ROOM, SENDER = "!room:bridge.test", "@bob:bridge.test"


@attrs.define
class PuppetApi:
    """The puppets' homeserver API: records every message send (its txn id and content) and
    fails the n-th send attempt (0-based) with what ``failures`` holds for n."""

    failures: dict[int, BaseException] = attrs.field(factory=dict)
    attempts: list[str] = attrs.field(factory=list)  # txn ids of every send tried
    sent: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)  # the ones that worked
    rooms: list[str] = attrs.field(factory=list)  # the room of each of those
    other: list[str] = attrs.field(factory=list)  # typing, receipts
    # The media repository: mxc URI -> bytes (downloads are served from base_url), and the
    # uploads as (file name, content type, bytes).
    media: dict[str, bytes] = attrs.field(factory=dict)
    uploads: list[tuple[str, str, bytes]] = attrs.field(factory=list)
    base_url: str = ""
    token: str = "as-token"
    as_user_id: str = ""
    session: aiohttp.ClientSession | None = None

    def api(self, mxid: str) -> PuppetApi:
        assert mxid.startswith("@agent_"), mxid  # always as the agent's puppet
        return self

    async def request(self, _method: Any, path: Any, content: Any = None, **kw: Any) -> Any:
        where = str(path)
        if where.endswith("/media/v3/upload"):
            name, mimetype = kw["query_params"]["filename"], kw["headers"]["Content-Type"]
            self.uploads.append((name, mimetype, content))
            return {"content_uri": f"mxc://bridge.test/upload{len(self.uploads)}"}
        if "/send/m.room.message/" not in where:
            self.other.append(where)
            return {}
        txn = where.rsplit("/", 1)[1]
        failure = self.failures.pop(len(self.attempts), None)
        self.attempts.append(txn)
        if failure is not None:
            raise failure
        self.sent.append((txn, content))
        self.rooms.append(unquote(where.split("/rooms/", 1)[1].split("/", 1)[0]))
        return {"event_id": f"$sent.{txn}"}

    def bodies(self) -> list[str]:
        return [content["body"] for _, content in self.sent]


@attrs.define
class Turns:
    conversations: Conversations
    api: PuppetApi
    fake: FakeLetta
    turns: TurnStore
    sent: SentEventStore
    seq: int = 0

    def agent(self, fake_agent: FakeAgent) -> AgentRow:
        return AgentRow(fake_agent.id, f"@agent_{fake_agent.seq}:bridge.test", fake_agent.name)

    def job(self, agent: AgentRow, text: str = "hello", **fields: Any) -> Job:
        self.seq += 1
        fields = {"relation": {}, "received_at": int(time.time() * 1000), **fields}
        return Job(f"$m{self.seq}", ROOM, SENDER, agent, text, "bob", **fields)

    def message_requests(self) -> int:
        return len([r for r in self.fake.requests if r.path.endswith(("/messages", "/stream"))])


def txn(job: Job, part: int) -> str:
    return txn_id(job.event_id, job.agent.agent_id, part)


async def _media_repository(api: PuppetApi) -> web.AppRunner:
    """Serves ``api.media`` at the authenticated media download path."""

    async def download(request: web.Request) -> web.Response:
        mxc = f"mxc://{request.match_info['server']}/{request.match_info['media_id']}"
        if mxc not in api.media:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no such"}, status=404)
        return web.Response(body=api.media[mxc], content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/_matrix/client/v1/media/download/{server}/{media_id}", download)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    api.session = aiohttp.ClientSession()
    return runner


@contextlib.asynccontextmanager
async def turns_setup(
    tmp_path: Path,
    fake: FakeLetta,
    *,
    letta_timeout: float = 30,
    conversations: str = "off",
    files: bool = False,
    **settings: Any,
) -> AsyncIterator[Turns]:
    """``conversations``: the bridge's mode (letta.conversations); "off" (each agent's own
    history, its routes) unless a test is about conversations. ``files``: attachments in
    answers are posted (media.from_agents)."""
    db = await open_database(DatabaseURL.parse(f"sqlite:{tmp_path / 'turns.db'}"), in_child=False)
    letta = LettaClient(fake.url, timeout=letta_timeout, backoff=0.01)
    api = PuppetApi()
    runner = await _media_repository(api)
    turns, sent = TurnStore(db), SentEventStore(db)
    rooms = RoomConversations(TurnCalls(letta), LettaConversationStore(db), conversations)
    intake = MediaIntake(MediaConfig(), Folders(letta), Transcriber(MediaConfig()))
    agent_files = AgentFiles(MediaConfig(), letta) if files else None
    conversations_ = Conversations(
        settings=TurnSettings(**settings), rooms=rooms, intake=intake, puppets=api, turns=turns,  # type: ignore[arg-type]
        sent=sent, metrics=Metrics(), files=agent_files,
    )  # fmt: skip
    try:
        yield Turns(conversations_, api, fake, turns, sent)
    finally:
        await conversations_.stop()
        await letta.close()
        assert api.session is not None
        await api.session.close()
        await runner.cleanup()
        await db.stop()
