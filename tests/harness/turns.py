"""A Conversations (turn, poster, streaming) without a homeserver, for fast tests of the
answer's guarantees: the fake Letta over real HTTP, the real TurnStore and SentEventStore on
SQLite, and a recording stand-in for the puppets' homeserver API that fails on demand."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import attrs

from letta_appservice.chat.content import txn_id
from letta_appservice.chat.conversations import RoomConversations
from letta_appservice.chat.media import MediaIntake
from letta_appservice.chat.transcribe import Transcriber
from letta_appservice.chat.turn import Conversations, Job, TurnSettings
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

    def api(self, mxid: str) -> PuppetApi:
        assert mxid.startswith("@agent_"), mxid  # always as the agent's puppet
        return self

    async def request(self, _method: Any, path: Any, content: Any = None, **_kw: Any) -> Any:
        where = str(path)
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
        received = int(time.time() * 1000)
        return Job(f"$m{self.seq}", ROOM, SENDER, agent, text, "bob", {}, received, **fields)

    def message_requests(self) -> int:
        return len([r for r in self.fake.requests if r.path.endswith(("/messages", "/stream"))])


def txn(job: Job, part: int) -> str:
    return txn_id(job.event_id, job.agent.agent_id, part)


@contextlib.asynccontextmanager
async def turns_setup(
    tmp_path: Path, fake: FakeLetta, *, letta_timeout: float = 30, **settings: Any
) -> AsyncIterator[Turns]:
    db = await open_database(DatabaseURL.parse(f"sqlite:{tmp_path / 'turns.db'}"), in_child=False)
    letta = LettaClient(fake.url, timeout=letta_timeout, backoff=0.01)
    api = PuppetApi()
    turns, sent = TurnStore(db), SentEventStore(db)
    rooms = RoomConversations(TurnCalls(letta), LettaConversationStore(db), "room")
    intake = MediaIntake(MediaConfig(), Folders(letta), Transcriber(MediaConfig()))
    conversations = Conversations(
        settings=TurnSettings(**settings), rooms=rooms, intake=intake, puppets=api, turns=turns,  # type: ignore[arg-type]
        sent=sent, metrics=Metrics(),
    )  # fmt: skip
    try:
        yield Turns(conversations, api, fake, turns, sent)
    finally:
        await conversations.stop()
        await letta.close()
        await db.stop()
