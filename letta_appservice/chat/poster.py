"""Posting as a puppet: the parts of an answer exactly once, edits, typing and receipts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
import attrs
from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixConnectionError, MatrixRequestError

from ..db.agent import AgentRow
from ..db.sent_event import SentEventStore
from ..inbox.worker import Retry
from ..letta.approvals import Decision
from ..matrix.format import NOTICE, TEXT
from .content import edit_content, edit_suffix, message_content, txn_id
from .media import Media
from .parts import Part

log = logging.getLogger("letta_appservice.poster")
TYPING_GRACE = 0.25  # a Letta answer quicker than this shows no typing at all
TYPING_REFRESH = 20.0  # seconds between typing renewals (each lasts TYPING_TIMEOUT_MS)
TYPING_TIMEOUT_MS = 30_000
MAX_HOMESERVER_BACKOFF = 60.0
PLACEHOLDER = -1  # part number of a "thinking…" placeholder; the answer's first part replaces it
REJECTED = (
    "A part of this answer could not be posted: the homeserver refused it ({reason}). "
    "The rest of the answer follows."
)


@attrs.frozen
class Job:
    """One person's message for one agent, as the router prepared it."""

    event_id: str
    room_id: str
    sender: str
    agent: AgentRow
    content: str  # attribution line + text: what the agent reads
    name: str  # Letta's `name` (dropped by the client unless the model accepts it)
    relation: Mapping[str, Any]  # reply (and thread) relation of every part
    received_at: int  # ms, when the inbox stored the event: the retry window starts there
    attempts: int = 0
    # False where an agent may well stay silent (a group room an admin opened to every
    # message, the agent not named): no "finished without a reply" notice there.
    expects_reply: bool = True
    media: Media | None = None  # an image, file or voice message: fetched in the turn
    # Agent-to-agent messages passed on so far in this chain (0: a person's message).
    hop: int = 0
    # A person's answer to an approval card: sent instead of ``content``; the turn goes on.
    decisions: tuple[Decision, ...] = ()


def homeserver_trouble(e: BaseException) -> bool:
    """Worth retrying later: only a definitive answer (a 4xx such as 403 or 404) is final."""
    if isinstance(e, MatrixRequestError):
        return e.http_status >= 500 or e.http_status in (0, 408, 429)
    return isinstance(e, MatrixConnectionError | aiohttp.ClientError | TimeoutError)


def homeserver_backoff(attempts: int) -> float:
    """Seconds before the next try of an event the homeserver failed: 2, 4, 8 … 60."""
    return min(2.0 ** (attempts + 1), MAX_HOMESERVER_BACKOFF)


@contextlib.asynccontextmanager
async def homeserver_retry(attempts: int = 0) -> AsyncIterator[None]:
    """The homeserver failing for a while (5xx, 429, unreachable) makes the event retried
    later with backoff (``attempts``: the event's tries so far); a stored answer is then
    posted without asking Letta again."""
    try:
        yield
    except (MatrixRequestError, MatrixConnectionError, aiohttp.ClientError, TimeoutError) as e:
        if homeserver_trouble(e):
            raise Retry(homeserver_backoff(attempts), f"homeserver: {e}") from e
        raise


async def _send(api: AppServiceAPI, room_id: str, content: dict[str, Any], txn: str) -> str:
    path = Path.v3.rooms[room_id].send["m.room.message"][txn]
    resp = await api.request(Method.PUT, path, content)
    return str(resp["event_id"])


