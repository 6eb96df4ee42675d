"""The answer's guarantees without a homeserver (tests/harness/turns.py): a stored answer is
posted on resume without asking Letta again, a homeserver failing mid-answer loses and repeats
nothing, Letta cut off mid-stream, the max_concurrency cap, and the streaming edit rate."""

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
from letta_appservice.inbox.worker import Retry
from letta_appservice.letta import LettaMessage
from tests.harness import letta_replies as lr
from tests.harness.fake_letta import FakeLetta
from tests.harness.observe import eventually
from tests.harness.turns import turns_setup, txn


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
