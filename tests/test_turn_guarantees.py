"""The answer's guarantees without a homeserver (tests/harness/turns.py): a stored answer is
posted on resume without asking Letta again, a homeserver failing mid-answer loses and repeats
nothing, Letta cut off mid-stream, the max_concurrency cap, the streaming edit rate, 🛑 on a
running or queued message, approval cards handed on, and the "thinking…" placeholder."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import attrs
import pytest
from mautrix.errors import MatrixConnectionError, make_request_error

from letta_appservice.chat import streaming, turn
from letta_appservice.chat.parts import Part
from letta_appservice.chat.streaming import relay
from letta_appservice.chat.turn import Conversations, Job
from letta_appservice.inbox.worker import Retry
from letta_appservice.letta import LettaMessage
from tests.harness import letta_replies as lr
from tests.harness.fake_letta import FakeLetta
from tests.harness.observe import eventually
from tests.harness.turns import ROOM, SENDER, PuppetApi, turns_setup, txn


def two_parts(_agent: object, _text: str) -> list[dict[str, Any]]:
    return [lr.assistant("first part"), lr.assistant("second part")]


# --- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize("posted_before", [[], [0]])
async def test_an_answer_stored_before_a_crash_is_posted_on_resume_without_asking_letta(
    tmp_path: Path, fake_letta: FakeLetta, posted_before: list[int]
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        agent = t.agent(fake_letta.add_agent("Helper"))
        job = t.job(agent)
        parts = [Part("m.text", "stored one"), Part("m.text", "stored two")]
        # The crash came after the answer was stored (and maybe after its first part).
        await t.turns.put(job.event_id, agent.agent_id, job.room_id, [p.to_json() for p in parts])
        for part in posted_before:
            await t.sent.add(job.event_id, agent.agent_id, part, job.room_id, "$before")
        await t.conversations.answer(attrs.evolve(job, attempts=1))
        missing = [i for i in (0, 1) if i not in posted_before]
        assert [txn_ for txn_, _ in t.api.sent] == [txn(job, i) for i in missing]
        assert t.api.bodies() == [parts[i].body for i in missing]
        assert t.message_requests() == 0  # Letta is not asked again
        # Every part is recorded: a further resume posts nothing.
        assert set(await t.sent.parts(job.event_id, agent.agent_id)) == {0, 1}
        await t.conversations.answer(attrs.evolve(job, attempts=2))
        assert len(t.api.sent) == len(missing) and t.message_requests() == 0


@pytest.mark.parametrize(
    "failure",
    [
        make_request_error(502, "", "M_UNKNOWN", "bad gateway"),
        make_request_error(500, "", "M_UNKNOWN", "internal"),
        make_request_error(429, "", "M_LIMIT_EXCEEDED", "too many"),
        MatrixConnectionError("connection refused"),
    ],
)
async def test_the_homeserver_failing_on_the_second_part_loses_and_repeats_nothing(
    tmp_path: Path, fake_letta: FakeLetta, failure: Exception
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        fake_agent = fake_letta.add_agent("Helper")
        fake_agent.responder = two_parts
        job = t.job(t.agent(fake_agent))
        t.api.failures[1] = failure  # the second part's first try
        with pytest.raises(Retry):
            await t.conversations.answer(job)
        assert t.api.bodies() == ["first part"]
        await t.conversations.answer(attrs.evolve(job, attempts=1))  # the worker's retry
        assert t.api.bodies() == ["first part", "second part"]
        assert t.api.attempts == [txn(job, 0), txn(job, 1), txn(job, 1)]  # same txn id again
        assert len(fake_letta.message_log) == 1 and t.message_requests() == 1


async def test_a_part_the_homeserver_refuses_for_good_is_not_retried(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        fake_agent = fake_letta.add_agent("Helper")
        fake_agent.responder = two_parts
        job = t.job(t.agent(fake_agent))
        t.api.failures[0] = make_request_error(413, "", "M_TOO_LARGE", "too large")
        await t.conversations.answer(job)
        assert [b.split(":")[0] for b in t.api.bodies()] == [
            "A part of this answer could not be posted",
            "second part",
        ]


# --- Letta cut off mid-stream --------------------------------------------------------------------


async def test_letta_unreachable_mid_stream_keeps_what_was_posted_and_says_so(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta, streaming=True) as t:
        fake_agent = fake_letta.add_agent("Helper")
        fake_agent.responder = lambda _a, _t: [lr.assistant("one two three four five six")]
        fake_agent.drop_stream_after = 3  # three 4-character deltas, then the line is cut
        job = t.job(t.agent(fake_agent))
        await t.conversations.answer(job)
        bodies = t.api.bodies()
        assert bodies[0] == "one" and bodies[-2].endswith("one two thre")  # edits: "* …"
        assert "may be incomplete" in bodies[-1]
        stored = await t.turns.get(job.event_id, fake_agent.id)
        assert stored is not None and "may be incomplete" in stored[-1]["body"]


async def test_letta_unreachable_before_the_first_words_is_retried(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta, streaming=True) as t:
        fake_agent = fake_letta.add_agent("Helper")
        fake_agent.drop_stream_after = 0
        job = t.job(t.agent(fake_agent))
        with pytest.raises(Retry):
            await t.conversations.answer(job)
        assert t.api.sent == [] and await t.turns.get(job.event_id, fake_agent.id) is None
        fake_agent.drop_stream_after = None  # Letta is back
        await t.conversations.answer(attrs.evolve(job, attempts=1))
        assert t.api.bodies()[-1].endswith("Echo: hello")


# --- the max_concurrency cap ---------------------------------------------------------------------


async def test_no_more_than_max_concurrency_letta_turns_at_once(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    release = asyncio.Event()
    running: list[int] = [0, 0]  # now, most ever

    async def slow(_agent: object, text: str) -> list[dict[str, Any]]:
        running[0] += 1
        running[1] = max(running)
        await release.wait()
        running[0] -= 1
        return [lr.assistant(f"Echo: {text}")]

    async with turns_setup(tmp_path, fake_letta, max_concurrency=2) as t:
        agents = [fake_letta.add_agent(f"A{n}", responder=slow) for n in range(4)]
        jobs = [t.job(t.agent(a), f"to A{n}") for n, a in enumerate(agents)]
        answers = [asyncio.create_task(t.conversations.answer(j)) for j in jobs]

        async def two_running() -> bool:
            return running[0] == 2

        await eventually(two_running)
        await asyncio.sleep(0.3)  # room for a third to slip through, were the cap broken
        assert running == [2, 2] and t.message_requests() == 2
        release.set()
        await asyncio.wait_for(asyncio.gather(*answers), 30)
        assert running[1] == 2 and len(fake_letta.message_log) == 4
        assert sorted(t.api.bodies()) == [f"Echo: to A{n}" for n in range(4)]


# --- the streaming edit rate ---------------------------------------------------------------------


class Clock:
    """streaming's view of time: advanced by hand, so the test measures edits per second of
    the stream, not of a loaded machine."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@attrs.define