class Poster:
    """Posts the parts of one turn as the puppet: each part once (deterministic txn ids and
    the sent_event table), later ones edited in place (streaming)."""

    def __init__(
        self, api: AppServiceAPI, store: SentEventStore, job: Job, sent: dict[int, str]
    ) -> None:
        self.api, self.store, self.job = api, store, job
        self.sent = sent
        self.posted: dict[int, Part] = {}  # by this poster (edits included)
        self._first_text: int | None = None
        self._lock = asyncio.Lock()  # a placeholder and the answer's first part never race
        self._in_flight: set[asyncio.Future[str]] = set()

    def _mentions(self, index: int, part: Part) -> list[str]:
        # The first answer text mentions the person, as a reply by a person would.
        if part.msgtype != TEXT or self._first_text not in (None, index):
            return []
        self._first_text = index
        return [self.job.sender]

    async def post(self, index: int, part: Part) -> str:
        """Post part ``index`` unless it was posted before; its event id. Shielded: a turn
        cancelled meanwhile still learns whether the part went out (``so_far``), so its
        closing notice follows the part instead of taking its place and its txn id."""
        task = asyncio.ensure_future(self._post_once(index, part))
        self._in_flight.add(task)
        task.add_done_callback(self._settle)
        return await asyncio.shield(task)

    def _settle(self, task: asyncio.Future[str]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the caller that was cancelled saw none of it

    async def _post_once(self, index: int, part: Part) -> str:
        mentions = self._mentions(index, part)
        async with self._lock:
            if index in self.sent:
                return self.sent[index]
            if index == 0 and PLACEHOLDER in self.sent:
                return await self._replace_placeholder(part)
            return await self._post(index, part, mentions)

    async def _post(self, index: int, part: Part, mentions: list[str]) -> str:
        job = self.job
        content = message_content(part, job.relation, mentions)
        txn = txn_id(job.event_id, job.agent.agent_id, index)
        try:
            event_id = await _send(self.api, job.room_id, content, txn)
        except MatrixRequestError as e:
            if homeserver_trouble(e):
                raise
            # A part the homeserver will never take (too large, malformed) must not hold back
            # the parts after it: a short notice stands in for it.
            log.warning("Part %d of the answer to %s refused: %s", index, job.event_id, e)
            reason = e.errcode or f"HTTP {e.http_status}"
            stand_in = message_content(Part(NOTICE, REJECTED.format(reason=reason)), job.relation)
            txn = txn_id(job.event_id, job.agent.agent_id, index, ".refused")
            event_id = await _send(self.api, job.room_id, stand_in, txn)
        await self.store.add(job.event_id, job.agent.agent_id, index, job.room_id, event_id)
        self.sent[index] = event_id
        self.posted[index] = part
        return event_id

    async def placeholder(self, part: Part) -> None:
        """Show ``part`` where the answer will appear, unless the answer has begun."""
        async with self._lock:
            if 0 in self.sent or PLACEHOLDER in self.sent:
                return
            job = self.job
            txn = txn_id(job.event_id, job.agent.agent_id, 0, ".placeholder")
            event_id = await _send(self.api, job.room_id, message_content(part, job.relation), txn)
            await self.store.add(
                job.event_id, job.agent.agent_id, PLACEHOLDER, job.room_id, event_id
            )
            self.sent[PLACEHOLDER] = event_id

    async def _replace_placeholder(self, part: Part) -> str:
        job, event_id = self.job, self.sent[PLACEHOLDER]
        txn = txn_id(job.event_id, job.agent.agent_id, 0, ".answer")
        await _send(self.api, job.room_id, edit_content(part, event_id), txn)
        await self.store.add(job.event_id, job.agent.agent_id, 0, job.room_id, event_id)
        self.sent[0] = event_id
        self.posted[0] = part
        return event_id

    async def edit(self, index: int, part: Part) -> None:
        """Replace the text of an already posted part."""
        job = self.job
        suffix = edit_suffix(part.body)
        txn = txn_id(job.event_id, job.agent.agent_id, index, suffix)
        await _send(self.api, job.room_id, edit_content(part, self.sent[index]), txn)
        self.posted[index] = part

    async def so_far(self) -> list[Part]:
        """The answer's parts posted so far, in order (those of an earlier attempt, unknown
        here, as placeholders: they are posted already and never sent again). What a turn cut
        short stores, so that a closing notice comes after them instead of in their place.
        Posts a cancel interrupted are waited for first: only then is it known they went out."""
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        count = 0
        while count in self.sent:
            count += 1
        return [self.posted.get(i, Part(NOTICE, "")) for i in range(count)]

    async def post_all(self, parts: Sequence[Part]) -> None:
        for index, part in enumerate(parts):
            await self.post(index, part)


class Typing:
    """While the agent works the puppet marks the message read and types, renewed until
    stopped, then cleared. One task sends all, so "typing" never lands after its "stopped".

    Both start after a short grace: an answer quicker than that needs neither (clients count
    the puppet's reply as its read receipt), and the homeserver is spared two requests on the
    path of every quick answer."""

    def __init__(
        self, api: AppServiceAPI, room_id: str, mxid: str, read_up_to: str | None = None
    ) -> None:
        self.api, self.room_id, self.mxid = api, room_id, mxid
        self.read_up_to = read_up_to
        self._stop = asyncio.Event()
        self._settled = False

    def stop(self) -> None:
        self._stop.set()

    def settle(self) -> None:
        """Letta has answered: what has not started by now never starts (posting the answer
        is the homeserver's work, not the agent's)."""
        self._settled = True

    async def _wait(self, seconds: float) -> bool:
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives as the
        # event is set, and this task must end when the bridge stops.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        return self._stop.is_set()

    async def run(self) -> None:
        if await self._wait(TYPING_GRACE) or self._settled:
            return
        if self.read_up_to is not None:
            receipt = Path.v3.rooms[self.room_id].receipt["m.read"][self.read_up_to]
            await self._request(Method.POST, receipt, {})
        while True:
            await self._set({"typing": True, "timeout": TYPING_TIMEOUT_MS})
            if await self._wait(TYPING_REFRESH):
                break
        await self._set({"typing": False})

    async def _set(self, body: dict[str, Any]) -> None:
        await self._request(Method.PUT, Path.v3.rooms[self.room_id].typing[self.mxid], body)

    async def _request(self, method: Method, path: Any, body: dict[str, Any]) -> None:
        try:
            await self.api.request(method, path, body)
        except (MatrixRequestError, MatrixConnectionError, aiohttp.ClientError) as e:
            log.debug("%s %s as %s failed: %s", method, path, self.mxid, e)
