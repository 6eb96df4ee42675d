"""One agent turn: the Letta call (plain or streamed), one per agent, cancel, retry policy."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
from mautrix.errors import MatrixConnectionError, MatrixRequestError

from ..db.agent import AgentRow
from ..db.sent_event import SentEventStore
from ..db.turn import TurnStore
from ..inbox.worker import Retry
from ..letta import LettaError
from ..letta.approvals import send_decisions, stream_decisions
from ..letta.versions import UserContent
from ..matrix.format import NOTICE
from ..matrix.puppets import Puppets
from ..metrics import Metrics
from .cards import stopped_text, who_may_decide
from .content import CONTEXT_GONE_PART, DELAY_NOTICE_PART, otid
from .conversations import GONE, RoomConversations, gone
from .media import MediaIntake, Refused
from .parts import Part, build_parts, duration, error_text, gave_up_text, waiting_text
from .poster import Job, Poster, Typing, homeserver_retry
from .settings import TurnSettings
from .streaming import relay
from .uploads import AgentFiles

__all__ = ["Conversations", "Job", "TurnSettings"]

log = logging.getLogger("letta_appservice.conversation")
CANCELLED = "Cancelled by a bridge admin; the agent's answer to this message was not waited for."
DEADLINE = (
    "The agent did not finish within {limit}; the bridge stopped waiting and asked Letta to "
    "cancel the run. Anything above is all there is of this answer."
)
DECIDED_IN_VAIN = (
    "The conversation this card belongs to was deleted in Letta, so the decision reached "
    "nothing; the next message starts a new conversation here."
)
MAX_BACKOFF = 60.0
THINKING = "thinking…"
THINKING_AFTER = 1.5  # seconds of Letta working before the placeholder shows
STOPS_KEPT = 1_000
# Called once an approval card of a turn is posted: (job, card event id, card part).
CardHook = Callable[[Job, str, Part], Awaitable[None]]


def backoff(attempts: int) -> float:
    return min(2.0**attempts, MAX_BACKOFF)


class Conversations:
    """Answers people's messages as agents. One Letta request per agent at a time (Letta
    requires it; the router's lanes also keep each agent's messages in order)."""

    def __init__(
        self,
        *,
        settings: TurnSettings,
        rooms: RoomConversations,
        intake: MediaIntake,
        puppets: Puppets,
        turns: TurnStore,
        sent: SentEventStore,
        metrics: Metrics,
        on_card: CardHook | None = None,
        files: AgentFiles | None = None,
    ) -> None:
        self.settings = settings
        # Every Letta call of a turn goes through calls, with the room's conversation.
        self.rooms, self.calls, self.intake = rooms, rooms.calls, intake
        self.files = files  # images and files in answers, posted to Matrix (None: off)
        self.puppets = puppets
        self.turns = turns
        self.sent = sent
        self.metrics = metrics
        self.on_card = on_card
        self._locks: dict[str, asyncio.Lock] = {}
        # Held only for the Letta request of a turn: commands, memberships and posting stored
        # answers never wait behind agents that are thinking.
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._running: dict[str, asyncio.Task[list[Part]]] = {}
        self._jobs: dict[str, tuple[Job, Poster]] = {}  # the turn running for each agent
        self._conversation: dict[str, str | None] = {}  # of each agent's running turn
        self._cancelled: dict[str, str] = {}  # agent -> the notice ending its cancelled turn
        # Messages stopped (🛑) before their turn: (by whom, an admin?).
        self._stopped: OrderedDict[str, tuple[str, bool]] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()

    # --- public --------------------------------------------------------------------------------

    async def answer(self, job: Job) -> None:
        """Ask the agent and post its answer; raises Retry while Letta is down or busy."""
        agent_id = job.agent.agent_id
        api = self.puppets.api(job.agent.mxid)
        sent = await self.sent.parts(job.event_id, agent_id)
        poster = Poster(api, self.sent, job, sent)
        stored = await self.turns.get(job.event_id, agent_id)
        if stored is not None:  # answered before a restart: post what is missing
            await self._post(poster, [Part.from_json(p) for p in stored])
            return
        stopped = self._stopped.pop(job.event_id, None)
        if stopped is not None and (stopped[1] or stopped[0] == job.sender):
            # After what an earlier try posted; stored like an answer, so a retry (the
            # homeserver failing) posts it and asks no agent.
            posted = await poster.so_far()
            await self._keep(
                poster, [*posted, Part(NOTICE, stopped_text(stopped[0], bool(posted)))]
            )
            return
        read_up_to = job.event_id if job.attempts == 0 and not job.decisions else None
        typing = Typing(api, job.room_id, job.agent.mxid, read_up_to)
        self._spawn(typing.run(), "typing")
        answered = asyncio.Event()
        if self.settings.thinking:
            self._spawn(self._placeholder(poster, answered), "thinking")
        try:
            parts = await self._turn(job, poster)
            typing.settle()
            answered.set()
            await self._keep(poster, parts)
        finally:
            typing.stop()
            answered.set()

    def running(self, agent_id: str) -> Job | None:
        """The message the agent is answering now, if any."""
        job, _ = self._jobs.get(agent_id, (None, None))
        return job

    async def stop_answer(self, room_id: str, target: str, by: str, *, admin: bool) -> bool | None:
        """🛑 on ``target`` (a person's message or a part of its answer): stop the turn
        answering it if ``by`` asked it or is an admin (False if not). None when no turn of
        the room is about it: a message still queued is then not passed on when its turn
        comes (if ``by`` sent it or is an admin)."""
        for agent_id, (job, poster) in list(self._jobs.items()):
            if job.room_id == room_id and (
                job.event_id == target or target in poster.sent.values()
            ):
                if by != job.sender and not admin:
                    return False
                answered = any(i >= 0 for i in poster.sent)
                await self.cancel(agent_id, stopped_text(by, answered))
                return True
        self._stopped[target] = (by, admin)
        while len(self._stopped) > STOPS_KEPT:
            self._stopped.popitem(last=False)
        return None

    async def notify(
        self,
        agent: AgentRow,
        room_id: str,
        source_event_id: str,
        part: int,
        text: str,
        relation: Mapping[str, Any] | None,
    ) -> None:
        """A one-off notice from the agent's puppet about a person's message (posted once)."""
        job = Job(source_event_id, room_id, "", agent, "", "", relation or {}, 0)
        sent = await self.sent.parts(source_event_id, agent.agent_id)
        await Poster(self.puppets.api(agent.mxid), self.sent, job, sent).post(
            part, Part(NOTICE, text)
        )

    async def cancel(self, agent_id: str, notice: str = CANCELLED) -> bool:
        """Stop waiting for the agent's running request and cancel its run in Letta; True if
        the bridge was waiting for one. ``notice`` ends the cut-short answer."""
        task = self._running.get(agent_id)
        waiting = task is not None and not task.done()
        if task is not None and waiting:
            # First, so the person is told it was cancelled even if Letta answers meanwhile.
            self._cancelled[agent_id] = notice
            task.cancel()
        try:
            await self.calls.cancel(agent_id, self._conversation.get(agent_id))
        except LettaError as e:
            log.warning("Letta could not cancel the run of %s: %s", agent_id, e)
        return waiting

    def hop(self, agent_id: str) -> int:
        """The hop of the agent's running turn (what its tools pass on goes one further)."""
        running = self._jobs.get(agent_id)
        return running[0].hop if running else 0

    async def stop(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- a turn --------------------------------------------------------------------------------

    async def _turn(self, job: Job, poster: Poster) -> list[Part]:
        agent_id = job.agent.agent_id
        lock = self._locks.setdefault(agent_id, asyncio.Lock())
        async with lock, self._slots:
            task = asyncio.create_task(self._ask_posting(job, poster), name=f"letta-{agent_id}")
            self._running[agent_id] = task
            self._jobs[agent_id] = (job, poster)
            started = time.monotonic()
            try:
                # asyncio.wait, not a timeout around the await: the deadline must not be
                # mistaken for a homeserver timeout inside the task.
                done, _ = await asyncio.wait({task}, timeout=self.settings.deadline)
                if not done:
                    return await self._past_deadline(job, poster, task)
                parts = task.result()
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if agent_id in self._cancelled and not (current and current.cancelling()):
                    return [*await poster.so_far(), Part(NOTICE, self._cancelled[agent_id])]
                task.cancel()
                raise
            except LettaError as e:
                # Failed requests are counted by the Letta client's observer.
                return await self._failed(job, poster, e)
            finally:
                self._running.pop(agent_id, None)
                self._jobs.pop(agent_id, None)
                self._cancelled.pop(agent_id, None)
            # A whole turn, streaming included (requests: the client's).
            self.metrics.letta_latency.labels("turn").observe(time.monotonic() - started)
            return parts

    async def _past_deadline(
        self, job: Job, poster: Poster, task: asyncio.Task[list[Part]]
    ) -> list[Part]:
        """A turn over its deadline (a stream kept alive by pings, a hung run): stop waiting,
        cancel the run in Letta, and say so after whatever was posted already."""
        agent_id = job.agent.agent_id
        log.warning("Turn of %s for %s passed its deadline", agent_id, job.event_id)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            await self.calls.cancel(agent_id, self._conversation.get(agent_id))
        except LettaError as e:
            log.warning("Letta could not cancel the run of %s: %s", agent_id, e)
        text = DEADLINE.format(limit=duration(self.settings.deadline))
        return [*await poster.so_far(), Part(NOTICE, text)]

    async def _ask_posting(self, job: Job, poster: Poster) -> list[Part]:
        # A streamed answer posts while Letta is still talking.
        async with homeserver_retry(job.attempts):
            return await self._ask(job, poster)

    async def _ask(self, job: Job, poster: Poster) -> list[Part]:
        agent_id = job.agent.agent_id
        content: UserContent = job.content
        if job.media is not None:
            api = self.puppets.api(job.agent.mxid)
            prepared = await self.intake.content(
                api, agent_id, job.media, job.content, again=job.attempts > 0
            )
            if isinstance(prepared, Refused):
                return [Part(NOTICE, prepared.text)]
            content = prepared
        # A decision goes on in the conversation of the room (or thread) the card is in.
        conversation = await self.rooms.of(agent_id, job.room_id, job.relation)
        try:
            return await self._exchange(job, poster, content, conversation)
        except LettaError as e:
            if not gone(e, conversation):
                raise
            # Deleted in Letta: the room gets a new conversation, the message goes there once.
            log.warning("Conversation %s of %s is gone from Letta: %s", conversation, agent_id, e)
        conversation = await self.rooms.renew(agent_id, job.room_id, job.relation)
        if job.decisions:  # the tool calls waited in the deleted conversation
            return [Part(NOTICE, DECIDED_IN_VAIN)]
        await poster.post(CONTEXT_GONE_PART, Part(NOTICE, GONE))
        return await self._exchange(job, poster, content, conversation)

    async def _exchange(
        self, job: Job, poster: Poster, content: UserContent, conversation: str | None
    ) -> list[Part]:
        """The Letta request of a turn, in ``conversation``, and the answer's parts."""
        s, agent_id = self.settings, job.agent.agent_id
        message_id = otid(job.event_id, agent_id)
        approvers = who_may_decide(s.approvers, job.sender)
        self._conversation[agent_id] = conversation
        client = self.calls.client
        attach = None
        if self.files is not None and self.files.letta_url is not None:
            attach = (self.files.letta_url, functools.partial(self.files.post, poster.api))
        if s.streaming:
            if job.decisions:
                stream = stream_decisions(
                    client, agent_id, job.decisions, conversation_id=conversation
                )
            else:
                stream = self.calls.stream(
                    agent_id,
                    conversation,
                    content,
                    name=job.name,
                    otid=message_id,
                    stream_tokens=True,
                )
            async with stream:
                return await relay(
                    stream,
                    poster,
                    s.show_reasoning,
                    s.show_tools,
                    expects_reply=job.expects_reply,
                    approvers=approvers,
                    attach=attach,
                )
        if job.decisions:
            response = await send_decisions(
                client, agent_id, job.decisions, conversation_id=conversation
            )
        else:
            response = await self.calls.send(
                agent_id, conversation, content, name=job.name, otid=message_id
            )
        parts = build_parts(
            response.messages,
            response.stop_reason,
            show_reasoning=s.show_reasoning,
            show_tools=s.show_tools,
            expects_reply=job.expects_reply,
            approvers=approvers,
            attach=attach[0] if attach else None,
        )
        return [await attach[1](p) if attach and p.source else p for p in parts]

    async def _failed(self, job: Job, poster: Poster, error: LettaError) -> list[Part]:
        """Retry what may work later (Letta down, 5xx, busy) within the retry window, telling
        the person once when it takes long; anything else becomes a notice."""
        s = self.settings
        log.warning("Letta turn of %s for %s failed: %s", job.agent.agent_id, job.event_id, error)
        if not error.retryable or error.kind == "timeout":
            return [Part(NOTICE, error_text(error, s.timeout))]
        elapsed = time.time() - job.received_at / 1000
        if elapsed < s.retry_window:
            if elapsed >= s.delay_notice:
                await poster.post(
                    DELAY_NOTICE_PART, Part(NOTICE, waiting_text(error, s.retry_window))
                )
            delay = min(backoff(job.attempts), max(s.retry_window - elapsed, 0.5))
            raise Retry(delay, str(error))
        return [Part(NOTICE, gave_up_text(error, s.retry_window))]

    async def _keep(self, poster: Poster, parts: Sequence[Part]) -> None:
        """Store the answer, then post it: a retry or a restart posts what is missing from
        the stored parts and never asks the agent again."""
        job = poster.job
        await self.turns.put(
            job.event_id, job.agent.agent_id, job.room_id, [p.to_json() for p in parts]
        )
        await self._post(poster, parts)

    async def _post(self, poster: Poster, parts: Sequence[Part]) -> None:
        async with homeserver_retry(poster.job.attempts):
            await poster.post_all(parts)
            for index, part in enumerate(parts):
                if part.calls and self.on_card is not None:
                    await self.on_card(poster.job, poster.sent[index], part)

    async def _placeholder(self, poster: Poster, answered: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(THINKING_AFTER):
                await answered.wait()
        if not answered.is_set():
            await poster.placeholder(Part(NOTICE, THINKING))

    def _spawn(self, coro: Awaitable[Any], what: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except (MatrixRequestError, MatrixConnectionError, aiohttp.ClientError) as e:
                log.debug("%s failed: %s", what, e)

        task = asyncio.create_task(guarded(), name=what)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