class Outbox:
    clock: Clock
    sent: dict[int, str] = attrs.field(factory=dict)
    log: list[tuple[str, int, float]] = attrs.field(factory=list)  # action, part, time

    async def post(self, index: int, part: Part) -> str:
        self.log.append(("post", index, self.clock.now))
        self.sent[index] = f"$p{index}"
        return self.sent[index]

    async def edit(self, index: int, _part: Part) -> None:
        self.log.append(("edit", index, self.clock.now))


@attrs.define
class TickingStream:
    """Token deltas of one answer, ``every`` seconds apart."""

    clock: Clock
    deltas: list[LettaMessage]
    every: float
    stop_reason: str | None = "end_turn"
    timeout: float = 120.0

    async def __aiter__(self) -> Any:
        for delta in self.deltas:
            self.clock.now += self.every
            yield delta


@pytest.mark.parametrize("every", [0.05, 0.3, 0.9, 1.5])
async def test_a_streamed_answer_is_edited_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch, every: float
) -> None:
    clock = Clock()
    monkeypatch.setattr(streaming, "time", clock)
    text = " ".join(f"word{i}" for i in range(60))
    raws = lr.token_deltas([lr.assistant(text, "message-1")], size=5)
    deltas = [LettaMessage("assistant", "message-1", r["content"]) for r in raws]
    outbox = Outbox(clock)
    parts = await relay(TickingStream(clock, deltas, every), outbox, "off", "off")
    assert [p.body for p in parts] == [text]
    assert outbox.log[0][:2] == ("post", 0)  # the first words at once
    edits = [at for action, _, at in outbox.log if action == "edit"]
    *growing, final = edits  # the last edit holds the whole text, whenever it comes
    for before, after in zip([outbox.log[0][2], *growing], growing, strict=False):
        assert after - before >= 1.0  # the README promises at most one edit a second
    # It does edit as the answer grows (not only at the end).
    streamed_for = every * len(deltas)
    assert len(growing) >= min(int(streamed_for / max(every, 1.0)) - 2, 3)
    assert final >= (growing or [outbox.log[0][2]])[-1]


