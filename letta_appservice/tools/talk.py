"""Agents talking to agents, in the open: the asking agent's puppet writes in the other agent's
room, the other agent answers there (people can read along and step in), and its answer is the
tool's result; an answer that takes longer than ``talk_wait`` reaches the asking agent later as
a message. Every message passed on is one hop further; past ``max_hops`` the chain stops with a
notice."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import attrs

from ..chat.content import reply_relation
from ..chat.incoming import letta_content, sender_name
from ..chat.loops import MARKER
from ..chat.parts import Part
from ..chat.turn import Conversations, Job
from ..db.agent import ACTIVE, AgentRow, AgentStore
from ..db.database import now_ms
from ..inbox.worker import Retry
from ..matrix import rooms
from ..matrix.format import NOTICE, TEXT
from ..matrix.puppets import Puppets
from .matrix import ToolError, send, tool_content

log = logging.getLogger("letta_appservice.tools.talk")
TOOL = "matrix_talk_to_agent"
STOPPED = (
    "{caller} wanted to pass a message on to {target}, but agents have already passed this "
    "conversation on {hops} times (the limit is {limit}): it was not passed on."
)
LATER = (
    "{target} has not answered yet (it is busy or still thinking). Its answer will reach you as "
    "a message once it comes; you need not ask again."
)


def name_of(agent: AgentRow) -> str:
    return agent.displayname or agent.name


async def find_agents(agents: AgentStore, query: str) -> list[AgentRow]:
    """Bridged agents by id, else by name (Letta's or the puppet's), ignoring case."""
    query = query.strip()
    active = [a for a in await agents.all() if a.state == ACTIVE and a.room_id]
    return [a for a in active if a.agent_id == query] or [
        a for a in active if query.lower() in (a.name.lower(), name_of(a).lower())
    ]


class Talks:
    def __init__(
        self,
        *,
        agents: AgentStore,
        puppets: Puppets,
        conversations: Conversations,
        template: str,
        talk_wait: float,
        max_hops: int,
    ) -> None:
        self.agents = agents
        self.puppets = puppets
        self.conversations = conversations
        self.template = template
        self.talk_wait = talk_wait
        self.max_hops = max_hops
        self._waiting: dict[str, int] = {}  # agent id -> its talks waiting for an answer
        self._tasks: set[asyncio.Task[Any]] = set()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _target(self, caller: AgentRow, query: str) -> AgentRow:
        found = await find_agents(self.agents, query)
        if len(found) > 1:
            ids = ", ".join(a.agent_id for a in found)
            raise ToolError(f"Several agents are called {query!r} ({ids}): give the id.")
        if not found:
            raise ToolError(f"There is no agent {query!r} on this bridge (give a name or id).")
        if found[0].agent_id == caller.agent_id:
            raise ToolError("That is you: talk to another agent.")
        if found[0].paused:
            raise ToolError(f"{name_of(found[0])} is paused by a bridge admin; try later.")
        return found[0]

    async def talk(self, caller: AgentRow, query: str, message: str) -> str:
        target = await self._target(caller, query)
        room_id = str(target.room_id)
        hop = self.conversations.hop(caller.agent_id) + 1
        if hop > self.max_hops:
            await self._stopped(caller, target, hop, room_id)
            raise ToolError(
                f"Not passed on: agents have passed this conversation on {hop - 1} times, the "
                f"limit is {self.max_hops}. Answer with what you have instead."
            )
        marks = {"tool": TOOL, "agent_id": caller.agent_id, "to": target.agent_id, "hop": hop}
        content = tool_content(message, marks, (target.mxid,))
        await self._join(caller, target)
        event_id = await send(self.puppets.api(caller.mxid), room_id, content)
        job = self._job(event_id, room_id, caller, target, message, hop)
        task = self._spawn(self._answer(job))
        # An agent waiting for an answer itself cannot answer before it has one: no waiting.
        wait = 0 if self._waiting.get(target.agent_id) else self.talk_wait
        self._waiting[caller.agent_id] = self._waiting.get(caller.agent_id, 0) + 1
        try:
            done, _ = await asyncio.wait({task}, timeout=wait)
        finally:
            self._waiting[caller.agent_id] -= 1
            if not self._waiting[caller.agent_id]:
                del self._waiting[caller.agent_id]
        if done and (error := task.exception()) is not None:
            raise ToolError(f"{name_of(target)} could not be asked: {error}")
        if done:
            return f"{name_of(target)} answered: {_text(task.result())}"
        self._spawn(self._deliver_later(task, job, caller, target))
        return LATER.format(target=name_of(target))

    async def _join(self, caller: AgentRow, target: AgentRow) -> None:
        """The asking puppet in the other agent's room (invited by that agent's puppet)."""
        room_id = str(target.room_id)
        api = self.puppets.api(caller.mxid)
        if await rooms.membership(self.puppets.api(target.mxid), room_id, caller.mxid) == "join":
            return
        await rooms.invite(self.puppets.api(target.mxid), room_id, caller.mxid)
        await rooms.join(api, room_id)

    def _job(
        self, event_id: str, room_id: str, sender: AgentRow, agent: AgentRow, text: str, hop: int
    ) -> Job:
        room_name = name_of(agent) if agent.room_id == room_id else "a room of another agent"
        return Job(
            event_id=event_id,
            room_id=room_id,
            sender=sender.mxid,
            agent=agent,
            content=letta_content(
                self.template,
                displayname=name_of(sender),
                sender=sender.mxid,
                room_name=agent.room_name or room_name,
                text=text,
            ),
            name=sender_name(sender.mxid),
            relation=reply_relation({}, event_id),
            received_at=now_ms(),
            hop=hop,
        )

    async def _answer(self, job: Job) -> list[Part]:
        """The agent's answer to ``job``, posted in Matrix (retried as the inbox would)."""
        while True:
            try:
                await self.conversations.answer(job)
                break
            except Retry as r:
                await asyncio.sleep(r.delay)
                job = attrs.evolve(job, attempts=job.attempts + 1)
        stored = await self.conversations.turns.get(job.event_id, job.agent.agent_id) or []
        return [Part.from_json(p) for p in stored]

    async def _deliver_later(
        self, task: asyncio.Task[list[Part]], job: Job, caller: AgentRow, target: AgentRow
    ) -> None:
        """The late answer, as a message to the asking agent in the same room (one more hop)."""
        parts = await task
        hop = job.hop + 1
        if hop > self.max_hops:
            await self._stopped(target, caller, hop, job.room_id)
            return
        sent = await self.conversations.sent.parts(job.event_id, target.agent_id)
        source = sent.get(min(sent)) if sent else job.event_id
        text = f"(The answer to your message to {name_of(target)}:)\n{_text(parts)}"
        await self._answer(self._job(source, job.room_id, target, caller, text, hop))

    async def _stopped(self, caller: AgentRow, target: AgentRow, hop: int, room_id: str) -> None:
        """The notice that a chain stopped, in the room of the exchange (an agent's own room:
        its puppet posts it)."""
        text = STOPPED.format(
            caller=name_of(caller), target=name_of(target), hops=hop - 1, limit=self.max_hops
        )
        log.info("Agent chain stopped at hop %d: %s -> %s", hop, caller.agent_id, target.agent_id)
        owner = target if target.room_id == room_id else caller
        content = {"msgtype": NOTICE, "body": text, MARKER: {"bot": True, "tool": TOOL}}
        await send(self.puppets.api(owner.mxid), room_id, content)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name="agent-talk")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            log.warning("Agent-to-agent message failed: %s", e)


def _text(parts: list[Part]) -> str:
    texts = [p.body for p in parts if p.msgtype == TEXT] or [p.body for p in parts if p.body]
    return "\n\n".join(texts) or "(no answer)"