async def test_a_steadily_growing_answer_is_edited_every_second_not_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()  # a quarter of a second is exact in binary: the edits fall on whole seconds
    monkeypatch.setattr(streaming, "time", clock)
    raws = lr.token_deltas([lr.assistant("x" * 80, "message-1")], size=2)
    deltas = [LettaMessage("assistant", "message-1", r["content"]) for r in raws]
    outbox = Outbox(clock)
    await relay(TickingStream(clock, deltas, 0.25), outbox, "off", "off")
    times = [at for _, _, at in outbox.log[:-1]]  # the post, then the growing edits
    assert [b - a for a, b in itertools.pairwise(times)] == [1.0] * 9


# --- Letta down: the retry window on a clock of its own ------------------------------------------


async def test_a_letta_outage_is_told_once_after_delay_notice_and_given_up_after_the_window(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta, retry_window=600, delay_notice=30) as t:
        fake_agent = fake_letta.add_agent("Down")
        fake_letta.fail_next(1000, 503, f"/v1/agents/{fake_agent.id}/messages")
        agent = t.agent(fake_agent)
        job = t.job(agent)
        with pytest.raises(Retry) as first:
            await t.conversations.answer(job)
        assert first.value.delay == 1.0 and t.api.sent == []  # quiet before delay_notice
        # The same message 31 s after it arrived: told once that it waits, however often tried.
        late = attrs.evolve(job, received_at=job.received_at - 31_000, attempts=3)
        for attempts in (3, 4):
            with pytest.raises(Retry) as retry:
                await t.conversations.answer(attrs.evolve(late, attempts=attempts))
            assert retry.value.delay == 2.0**attempts
        [waiting] = t.api.bodies()
        assert "queued and will be retried for up to 10 min" in waiting
        # Past the window: given up, said so, no further retry.
        gone = attrs.evolve(job, received_at=job.received_at - 601_000, attempts=9)
        await t.conversations.answer(gone)
        assert "Gave up after retrying for 10 min" in t.api.bodies()[-1]
        assert len(fake_letta.requests_to(f"/v1/agents/{fake_agent.id}/messages")) == 4


# --- a retry cut short after an earlier attempt posted ------------------------------------------


@pytest.mark.parametrize("cut", ["deadline", "cancel"])
async def test_a_retry_cut_short_says_so_after_the_parts_an_earlier_attempt_posted(
    tmp_path: Path, fake_letta: FakeLetta, cut: str
) -> None:
    async with turns_setup(tmp_path, fake_letta, streaming=True, deadline=5) as t:
        fake_agent = fake_letta.add_agent("Helper")
        fake_agent.responder = lambda _a, _t: [lr.assistant(w) for w in ("one", "two", "six")]
        job = t.job(t.agent(fake_agent))
        t.api.failures[2] = make_request_error(502, "", "M_UNKNOWN", "bad gateway")  # "six"
        with pytest.raises(Retry):
            await t.conversations.answer(job)
        assert t.api.bodies() == ["one", "two"]
        # The worker's retry: this time Letta does not answer in time, or an admin cancels.
        fake_agent.delay = 120
        retry = attrs.evolve(job, attempts=1)
        if cut == "deadline":
            t.conversations.settings = attrs.evolve(t.conversations.settings, deadline=0.3)
            await t.conversations.answer(retry)
        else:
            answer = asyncio.create_task(t.conversations.answer(retry))
            await fake_letta.wait_for_in_flight(fake_agent.id, timeout=30)
            assert await t.conversations.cancel(fake_agent.id)
            await asyncio.wait_for(answer, 30)
        # The closing notice follows the parts posted before instead of taking their place.
        *before, closing = t.api.bodies()
        assert before == ["one", "two"]
        assert closing.startswith(("The agent did not finish", "Cancelled"))
        assert [txn_ for txn_, _ in t.api.sent] == [txn(job, 0), txn(job, 1), txn(job, 2)]
        stored = await t.turns.get(job.event_id, fake_agent.id)
        assert stored is not None and len(stored) == 3 and stored[2]["body"] == closing
        # A later resume posts nothing again.
        await t.conversations.answer(attrs.evolve(job, attempts=2))
        assert len(t.api.sent) == 3


async def test_the_last_retries_of_a_letta_outage_fit_its_window(
    tmp_path: Path, fake_letta: FakeLetta, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(turn, "time", clock)
    async with turns_setup(tmp_path, fake_letta, retry_window=600, delay_notice=30) as t:
        fake_agent = fake_letta.add_agent("Down")
        fake_letta.fail_next(1000, 503, f"/v1/agents/{fake_agent.id}/messages")
        job = t.job(t.agent(fake_agent))

        async def retried_after(seconds_ago: float, attempts: int = 9) -> float:
            late = attrs.evolve(job, received_at=int((clock.now - seconds_ago) * 1000))
            with pytest.raises(Retry) as retry:
                await t.conversations.answer(attrs.evolve(late, attempts=attempts))
            return retry.value.delay

        assert await retried_after(29.9) == 60.0 and t.api.sent == []  # backoff: a minute
        assert await retried_after(30) == 60.0  # told from delay_notice on
        assert len(t.api.sent) == 1 and t.api.sent[0][1]["msgtype"] == "m.notice"
        # Near the end of the window the next try is at its end, not a backoff later ...
        assert await retried_after(599) == 1.0
        # ... yet never sooner than half a second.
        assert await retried_after(599.8) == 0.5
        await t.conversations.answer(attrs.evolve(job, received_at=int((clock.now - 600) * 1000)))
        assert "Gave up after retrying for 10 min" in t.api.bodies()[-1]
        assert t.api.sent[-1][1]["msgtype"] == "m.notice"


# --- 🛑, the running turn, the approval-card hook and the "thinking…" placeholder ------------

ADMIN, OTHER = "@admin:bridge.test", "@carol:bridge.test"


def held(release: asyncio.Event) -> Any:
    """A responder that answers only once ``release`` is set: a turn the test ends."""

    async def respond(_agent: object, text: str) -> list[dict[str, Any]]:
        await release.wait()
        return [lr.assistant(f"Echo: {text}")]

    return respond


async def test_the_running_turn_and_its_hop_are_known_while_it_runs_and_only_then(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    release = asyncio.Event()
    async with turns_setup(tmp_path, fake_letta) as t:
        fake_agent = fake_letta.add_agent("Helper", responder=held(release))
        idle = t.agent(fake_letta.add_agent("Idle"))
        agent = t.agent(fake_agent)
        c = t.conversations
        assert c.running(agent.agent_id) is None and c.hop(agent.agent_id) == 0
        job = t.job(agent, hop=2)  # passed on by other agents twice
        answer = asyncio.create_task(c.answer(job))
        await fake_letta.wait_for_in_flight(fake_agent.id, timeout=30)
        # What an admin's status shows, and what the agent's tools pass on goes one further.
        assert c.running(agent.agent_id) == job and c.hop(agent.agent_id) == 2
        assert c.running(idle.agent_id) is None and c.hop(idle.agent_id) == 0
        release.set()
        await asyncio.wait_for(answer, 30)
        assert t.api.bodies() == ["Echo: hello"]
        assert c.running(agent.agent_id) is None and c.hop(agent.agent_id) == 0
        # 🛑 on the answered message finds no turn: nothing is cancelled, nothing said.
        assert await c.stop_answer(job.room_id, job.event_id, job.sender, admin=False) is None
        assert t.api.bodies() == ["Echo: hello"]


@pytest.mark.parametrize(
    ("by", "admin", "posted_before", "on_part"),
    [
        (SENDER, False, False, False),
        (ADMIN, True, False, False),
        (SENDER, False, True, True),  # 🛑 on the posted part instead of the message
        (ADMIN, True, True, False),
    ],
)
async def test_a_running_turn_is_stopped_by_its_sender_or_an_admin_and_says_by_whom(
    tmp_path: Path,
    fake_letta: FakeLetta,
    by: str,
    admin: bool,
    posted_before: bool,
    on_part: bool,
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        fake_agent = fake_letta.add_agent("Slow", delay=120)
        job = t.job(t.agent(fake_agent))
        if posted_before:  # a streamed first part, posted by an attempt before a crash
            await t.sent.add(job.event_id, fake_agent.id, 0, job.room_id, "$first")
        answer = asyncio.create_task(t.conversations.answer(job))
        await fake_letta.wait_for_in_flight(fake_agent.id, timeout=30)
        target = "$first" if on_part else job.event_id
        assert await t.conversations.stop_answer(ROOM, target, by, admin=admin) is True
        await asyncio.wait_for(answer, 30)  # not the 120 s Letta would take
        if posted_before:
            assert t.api.bodies() == [f"🛑 Stopped by {by}; the answer above is all there is."]
        else:
            assert t.api.bodies() == [f"🛑 Stopped by {by} before the agent answered."]
        assert t.api.sent[0][0] == txn(job, 1 if posted_before else 0)  # after what was posted
        assert t.api.sent[0][1]["msgtype"] == "m.notice"
        assert t.conversations.running(fake_agent.id) is None


async def test_a_stop_by_someone_else_or_about_another_event_leaves_the_turn_running(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    release = asyncio.Event()
    async with turns_setup(tmp_path, fake_letta) as t:
        fake_agent = fake_letta.add_agent("Helper", responder=held(release))
        job = t.job(t.agent(fake_agent))
        answer = asyncio.create_task(t.conversations.answer(job))
        await fake_letta.wait_for_in_flight(fake_agent.id, timeout=30)
        c = t.conversations
        # Someone else in the room may not stop bob's answer: refused, and the router says so.
        assert await c.stop_answer(ROOM, job.event_id, OTHER, admin=False) is False
        # 🛑 on another event of the room, or on this event's id in another room, is about
        # no running turn.
        assert await c.stop_answer(ROOM, "$unrelated", SENDER, admin=True) is None
        assert (
            await c.stop_answer("!elsewhere:bridge.test", job.event_id, SENDER, admin=True) is None
        )
        assert c.running(fake_agent.id) == job
        release.set()
        await asyncio.wait_for(answer, 30)
        assert t.api.bodies() == ["Echo: hello"]  # the whole answer, no stop notice


@pytest.mark.parametrize(
    ("by", "admin", "stops"), [(SENDER, False, True), (ADMIN, True, True), (OTHER, False, False)]
)
async def test_a_message_stopped_while_queued_is_not_passed_on_when_its_turn_comes(
    tmp_path: Path, fake_letta: FakeLetta, by: str, admin: bool, stops: bool
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        job = t.job(t.agent(fake_letta.add_agent("Helper")))
        # No turn is about it yet (it waits in its lane): remembered for when its turn comes.
        assert await t.conversations.stop_answer(ROOM, job.event_id, by, admin=admin) is None
        await t.conversations.answer(job)
        if not stops:  # someone else's 🛑 does nothing
            assert t.api.bodies() == ["Echo: hello"] and t.message_requests() == 1
            return
        assert t.api.bodies() == [f"🛑 Stopped by {by} before the agent answered."]
        assert t.api.sent[0][0] == txn(job, 0) and t.api.sent[0][1]["msgtype"] == "m.notice"
        assert t.message_requests() == 0  # Letta never saw it


async def test_only_the_latest_stops_of_queued_messages_are_remembered(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        agent = t.agent(fake_letta.add_agent("Helper"))
        jobs = [t.job(agent, f"m{n}") for n in range(turn.STOPS_KEPT + 1)]
        for job in jobs:
            assert (
                await t.conversations.stop_answer(ROOM, job.event_id, SENDER, admin=False) is None
            )
        # The oldest stop is forgotten (memory stays bounded); the next oldest and the newest
        # still hold.
        for job in (jobs[0], jobs[1], jobs[-1]):
            await t.conversations.answer(job)
        stopped = f"🛑 Stopped by {SENDER} before the agent answered."
        assert t.api.bodies() == ["Echo: m0", stopped, stopped]
        assert t.message_requests() == 1


async def test_a_turn_the_worker_cancels_during_a_stop_ends_unanswered_to_be_asked_again(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        fake_agent = fake_letta.add_agent("Slow", delay=120)
        job = t.job(t.agent(fake_agent))
        answer = asyncio.create_task(t.conversations.answer(job))
        await fake_letta.wait_for_in_flight(fake_agent.id, timeout=30)
        # The bridge shuts down (the worker cancels the turn) as someone's 🛑 comes in: the
        # shutdown wins, so the message is answered after the restart, not called stopped.
        answer.cancel()
        assert await t.conversations.stop_answer(ROOM, job.event_id, SENDER, admin=False)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(answer, 30)
        assert t.api.sent == [] and await t.turns.get(job.event_id, fake_agent.id) is None
        assert t.conversations.running(fake_agent.id) is None


@attrs.define
class CardsOpened:
    """The approval-card hook: records each card a turn posts (the cards' table in the app)."""

    opened: list[tuple[Job, str, Part]] = attrs.field(factory=list)

    async def __call__(self, job: Job, event_id: str, part: Part) -> None:
        self.opened.append((job, event_id, part))


async def test_each_approval_card_an_answer_posts_is_handed_on_with_its_event(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        fake_agent = fake_letta.add_agent("Careful")
        fake_agent.responder = lambda _a, _t: [
            lr.assistant("Let me look that up."),
            lr.approval_request("web_search", {"query": "matrix"}),
        ]
        job = t.job(t.agent(fake_agent))
        cards = CardsOpened()
        c = t.conversations  # the app wires the hook in when it builds Conversations
        conversations = Conversations(
            settings=c.settings, rooms=c.rooms, intake=c.intake, puppets=c.puppets,
            turns=c.turns, sent=c.sent, metrics=c.metrics, on_card=cards,
        )  # fmt: skip
        try:
            await conversations.answer(job)
        finally:
            await conversations.stop()
        text, card = t.api.sent
        assert text[1]["body"] == "Let me look that up." and "web_search" in card[1]["body"]
        # Only the card, with the message it answers and the event people react to.
        [(for_job, event_id, part)] = cards.opened
        assert for_job == job and event_id == f"$sent.{txn(job, 1)}"
        assert part.body == card[1]["body"] and [call.name for call in part.calls] == [
            "web_search"
        ]


async def test_thinking_shows_while_letta_takes_long_and_the_answer_replaces_it(
    tmp_path: Path, fake_letta: FakeLetta, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn, "THINKING_AFTER", 0.05)  # "long", without a slow test
    release = asyncio.Event()
    async with turns_setup(tmp_path, fake_letta, thinking=True) as t:
        fake_agent = fake_letta.add_agent("Helper", responder=held(release))
        job = t.job(t.agent(fake_agent))
        answer = asyncio.create_task(t.conversations.answer(job))

        async def placeholder_shown() -> bool:
            return bool(t.api.sent)

        await eventually(placeholder_shown, timeout=15)  # Letta has not answered: it must come
        release.set()
        await asyncio.wait_for(answer, 30)
        (placeholder_txn, placeholder), (_, answer_content) = t.api.sent
        assert placeholder["body"] == "thinking…" and placeholder["msgtype"] == "m.notice"
        assert placeholder_txn == txn(job, 0) + ".placeholder"
        # The answer is an edit of the placeholder, not a message below it.
        assert answer_content["m.new_content"]["body"] == "Echo: hello"
        assert answer_content["m.relates_to"] == {
            "rel_type": "m.replace",
            "event_id": f"$sent.{placeholder_txn}",
        }


async def test_no_thinking_placeholder_when_letta_answers_in_time(
    tmp_path: Path, fake_letta: FakeLetta, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn, "THINKING_AFTER", 3600)  # however loaded the machine
    async with turns_setup(tmp_path, fake_letta, thinking=True) as t:
        job = t.job(t.agent(fake_letta.add_agent("Helper")))
        await t.conversations.answer(job)
        assert t.api.bodies() == ["Echo: hello"] and t.api.sent[0][0] == txn(job, 0)


@attrs.define
class HangingReceipts:
    """The puppets' API, but read receipts and typing hang until given up (a homeserver
    that stopped answering)."""

    inner: PuppetApi
    hanging: asyncio.Event = attrs.field(factory=asyncio.Event)
    given_up: int = 0

    def api(self, _mxid: str) -> HangingReceipts:
        return self

    async def request(self, method: Any, path: Any, content: Any = None, **kw: Any) -> Any:
        if "/send/" in str(path):
            return await self.inner.request(method, path, content, **kw)
        self.hanging.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.given_up += 1


async def test_stopping_the_bridge_leaves_no_typing_or_receipt_request_behind(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        fake_agent = fake_letta.add_agent("Slow", delay=120)
        hs = HangingReceipts(t.api)
        t.conversations.puppets = hs  # type: ignore[assignment]
        answer = asyncio.create_task(t.conversations.answer(t.job(t.agent(fake_agent))))
        await asyncio.wait_for(hs.hanging.wait(), 30)  # the receipt, after the typing grace
        await t.conversations.stop()
        # Given up by the time stop returns: the HTTP session can be closed after it.
        assert hs.given_up == 1
        await t.conversations.cancel(fake_agent.id)
        await asyncio.wait_for(answer, 30)


async def test_a_queued_stop_holds_when_its_notice_must_wait_for_the_homeserver(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta) as t:
        job = t.job(t.agent(fake_letta.add_agent("Helper")))
        assert await t.conversations.stop_answer(ROOM, job.event_id, SENDER, admin=False) is None
        t.api.failures[0] = make_request_error(502, "", "M_UNKNOWN", "bad gateway")
        with pytest.raises(Retry):
            await t.conversations.answer(job)
        await t.conversations.answer(attrs.evolve(job, attempts=1))  # the worker's retry
        assert t.api.bodies() == [f"🛑 Stopped by {SENDER} before the agent answered."]
        assert t.message_requests() == 0  # still never passed on


async def test_a_stop_between_tries_of_a_partly_posted_answer_ends_it_below_its_parts(
    tmp_path: Path, fake_letta: FakeLetta
) -> None:
    async with turns_setup(tmp_path, fake_letta, streaming=True) as t:
        fake_agent = fake_letta.add_agent("Helper")
        fake_agent.responder = lambda _a, _t: [lr.assistant("one"), lr.assistant("two")]
        job = t.job(t.agent(fake_agent))
        t.api.failures[1] = make_request_error(502, "", "M_UNKNOWN", "bad gateway")  # "two"
        with pytest.raises(Retry):
            await t.conversations.answer(job)
        assert t.api.bodies() == ["one"]
        # 🛑 while the message waits for its retry: no turn is running.
        assert await t.conversations.stop_answer(ROOM, job.event_id, SENDER, admin=False) is None
        await t.conversations.answer(attrs.evolve(job, attempts=1))
        stopped = f"🛑 Stopped by {SENDER}; the answer above is all there is."
        assert t.api.bodies() == ["one", stopped]
        assert t.api.sent[1][0] == txn(job, 1) and t.message_requests() == 1


# --- a first try cut short after its first part --------------------------------------------------


@pytest.mark.parametrize("thinking", [False, True])
async def test_a_first_try_cut_short_after_its_first_part_keeps_it_and_ends_below_it(
    tmp_path: Path, fake_letta: FakeLetta, monkeypatch: pytest.MonkeyPatch, thinking: bool
) -> None:
    """An admin's cancel once the first words are posted (over the placeholder, with
    ``thinking``), even while the bridge is still recording them: the notice follows them
    (it must not reuse their txn id, which the homeserver would answer with the words), and
    the stored answer holds them, so a resume after a crash posts the same."""
    monkeypatch.setattr(turn, "THINKING_AFTER", 0.05)
    async with turns_setup(tmp_path, fake_letta, streaming=True, thinking=thinking) as t:
        agent = t.agent(fake_letta.add_agent("Helper"))

        async def shown(*bodies: str) -> bool:
            return t.api.bodies()[: len(bodies)] == list(bodies)

        async def edited() -> bool:  # the words replaced the placeholder
            words = "the first words"
            return any(c.get("m.new_content", {}).get("body") == words for _, c in t.api.sent)

        class Held:
            """Letta streaming the first words, then working on (the client level: the fake
            server cannot hold a stream after its first message)."""

            stop_reason: str | None = None
            timeout = 30.0

            async def __aenter__(self) -> Held:
                return self

            async def __aexit__(self, *_exc: object) -> None:
                return None

            async def __aiter__(self) -> Any:
                if thinking:
                    await eventually(lambda: shown("thinking…"))
                yield LettaMessage("assistant", "message-1", "the first words")
                await asyncio.Event().wait()

        monkeypatch.setattr(t.conversations.calls, "stream", lambda *_a, **_k: Held())
        recorded, add = asyncio.Event(), t.sent.add

        async def add_held(event_id: str, agent_id: str, index: int, *rest: Any) -> None:
            if index == 0:  # the cancel comes between the send and its record
                await recorded.wait()
            await add(event_id, agent_id, index, *rest)

        monkeypatch.setattr(t.sent, "add", add_held)
        job = t.job(agent)
        answer = asyncio.create_task(t.conversations.answer(job))
        first = "thinking…" if thinking else "the first words"
        await eventually(lambda: shown(first))
        if thinking:
            await eventually(edited)
        assert await t.conversations.cancel(agent.agent_id)
        recorded.set()
        await asyncio.wait_for(answer, 30)
        assert t.api.sent[-1][0] == txn(job, 1)
        # Nothing posted twice: the words (or the placeholder and its edit), then the notice.
        assert t.api.bodies()[-1] == turn.CANCELLED and len(t.api.sent) == (3 if thinking else 2)
        stored = await t.turns.get(job.event_id, agent.agent_id)
        assert stored is not None
        assert [p["body"] for p in stored] == ["the first words", turn.CANCELLED]
